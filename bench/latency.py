"""Latency at low load: created -> Pod -> Running -> ended, beside Jobs and bare Pods.

One object in flight at a time: a trivial SCRIPT Execution, wait until it ended, then a Job
running the bare runner command in the runner image (the same interpreter and runner code, see
:data:`benchlib.BARE_RUNNER_COMMAND`), wait until it completed, then a bare Pod of the same image
and command (no controller: the floor), and again (``--count`` of each, interleaved so all
three see the same conditions; ``--warmup`` of each first, not counted: the first Pod of a
namespace waits for its ServiceAccount). Times are taken by this client from watches:
"created" just before the create request, then the first watch event showing the Pod, the Pod
Running (or already finished, see :func:`benchlib.pod_milestones`), the Execution's phase
Running (the operator sets it when it sees the Pod Running), and the end (Execution
in a terminal phase, Job condition Complete, bare Pod Succeeded). Prints p50/p99 of each step
and the ratios of the p50s (Kumulus / Job and Kumulus / bare Pod; below 1 means Kumulus is
quicker).

    .venv/bin/python bench/latency.py [--count 30] [--gap 0.5] [--kubeconfig PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import benchlib as bl

STEPS = (
    ("create_to_pod", "created", "pod"),
    ("create_to_running", "created", "running"),
    ("create_to_ended", "created", "ended"),
    ("pod_to_running", "pod", "running"),
    ("pod_ended_to_ended", "pod-ended", "ended"),
)


async def one(
    client: Any,
    namespace: str,
    marks: bl.Milestones,
    resource: Any,
    body: dict[str, Any],
    within: float,
) -> bool:
    name = body["metadata"]["name"]
    marks.mark(name, "created")
    await client.create(resource(body), namespace=namespace)
    return await bl.until(lambda: "ended" in marks.times.get(name, {}), within, poll=0.02)


async def run(env: bl.BenchEnv, args: argparse.Namespace) -> dict[str, Any]:
    namespace = bl.new_namespace(env, "latency")
    client = env.client()
    await bl.wait_service_account(env, namespace)
    kumulus, jobs, pods = bl.Milestones(), bl.Milestones(), bl.Milestones()
    watches = [
        bl.follow(client, bl.Execution, namespace, bl.execution_milestones(kumulus)),
        bl.follow(client, bl.Job, namespace, bl.job_milestones(jobs)),
        bl.follow(client, bl.Pod, namespace, _pods(kumulus, jobs, pods)),
    ]
    missed = 0
    async with bl.watching(*watches):
        for i in range(args.warmup + args.count):
            for marks, resource, body in (
                (kumulus, bl.Execution, bl.script_execution(f"x-{i}")),
                (jobs, bl.Job, bl.bare_job(f"j-{i}")),
                (pods, bl.Pod, bl.bare_pod(f"p-{i}")),
            ):
                if not await one(client, namespace, marks, resource, body, args.timeout):
                    missed += 1
                    print(f"{body['metadata']['name']} did not end in {args.timeout:.0f} s.")
                if i < args.warmup:
                    marks.times.pop(body["metadata"]["name"], None)
                await asyncio.sleep(args.gap)
            measured = i + 1 - args.warmup
            if measured > 0 and measured % 10 == 0:
                print(f"  {measured} of {args.count} measured", flush=True)
    await client.close()
    bl.delete_namespace(env, namespace, wait=False)
    result: dict[str, Any] = {"count": args.count, "missed": missed}
    for label, marks in (("kumulus", kumulus), ("jobs", jobs), ("pods", pods)):
        result[label] = {step: bl.summary(marks.deltas(a, b)) for step, a, b in STEPS}
        result[label]["create_to_exec_running"] = bl.summary(
            marks.deltas("created", "exec-running")
        )
        # How many Pods a watch event showed Running (the others were first seen ended).
        result[label]["running_seen"] = marks.count("running-seen")
    for other in ("jobs", "pods"):
        result[f"ratio_p50_to_{other}"] = {
            step: round(result["kumulus"][step]["p50"] / result[other][step]["p50"], 2)
            for step, _, _ in STEPS
            if result[other][step]["p50"]
        }
    return result


def _pods(kumulus: bl.Milestones, jobs: bl.Milestones, pods: bl.Milestones) -> Any:
    on_kumulus, on_jobs = bl.pod_milestones(kumulus), bl.pod_milestones(jobs)
    on_bare = bl.pod_milestones(pods, bare=True)

    def on_event(event: str, pod: dict[str, Any]) -> None:
        owner = bl.pod_owner(pod)
        if owner.startswith("x-"):
            on_kumulus(event, pod)
        elif owner.startswith("j-"):
            on_jobs(event, pod)
        else:
            on_bare(event, pod)

    return on_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--count", type=int, default=30, help="measured objects of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="objects of each kind not counted")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between objects")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per object")
    args = parser.parse_args()
    with bl.BenchEnv("latency", args) as env:
        started = time.monotonic()
        result = asyncio.run(run(env, args))
        result["seconds"] = round(time.monotonic() - started, 1)
    head = f"{'step':<22}" + "".join(
        f"{label + ' p50':>16}{'p99':>9}" for label in ("Kumulus", "Job", "bare Pod")
    )
    print(head + f"{'K/Job':>7}{'K/Pod':>7}")
    for step, _, _ in STEPS:
        line = f"{step:<22}"
        for label in ("kumulus", "jobs", "pods"):
            st = result[label][step]
            line += f"{bl.ms(st['p50']):>16}{bl.ms(st['p99']):>9}"
        line += f"{result['ratio_p50_to_jobs'].get(step, ''):>7}"
        line += f"{result['ratio_p50_to_pods'].get(step, ''):>7}"
        print(line)
    running = result["kumulus"]["create_to_exec_running"]
    print(
        f"Execution phase Running: p50 {bl.ms(running['p50'])}, p99 {bl.ms(running['p99'])}"
        f" after create."
    )
    print(
        "Pods seen Running by a watch (the others were first seen ended): "
        + ", ".join(
            f"{label} {result[label]['running_seen']}/{args.count}"
            for label in ("kumulus", "jobs", "pods")
        )
    )
    bl.save_results(args, "latency", result)


if __name__ == "__main__":
    main()
