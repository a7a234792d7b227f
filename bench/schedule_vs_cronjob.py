"""Schedule vs CronJob: how late each creates its object after the intended instant.

A Kumulus Schedule and a Kubernetes CronJob, both ``* * * * *`` (per minute, UTC), run side by
side on the dev cluster for ``--minutes`` (default 10). One watch per kind records when each
Execution / Job appears; the lag is that moment minus the intended instant (the Execution's
``kumulus.dev/scheduled-time`` label, the Job's ``batch.kubernetes.io/cronjob-scheduled-timestamp``
annotation). The lag by ``creationTimestamp`` (whole seconds, as the API server stores it) is
printed too. Instants that got no object, or more than one, are counted.

Needs a dev cluster with the CRDs and a running operator (``make dev-up``)::

    KUBECONFIG=.devcluster/kubeconfig python bench/schedule_vs_cronjob.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import Namespace

Execution = create_namespaced_resource("kumulus.dev", "v1alpha1", "Execution", "executions")
Flow = create_namespaced_resource("kumulus.dev", "v1alpha1", "Flow", "flows")
Schedule = create_namespaced_resource("kumulus.dev", "v1alpha1", "Schedule", "schedules")

CODE = "def handler(system, this):\n    return this.success('ok')\n"
CRON_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Recorder:
    """Instant -> (seen wall time, creationTimestamp) for one kind, filled by a watch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: dict[str, tuple[float, float, float]] = {}  # object -> (instant, seen, created)
        self.lock = threading.Lock()

    def add(self, obj_name: str, instant: float, created: float) -> None:
        now = time.time()
        with self.lock:
            self.seen.setdefault(obj_name, (instant, now, created))

    def rows(self, start: float, end: float) -> list[tuple[float, float, float]]:
        with self.lock:
            return [v for v in self.seen.values() if start < v[0] <= end]


def watch(target: Callable[[], None]) -> None:
    threading.Thread(target=target, daemon=True).start()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(rec: Recorder, start: float, end: float) -> dict[str, Any]:
    rows = rec.rows(start, end)
    instants = [r[0] for r in rows]
    expected = [t for t in range(int(start) // 60 * 60 + 60, int(end) + 1, 60) if start < t <= end]
    seen_lag = [r[1] - r[0] for r in rows]
    created_lag = [r[2] - r[0] for r in rows]
    return {
        "count": len(rows),
        "expected": len(expected),
        "missing": len(set(expected) - set(instants)),
        "duplicates": len(instants) - len(set(instants)),
        "p50": statistics.median(seen_lag) if seen_lag else float("nan"),
        "max": max(seen_lag) if seen_lag else float("nan"),
        "p50_created": statistics.median(created_lag) if created_lag else float("nan"),
        "max_created": max(created_lag) if created_lag else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long to run (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the namespace afterwards")
    args = parser.parse_args()

    client = Client(field_manager="kumulus-bench")
    ns = f"bench-sched-{uuid.uuid4().hex[:6]}"
    client.create(Namespace(metadata=ObjectMeta(name=ns)))
    kumulus, cron = Recorder("Schedule"), Recorder("CronJob")

    def watch_executions() -> None:
        for _, ex in Client().watch(
            Execution, namespace=ns, labels={"kumulus.dev/schedule": "per-minute"}
        ):
            label = ex.metadata.labels.get("kumulus.dev/scheduled-time")
            created = ex.metadata.creationTimestamp
            if label:
                kumulus.add(ex.metadata.name, float(label), created.timestamp())

    def watch_jobs() -> None:
        for _, job in Client().watch(Job, namespace=ns):
            stamp = (job.metadata.annotations or {}).get(CRON_ANNOTATION)
            if stamp:
                cron.add(
                    job.metadata.name,
                    parse_time(stamp).timestamp(),
                    job.metadata.creationTimestamp.timestamp(),
                )

    watch(watch_executions)
    watch(watch_jobs)
    client.create(Flow(metadata=ObjectMeta(name="noop", namespace=ns), spec={"code": CODE}))
    client.create(
        Schedule(
            metadata=ObjectMeta(name="per-minute", namespace=ns),
            spec={
                "flowRef": {"name": "noop"},
                "schedule": "* * * * *",
                "timeZone": "UTC",
                "successfulHistoryLimit": 3,
            },
        )
    )
    client.create(
        CronJob(
            metadata=ObjectMeta(name="per-minute", namespace=ns),
            spec={
                "schedule": "* * * * *",
                "timeZone": "Etc/UTC",
                "successfulJobsHistoryLimit": 3,
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [
                                    {"name": "noop", "image": "busybox", "command": ["true"]}
                                ],
                            }
                        }
                    }
                },
            },
        )
    )
    start = time.time()
    end = start + args.minutes * 60
    print(
        f"Created Schedule and CronJob {ns}/per-minute at "
        f"{datetime.fromtimestamp(start, UTC):%H:%M:%S}Z; running {args.minutes:g} min ..."
    )
    try:
        while time.time() < end + 15:  # give the last instant time to show up
            time.sleep(5)
    finally:
        results = {rec.name: summary(rec, start, end) for rec in (kumulus, cron)}
        print(
            f"\n{'':10} {'objects':>7} {'missing':>7} {'dup':>4} "
            f"{'p50 lag':>9} {'max lag':>9} {'p50 by creationTimestamp':>25}"
        )
        for label, r in results.items():
            print(
                f"{label:10} {r['count']:>7} {r['missing']:>7} {r['duplicates']:>4} "
                f"{r['p50']:>8.3f}s {r['max']:>8.3f}s {r['p50_created']:>24.0f}s"
                f" (of {r['expected']} instants)"
            )
        k, c = results["Schedule"], results["CronJob"]
        if k["count"] and c["count"]:
            print(
                f"\nCronJob / Schedule lag ratio: p50 {c['p50'] / max(k['p50'], 1e-3):.1f}x, "
                f"max {c['max'] / max(k['max'], 1e-3):.1f}x "
                "(lag = watch saw the object minus the intended instant)"
            )
        if not args.keep:
            client.delete(Namespace, ns)


if __name__ == "__main__":
    main()
