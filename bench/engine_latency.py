"""Measure the engine's latency: Execution created -> Pod exists -> Succeeded.

Needs a dev cluster with the CRDs and a running operator (see tests/e2e/conftest.py). Usage:
``KUBECONFIG=... python bench/engine_latency.py --count 50``. Creates a namespace, a trivial
Flow and ``count`` Executions at once, watches Pods and Executions, prints percentiles, and
deletes the namespace.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

Execution = create_namespaced_resource("kumulus.dev", "v1alpha1", "Execution", "executions")
Flow = create_namespaced_resource("kumulus.dev", "v1alpha1", "Flow", "flows")

CODE = "def handler(system, this):\n    return this.success('ok')\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    client = Client()
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    client.create(Namespace(metadata=ObjectMeta(name=ns)))
    client.create(Flow(metadata=ObjectMeta(name="noop", namespace=ns), spec={"code": CODE}))
    created: dict[str, float] = {}
    pod_at: dict[str, float] = {}
    done_at: dict[str, float] = {}

    def watch_pods() -> None:
        for _, pod in Client().watch(Pod, namespace=ns):
            owner = pod.metadata.ownerReferences[0].name if pod.metadata.ownerReferences else ""
            pod_at.setdefault(owner, time.monotonic())

    def watch_executions() -> None:
        for _, ex in Client().watch(Execution, namespace=ns):
            if (ex.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                done_at.setdefault(ex.metadata.name, time.monotonic())

    for target in (watch_pods, watch_executions):
        threading.Thread(target=target, daemon=True).start()
    time.sleep(1)
    start = time.monotonic()
    for i in range(args.count):
        name = f"run-{i}"
        created[name] = time.monotonic()
        client.create(
            Execution(
                metadata=ObjectMeta(name=name, namespace=ns), spec={"flowRef": {"name": "noop"}}
            )
        )
    while len(done_at) < args.count and time.monotonic() - start < args.timeout:
        time.sleep(0.2)
    to_pod = [pod_at[n] - created[n] for n in created if n in pod_at]
    to_done = [done_at[n] - created[n] for n in created if n in done_at]
    print(f"Executions: {args.count}, finished: {len(to_done)}")
    if to_pod:
        print(f"create->Pod  p50 {statistics.median(to_pod):.2f}s  p95 {pct(to_pod, 0.95):.2f}s")
    if to_done:
        print(f"create->done p50 {statistics.median(to_done):.2f}s  p95 {pct(to_done, 0.95):.2f}s")
        print(f"all done after {max(done_at.values()) - start:.2f}s")
    client.delete(Namespace, ns)


if __name__ == "__main__":
    main()
