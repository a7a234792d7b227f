"""Latency at low load: Execution created -> Pod created -> Running -> ended, beside a Job.

One object in flight at a time: a trivial SCRIPT Execution, wait until it ended, then a Job
running the bare runner command (the same interpreter and runner code, see
:data:`benchlib.BARE_RUNNER_COMMAND`), wait until it completed, and again (``--count`` of
each, interleaved so both see the same conditions; ``--warmup`` of each first, not counted:
the first Pod of a namespace waits for its ServiceAccount). Times are taken by this client
from watches: "created" just before the create request, then the first watch event showing the
Pod, the Pod Running (or already finished), the Execution's phase Running, and the end
(Execution in a terminal phase, Job condition Complete). Prints p50/p90/p99 of each step and
the ratio of the p50s (Kumulus / Job; below 1 means Kumulus is quicker).

    .venv/bin/python bench/latency.py [--count 40] [--kubeconfig PATH]

Replaces ``bench/engine_latency.py`` (a burst of Executions only, no baseline).
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
    kumulus, jobs = bl.Milestones(), bl.Milestones()
    watches = [
        bl.follow(client, bl.Execution, namespace, bl.execution_milestones(kumulus)),
        bl.follow(client, bl.Job, namespace, bl.job_milestones(jobs)),
        bl.follow(client, bl.Pod, namespace, _pods(kumulus, jobs)),
    ]
    missed = 0
    async with bl.watching(*watches):
        for i in range(args.warmup + args.count):
            for marks, resource, body in (
                (kumulus, bl.Execution, bl.script_execution(f"x-{i}")),
                (jobs, bl.Job, bl.bare_job(f"j-{i}")),
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
    for label, marks in (("kumulus", kumulus), ("jobs", jobs)):
        result[label] = {step: bl.summary(marks.deltas(a, b)) for step, a, b in STEPS}
        result[label]["create_to_exec_running"] = bl.summary(
            marks.deltas("created", "exec-running")
        )
    result["ratio_p50"] = {
        step: round(result["kumulus"][step]["p50"] / result["jobs"][step]["p50"], 2)
        for step, _, _ in STEPS
        if result["jobs"][step]["p50"]
    }
    return result


def _pods(kumulus: bl.Milestones, jobs: bl.Milestones) -> Any:
    on_kumulus, on_jobs = bl.pod_milestones(kumulus), bl.pod_milestones(jobs)

    def on_event(event: str, pod: dict[str, Any]) -> None:
        owner = bl.pod_owner(pod)
        (on_kumulus if owner.startswith("x-") else on_jobs)(event, pod)

    return on_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--count", type=int, default=40, help="measured objects of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="objects of each kind not counted")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between objects")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per object")
    args = parser.parse_args()
    with bl.BenchEnv("latency", args) as env:
        started = time.monotonic()
        result = asyncio.run(run(env, args))
        result["seconds"] = round(time.monotonic() - started, 1)
    print(f"{'step':<24}{'Kumulus p50':>14}{'p99':>10}{'Job p50':>12}{'p99':>10}{'ratio':>8}")
    for step, _, _ in STEPS:
        k, j = result["kumulus"][step], result["jobs"][step]
        print(
            f"{step:<24}{bl.ms(k['p50']):>14}{bl.ms(k['p99']):>10}"
            f"{bl.ms(j['p50']):>12}{bl.ms(j['p99']):>10}{result['ratio_p50'].get(step, ''):>8}"
        )
    running = result["kumulus"]["create_to_exec_running"]
    print(
        f"Execution phase Running: p50 {bl.ms(running['p50'])}, p99 {bl.ms(running['p99'])}"
        f" after create."
    )
    bl.save_results(args, "latency", result)


if __name__ == "__main__":
    main()
