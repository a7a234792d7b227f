"""Child overhead: a flow calling N sync children in a row, beside the floor of this cluster.

A parent FLOW Execution runs ``this.script(TRIVIAL)`` N times in a row (each call creates a
child Execution and blocks until it ended, as Cloudomation's ``this.flow(...)`` does) and times
every call itself with ``time.monotonic()``, so the figures are the flow's own view of a child
round trip: create the child, its Pod scheduled and started, the child's runner, the operator
seeing the end, the parent's watch seeing the phase.

Beside it, the floor, measured in the same run:

* ``bare_pod``: a plain Pod (no controller) running the bare runner command (the same
  interpreter and runner code as a child's Pod), created -> Succeeded as seen by a watch, one at
  a time: what any Pod-per-step design pays on this cluster.
* ``process``: starting the bare runner command as a local process (no cluster at all).

    .venv/bin/python bench/child_overhead.py [--children 20] [--floor-samples 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from typing import Any

import benchlib as bl

PARENT = """
import time

def handler(system, this):
    n = int((this.get('input_value') or {}).get('children', 10))
    took = []
    for i in range(n):
        start = time.monotonic()
        this.script("def handler(system, this):\\n    return this.success('child')\\n")
        took.append(round(time.monotonic() - start, 4))
    this.save(output_value={'child_seconds': took})
    return this.success(f'{n} children')
"""


def local_process_seconds(samples: int) -> list[float]:
    """Wall time of the bare runner command as a local process (same interpreter)."""
    argv = [bl.PYTHON, *bl.BARE_RUNNER_COMMAND[1:]]
    times = []
    for _ in range(samples):
        start = time.monotonic()
        subprocess.run(argv, check=True, env={"PATH": os.environ.get("PATH", "")})
        times.append(time.monotonic() - start)
    return times


async def bare_pods(env: bl.BenchEnv, namespace: str, samples: int) -> list[float]:
    client = env.client()
    marks = bl.Milestones()
    async with bl.watching(bl.follow(client, bl.Pod, namespace, bl.pod_milestones(marks))):
        for i in range(samples + 1):  # the first one is a warm-up
            name = f"bare-{i}"
            marks.mark(name, "created")
            await client.create(bl.Pod(bl.bare_pod(name)), namespace=namespace)
            await bl.until(lambda name=name: "pod-ended" in marks.times.get(name, {}), 120, 0.02)
            if i == 0:
                marks.times.pop(name, None)
    await client.close()
    return marks.deltas("created", "pod-ended")


async def parent_run(env: bl.BenchEnv, namespace: str, children: int) -> dict[str, Any]:
    client = env.client()
    await client.create(
        bl.Flow({"metadata": {"name": "parent"}, "spec": {"code": PARENT}}), namespace=namespace
    )
    body = {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": "parent"},
        "spec": {"flowRef": {"name": "parent"}, "inputs": {"children": children}},
    }
    start = time.monotonic()
    await client.create(bl.Execution(body), namespace=namespace)
    status: dict[str, Any] = {}
    while time.monotonic() - start < 60 + 30 * children:
        obj = await client.get(bl.Execution, "parent", namespace=namespace)
        status = dict(obj).get("status") or {}
        if status.get("phase") in bl.TERMINAL:
            break
        await asyncio.sleep(0.5)
    await client.close()
    if status.get("phase") != "Succeeded":
        raise SystemExit(f"The parent did not succeed: {status}")
    took: list[float] = status["outputs"]["child_seconds"]
    return {"child_seconds": took, "parent_seconds": round(time.monotonic() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bl.add_common_args(parser)
    parser.add_argument("--children", type=int, default=20, help="sync children in a row")
    parser.add_argument("--floor-samples", type=int, default=10, help="bare Pods and processes")
    args = parser.parse_args()
    with bl.BenchEnv("child-overhead", args) as env:
        namespace = bl.new_namespace(env, "children")
        # Floor first, then the flow, in the same namespace (its ServiceAccount exists by then).
        process = local_process_seconds(args.floor_samples)
        pods = asyncio.run(bare_pods(env, namespace, args.floor_samples))
        run = asyncio.run(parent_run(env, namespace, args.children))
        bl.delete_namespace(env, namespace, wait=False)
    child = run["child_seconds"][1:]  # the first child also pays for the parent's warm-up
    result = {
        "children": args.children,
        "child_round_trip": bl.summary(child),
        "child_round_trip_first": run["child_seconds"][0],
        "bare_pod_round_trip": bl.summary(pods),
        "local_process": bl.summary(process),
        "parent_seconds": run["parent_seconds"],
    }
    k, p = result["child_round_trip"]["p50"], result["bare_pod_round_trip"]["p50"]
    result["ratio_child_to_bare_pod_p50"] = round(k / p, 2) if p else None
    result["overhead_over_bare_pod_p50_seconds"] = round(k - p, 3)
    print(f"{'':<28}{'p50':>10}{'p90':>10}{'p99':>10}")
    for label, key in (
        ("child round trip", "child_round_trip"),
        ("bare Pod round trip (floor)", "bare_pod_round_trip"),
        ("local process start", "local_process"),
    ):
        s = result[key]
        print(f"{label:<28}{bl.ms(s['p50']):>10}{bl.ms(s['p90']):>10}{bl.ms(s['p99']):>10}")
    print(
        f"A sync child costs {result['ratio_child_to_bare_pod_p50']}x a bare Pod "
        f"({1000 * result['overhead_over_bare_pod_p50_seconds']:.0f} ms more at p50)."
    )
    bl.save_results(args, "child_overhead", result)


if __name__ == "__main__":
    main()
