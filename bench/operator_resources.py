"""Operator resources: memory (RSS) with 1,000 and 10,000 finished Executions, CPU per 1,000.

1. Runs ``--executions`` (default 1,000) real trivial SCRIPT Executions through the operator in
   batches of ``--batch`` and reads the operator's CPU seconds (``/proc/<pid>/stat``) before and
   after: CPU seconds per 1,000 Executions. Then the same for kube-controller-manager running as
   many Jobs (the bare runner command), the baseline, and their ratio (``--no-jobs`` skips it).
2. Restarts the operator and reads its RSS once the initial listing has been processed (its CPU
   is idle again): the memory with that many finished Executions (and their finished Pods).
3. Stops the operator, adds finished Executions up to each further size of ``--finished``
   (default 10,000) by copying a real finished Execution and its Pod (same spec and status; the
   Pods carry a ``schedulerName`` no scheduler serves, so nothing runs them), starts the
   operator again and reads its RSS the same way.

    .venv/bin/python bench/operator_resources.py [--executions 1000] [--finished 1000,10000]

The benchmark needs its own operator process (not ``--external-operator``). With
``--operator-env PYTHONPATH=<another checkout>/operator`` it measures another version of the
operator on the same cluster (how docs/performance.md compares before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import benchlib as bl

UNSERVED_SCHEDULER = "kumulus-bench-unscheduled"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def settle(pid: int, quiet_seconds: float = 5.0, within: float = 900.0) -> float:
    """Wait until the process used almost no CPU for ``quiet_seconds``; return its RSS in MiB."""
    deadline = time.monotonic() + within
    quiet_since = time.monotonic()
    last = bl.proc_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = bl.proc_cpu_seconds(pid)
        if now - last > 0.05:
            quiet_since = time.monotonic()
        last = now
        if time.monotonic() - quiet_since >= quiet_seconds:
            break
    return round(status_kib(pid, "VmRSS") / 1024, 1)


async def run_batches(
    env: bl.BenchEnv, namespace: str, kind: str, total: int, batch: int
) -> dict[str, Any]:
    """Run ``total`` trivial Executions (or Jobs) in batches; CPU of their controller."""
    client = env.client()
    marks = bl.Milestones()
    if kind == "kumulus":
        resource, follow_res, on_event = bl.Execution, bl.Execution, bl.execution_milestones
        pid = env.operator_pid
    else:
        resource, follow_res, on_event = bl.Job, bl.Job, bl.job_milestones
        pid = env.component_pid("kube-controller-manager")
    assert pid is not None
    cpu_before = bl.proc_cpu_seconds(pid)
    start = time.monotonic()
    async with bl.watching(bl.follow(client, follow_res, namespace, on_event(marks))):
        for first in range(0, total, batch):
            names = range(first, min(first + batch, total))
            if kind == "kumulus":
                bodies = [bl.script_execution(f"x-{i}") for i in names]
            else:
                bodies = [bl.bare_job(f"j-{i}") for i in names]
            await bl.create_all(client, resource, namespace, bodies)
            done = await bl.until(lambda n=names.stop: marks.count("ended") >= n, 1800, 0.5)
            if not done:
                raise SystemExit(f"Only {marks.count('ended')} of {names.stop} ended.")
            print(f"  {marks.count('ended')} of {total} {kind} ended", flush=True)
    await client.close()
    cpu = bl.proc_cpu_seconds(pid) - cpu_before
    return {
        "n": total,
        "seconds": round(time.monotonic() - start, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_1000": round(1000 * cpu / total, 2),
        "phases": marks.phases(),
    }


def _clean_meta(meta: dict[str, Any], name: str) -> dict[str, Any]:
    keep = {k: v for k, v in meta.items() if k in ("labels", "annotations", "namespace")}
    return {**keep, "name": name}


async def synthesize(env: bl.BenchEnv, namespace: str, first: int, count: int) -> None:
    """Add ``count`` finished Executions (+ finished Pods) copied from ``x-0`` and its Pod."""
    client = env.client()
    ex_template = dict(await client.get(bl.Execution, "x-0", namespace=namespace))
    pod_name = ex_template["status"]["podName"]
    pod_template = dict(await client.get(bl.Pod, pod_name, namespace=namespace))
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        name = f"s-{i}"
        async with sem:
            ex = {
                "apiVersion": ex_template["apiVersion"],
                "kind": "Execution",
                "metadata": _clean_meta(ex_template["metadata"], name),
                "spec": copy.deepcopy(ex_template["spec"]),
            }
            created = dict(await client.create(bl.Execution(ex), namespace=namespace))
            status = copy.deepcopy(ex_template["status"])
            status["podName"] = f"{name}-a1"
            await client.patch(
                bl.Execution.Status,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=bl.PatchType.MERGE,
            )
            pod_meta = _clean_meta(pod_template["metadata"], f"{name}-a1")
            pod_meta["labels"] = {**pod_meta.get("labels", {}), "kumulus.dev/execution": name}
            pod_meta["ownerReferences"] = [
                {
                    "apiVersion": "kumulus.dev/v1alpha1",
                    "kind": "Execution",
                    "name": name,
                    "uid": created["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            spec = copy.deepcopy(pod_template["spec"])
            for drop in ("nodeName",):
                spec.pop(drop, None)
            spec["schedulerName"] = UNSERVED_SCHEDULER
            for c in spec.get("containers") or []:
                for e in c.get("env") or []:
                    if e.get("name") == "KUMULUS_EXECUTION":
                        e["value"] = name
            await client.create(
                bl.Pod({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}),
                namespace=namespace,
            )
            await client.patch(
                bl.Pod.Status,
                f"{name}-a1",
                {"status": copy.deepcopy(pod_template["status"])},
                namespace=namespace,
                patch_type=bl.PatchType.MERGE,
            )

    done = 0
    for start in range(first, first + count, 500):
        stop = min(start + 500, first + count)
        await asyncio.gather(*(one(i) for i in range(start, stop)))
        done += stop - start
        print(f"  added {done} of {count} finished Executions", flush=True)
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--executions", type=int, default=1000, help="real Executions to run")
    parser.add_argument("--batch", type=int, default=250, help="Executions created at once")
    parser.add_argument("--finished", default="1000,10000", help="finished counts to measure")
    parser.add_argument(
        "--no-jobs", dest="jobs", action="store_false", help="skip the Job baseline (slow)"
    )
    parser.add_argument(
        "--keep-objects", action="store_true", help="leave the Executions (to inspect them)"
    )
    args = parser.parse_args()
    if args.external_operator:
        raise SystemExit("operator_resources measures its own operator process.")
    sizes = bl.sizes(args.finished)
    with bl.BenchEnv("resources", args) as env:
        assert env.operator_pid is not None
        namespace = bl.new_namespace(env, "resources")
        result: dict[str, Any] = {"operator_env": env.operator_env}
        result["idle_rss_mb"] = settle(env.operator_pid)
        print(f"Operator RSS idle: {result['idle_rss_mb']} MiB", flush=True)
        result["kumulus"] = asyncio.run(
            run_batches(env, namespace, "kumulus", args.executions, args.batch)
        )
        result["rss_mb_after_run"] = settle(env.operator_pid)
        print(
            f"Operator CPU per 1000 Executions: {result['kumulus']['cpu_seconds_per_1000']} s; "
            f"RSS after running them: {result['rss_mb_after_run']} MiB",
            flush=True,
        )
        if args.jobs:
            jobs_ns = bl.new_namespace(env, "resources-jobs")
            result["jobs"] = asyncio.run(
                run_batches(env, jobs_ns, "jobs", args.executions, args.batch)
            )
            bl.delete_namespace(env, jobs_ns)
            k = result["kumulus"]["cpu_seconds_per_1000"]
            j = result["jobs"]["cpu_seconds_per_1000"]
            result["ratio_cpu_operator_to_controller_manager"] = round(k / j, 2) if j else None
            print(
                f"kube-controller-manager CPU per 1000 Jobs: {j} s; ratio operator / it: "
                f"{result['ratio_cpu_operator_to_controller_manager']}",
                flush=True,
            )
        result["finished"] = []
        present = args.executions
        for size in sizes:
            if size > present:
                env.stop_operator()
                asyncio.run(synthesize(env, namespace, present, size - present))
                present = size
            env.restart_operator()
            assert env.operator_pid is not None
            started = time.monotonic()
            cpu_before = bl.proc_cpu_seconds(env.operator_pid)
            rss = settle(env.operator_pid)
            row = {
                "finished_executions": present,
                "rss_mb": rss,
                "peak_rss_mb": round(status_kib(env.operator_pid, "VmHWM") / 1024, 1),
                "startup_cpu_seconds": round(bl.proc_cpu_seconds(env.operator_pid) - cpu_before, 2),
                "seconds_to_settle": round(time.monotonic() - started, 1),
            }
            result["finished"].append(row)
            print(
                f"Operator RSS with {present} finished Executions: {rss} MiB "
                f"(peak {row['peak_rss_mb']} MiB)",
                flush=True,
            )
        if not args.keep_objects:
            bl.delete_namespace(env, namespace, wait=False)
    bl.save_results(args, "operator_resources", result)


if __name__ == "__main__":
    main()
