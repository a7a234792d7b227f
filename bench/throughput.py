"""Throughput: N trivial SCRIPT Executions created at once, beside N Jobs and N bare Pods.

For each N (``--sizes``, default 100,500) the benchmark creates N Executions of a trivial SCRIPT
in a fresh namespace as one burst and waits until every one has ended; then, on the same
cluster and node, N Jobs whose Pod runs the bare runner command in the runner image (the same
interpreter loading the same runner code, see :data:`benchlib.BARE_RUNNER_COMMAND`), with the
controller-manager at its default settings; then N bare Pods of the same image and command
created directly (no controller at all: the floor of any Pod-per-run design on this node). It
prints, per N and per system, the time from the first create until the last object ended, the
rate (ended per second), the p50/p99 of create-to-ended, the CPU seconds of every component
(the operator, kube-controller-manager, the node's processes, the containers, the shims), and
the ratios of the rates (Kumulus / Jobs and Kumulus / bare Pods; above 1 means Kumulus is
faster).

The dev node runs at most :data:`benchlib.NODE_MAX_PODS` Pods at once (the kubelet's
``maxPods``, its /26 Pod range): a burst above that waits in the scheduler, for all three
systems alike.

    .venv/bin/python bench/throughput.py [--sizes 100,500] [--systems kumulus,jobs,pods]

With ``--profile`` the operator runs under ``py-spy record`` during the Kumulus bursts and the
collapsed stacks land in ``bench/results/throughput-profile-<N>.txt`` (see
``bench/profile_summary.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import benchlib as bl


async def burst(
    env: bl.BenchEnv, kind: str, n: int, within: float, concurrency: int, drain: float
) -> dict[str, Any]:
    """Create ``n`` objects of ``kind`` (``kumulus`` or ``jobs``) at once; wait for all to end."""
    namespace = bl.new_namespace(env, f"tp-{kind}-{n}")
    client = env.client()
    marks = bl.Milestones()
    if kind == "kumulus":
        resource, bodies = bl.Execution, [bl.script_execution(f"x-{i}") for i in range(n)]
        watches = [
            bl.follow(client, bl.Execution, namespace, bl.execution_milestones(marks)),
            bl.follow(client, bl.Pod, namespace, bl.pod_milestones(marks)),
        ]
    elif kind == "jobs":
        resource, bodies = bl.Job, [bl.bare_job(f"j-{i}") for i in range(n)]
        watches = [
            bl.follow(client, bl.Job, namespace, bl.job_milestones(marks)),
            bl.follow(client, bl.Pod, namespace, bl.pod_milestones(marks)),
        ]
    else:
        resource, bodies = bl.Pod, [bl.bare_pod(f"p-{i}") for i in range(n)]
        watches = [bl.follow(client, bl.Pod, namespace, bl.pod_milestones(marks, bare=True))]
    # The same start for all three: the namespace's ServiceAccount exists (bare Pods created
    # before it would be refused; Jobs and the operator would retry).
    await bl.wait_service_account(env, namespace)
    cpu = bl.CpuMeter(env)
    api = bl.ApiMeter(env)
    load_before = os.getloadavg()[0]
    async with bl.watching(*watches):
        start = time.monotonic()
        await bl.create_all(
            client,
            resource,
            namespace,
            bodies,
            concurrency=concurrency,
            on_created=lambda name, at: marks.mark(name, "created", at),
        )
        created = time.monotonic() - start
        done = await bl.until(lambda: marks.count("ended") >= n, within, poll=0.2)
    elapsed = marks.last("ended") - start if done else time.monotonic() - start
    # Work that trails the last end (Events posted in the background, Pod garbage) still counts
    # in the CPU and request figures: wait for it the same way for both systems.
    await asyncio.sleep(drain)
    result: dict[str, Any] = {
        "n": n,
        "all_ended": done,
        "ended": marks.count("ended"),
        "seconds_to_create_all": round(created, 2),
        "seconds_until_all_ended": round(elapsed, 2),
        "ended_per_second": round(marks.count("ended") / elapsed, 2) if elapsed else None,
        "create_to_pod": bl.summary(marks.deltas("created", "pod")),
        "pod_to_running": bl.summary(marks.deltas("pod", "running")),
        "running_to_pod_ended": bl.summary(marks.deltas("running", "pod-ended")),
        "pod_ended_to_ended": bl.summary(marks.deltas("pod-ended", "ended")),
        "create_to_ended": bl.summary(marks.deltas("created", "ended")),
        "phases": marks.phases(),
        "load_average_before": round(load_before, 2),
    }
    result["cpu_seconds"] = cpu.used()
    result["api_requests_per_object"] = api.used(per=n)
    await client.close()
    bl.delete_namespace(env, namespace)
    return result


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of the operator into collapsed stacks (None if py-spy is missing)."""
    exe = Path(bl.PYTHON).with_name("py-spy")
    if not exe.exists():
        print("py-spy is not installed (pip install py-spy); running without the profile.")
        return None
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "50",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


LABELS = {"kumulus": "Kumulus Executions", "jobs": "Jobs (baseline)", "pods": "bare Pods (floor)"}


def show(kind: str, r: dict[str, Any]) -> None:
    label = LABELS[kind]
    print(
        f"  {label:<20} {r['ended']:>5}/{r['n']:<5} ended in {r['seconds_until_all_ended']:8.2f} s"
        f"  = {r['ended_per_second']:7.2f}/s   create->ended p50 "
        f"{r['create_to_ended']['p50']:.2f} s p99 {r['create_to_ended']['p99']:.2f} s"
        f"   CPU s {r['cpu_seconds']}"
        f"   phases {r['phases']}",
        flush=True,
    )


async def run(env: bl.BenchEnv, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in bl.sizes(args.sizes):
        print(f"N = {n}", flush=True)
        row: dict[str, Any] = {"n": n}
        for kind in args.systems.split(","):
            profiler = None
            if kind == "kumulus" and args.profile and env.operator_pid:
                profile_out = args.results / f"throughput-profile-{n}.txt"
                args.results.mkdir(parents=True, exist_ok=True)
                profiler = start_profiler(env.operator_pid, profile_out)
            try:
                row[kind] = await burst(env, kind, n, args.timeout, args.concurrency, args.drain)
            finally:
                stop_profiler(profiler)
            show(kind, row[kind])
        for other, key, label in (
            ("jobs", "ratio_kumulus_to_jobs", "Job rate"),
            ("pods", "ratio_kumulus_to_bare_pods", "bare Pod rate"),
        ):
            if "kumulus" in row and other in row:
                k, o = row["kumulus"]["ended_per_second"], row[other]["ended_per_second"]
                row[key] = round(k / o, 2) if k and o else None
                print(f"  ratio (Kumulus rate / {label}): {row[key]}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--sizes", default="100,500", help="comma separated burst sizes")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per burst")
    parser.add_argument("--concurrency", type=int, default=32, help="create requests in flight")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator")
    parser.add_argument(
        "--drain", type=float, default=15, help="seconds after the last end before CPU is read"
    )
    parser.add_argument(
        "--systems",
        default="kumulus,jobs,pods",
        help="which of kumulus,jobs,pods to run, in order (e.g. only 'kumulus' while tuning)",
    )
    args = parser.parse_args()
    unknown = set(args.systems.split(",")) - set(LABELS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {sorted(LABELS)}")
    print(
        f"The node runs at most {bl.NODE_MAX_PODS} Pods at once (kubelet maxPods, its /26 Pod"
        " range): it limits Executions, Jobs and bare Pods alike.",
        flush=True,
    )
    # A large burst keeps Pods Pending for minutes (the node runs 60 Pods at a time): that is
    # queueing, not a failure to start, so the start deadline is raised for the run.
    with bl.BenchEnv(
        "throughput", args, operator_env={"KUMULUS_POD_START_DEADLINE_SECONDS": "1800"}
    ) as env:
        rows = asyncio.run(run(env, args))
        bl.save_results(
            args,
            "throughput",
            {
                "job_command": bl.BARE_RUNNER_COMMAND,
                "image": bl.RUNNER_IMAGE,
                "node_max_pods": bl.NODE_MAX_PODS,
                "operator_env": env.operator_env,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
