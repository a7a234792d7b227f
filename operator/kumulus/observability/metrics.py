"""Every Prometheus metric of the operator and the connection executor, and how they are recorded.

Why one module: the Grafana dashboard (``charts/kumulus/dashboards/kumulus.json``) and the
metrics table in docs/operations.md name these metrics, and a unit test checks that every
metric the dashboard queries is defined here or by the webhook service
(:mod:`kumulus.webhook.metrics`, same ``kumulus_`` prefix). The API adapters call the few
recording functions below at the points where a transition is written, so the numbers follow
the status writes that won (guarded by ``resourceVersion``): an Execution is counted once
however many operator processes race for it.

Cardinality is bounded by construction: labels are the Execution type, its phase, a reason
(a CamelCase word; anything else is counted as ``Other``), the connector type and a catch-up
flag, never an object's name. Recording a transition costs a few dictionary look-ups; the
gauges (active Executions, queue depths) are computed when ``/metrics`` is scraped, from the
caches the engine and the connection executor keep anyway.

When an Execution was created is known to the second only (``creationTimestamp``). The
latencies and durations measure from the instant this process first saw the Execution when that
is earlier than ``creationTimestamp + 1 s`` (the usual case: the watch delivers new objects
within milliseconds), else from ``creationTimestamp`` + 1 s; so they err by the watch delay or
by less than a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from kumulus.domain.lifecycle import ACTIVE, TERMINAL, UNSTARTED, normalise_type
from kumulus.domain.timeutil import parse_time

__all__ = [
    "CONTENT_TYPE_LATEST",
    "EXECUTIONS",
    "REGISTRY",
    "ExecutionMetrics",
    "bind_connection_executor",
    "bind_engine",
    "connection_call",
    "render",
    "schedule_fired",
]

Key = tuple[str, str]

TYPES = ("FLOW", "SCRIPT", "CONNECTION")
"""Execution types (``TASK`` is counted as ``CONNECTION``); anything else is ``OTHER``."""

LIVE_PHASES = ("Pending", "Running", "Waiting", "Paused")
"""Phases of the active-Executions gauge; an Execution without a phase yet counts as Pending."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
DURATION_BUCKETS = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)

REGISTRY = CollectorRegistry()
"""The operator process's registry: the metrics below plus process, platform and GC metrics."""

ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

EXECUTIONS_CREATED = Counter(
    "kumulus_executions_created",
    "Executions taken on by Kumulus (their first status write), by type.",
    ["type"],
    registry=REGISTRY,
)
EXECUTIONS_FINISHED = Counter(
    "kumulus_executions_finished",
    "Executions that reached a terminal phase, by type, phase and reason.",
    ["type", "phase", "reason"],
    registry=REGISTRY,
)
EXECUTION_RETRIES = Counter(
    "kumulus_execution_retries",
    "Failed attempts followed by a scheduled retry, by type.",
    ["type"],
    registry=REGISTRY,
)
EXECUTION_DURATION = Histogram(
    "kumulus_execution_duration_seconds",
    "Time from an Execution's creation to its end, by type and terminal phase.",
    ["type", "phase"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
CREATE_TO_POD = Histogram(
    "kumulus_execution_create_to_pod_seconds",
    "Time from an Execution's creation to the creation of its first runner Pod, by type.",
    ["type"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CREATE_TO_RUNNING = Histogram(
    "kumulus_execution_create_to_running_seconds",
    "Time from an Execution's creation to its first active phase (Running, Waiting or "
    "Paused; a claimed call for CONNECTION), by type.",
    ["type"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONNECTION_CALL = Histogram(
    "kumulus_connection_call_duration_seconds",
    "Duration of connector calls (claim to result), by connector type.",
    ["connector"],
    buckets=CALL_BUCKETS,
    registry=REGISTRY,
)
SCHEDULE_LAG = Histogram(
    "kumulus_schedule_lag_seconds",
    "Time from a Schedule's intended instant to the creation of its Execution "
    "(catch_up: a run missed while no operator ran).",
    ["catch_up"],
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)

_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,47}")


def type_label(body: Mapping[str, Any]) -> str:
    """The ``type`` label of an Execution: FLOW, SCRIPT, CONNECTION (also TASK) or OTHER."""
    value = normalise_type((body.get("spec") or {}).get("type"))
    return value if value in TYPES else "OTHER"


def reason_label(reason: object) -> str:
    """A reason as a label value: a CamelCase word, else ``Other`` (bounded cardinality)."""
    text = str(reason or "")
    return text if _REASON.fullmatch(text) else "Other"


def _finished_reason(patch: Mapping[str, Any]) -> str | None:
    for cond in patch.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == "Finished":
            return str(cond.get("reason") or "")
    return None


for _type in TYPES:  # series exist (at 0) before the first Execution of each type
    EXECUTIONS_CREATED.labels(_type)
    EXECUTION_RETRIES.labels(_type)


class ExecutionMetrics:
    """Records Execution transitions; remembers when this process first saw each live one.

    ``seen`` is called on every watch event, ``status_written`` after every status write that
    succeeded, ``forget`` when an Execution is deleted. The engine and an in-process connection
    executor share one instance. An entry lives until its Execution ends through this process
    or is deleted: at most one float per Execution the process caches anyway.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._first_seen: dict[Key, float] = {}

    def seen(self, key: Key, body: Mapping[str, Any]) -> None:
        """A watch event of ``body``: note the first sight of an unfinished Execution."""
        if key in self._first_seen:
            return
        if ((body.get("status") or {}).get("phase") or "") in TERMINAL:
            return
        self._first_seen[key] = self.clock()

    def forget(self, key: Key) -> None:
        self._first_seen.pop(key, None)

    def tracked(self) -> int:
        """Executions with a remembered first sight (for tests)."""
        return len(self._first_seen)

    def created_at(self, key: Key, body: Mapping[str, Any]) -> float | None:
        """Best estimate of when ``body`` was created, as a UNIX time (see the module doc)."""
        created = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        upper = created.timestamp() + 1.0 if created is not None else None
        first = self._first_seen.get(key)
        if first is None:
            return upper
        return first if upper is None else min(first, upper)

    def _since(self, key: Key, body: Mapping[str, Any], now: float) -> float | None:
        start = self.created_at(key, body)
        return None if start is None else max(now - start, 0.0)

    def status_written(
        self,
        key: Key,
        before: Mapping[str, Any],
        patch: Mapping[str, Any],
        *,
        reason: str | None = None,
    ) -> None:
        """A status patch of ``before`` (the Execution as it was) was written.

        Counts the first write (created), the first Pod (``attempts: 1`` with a ``podName``),
        the first active phase, a scheduled retry (``nextRetryTime``) and the end (reason from
        ``reason`` or the patch's ``Finished`` condition).
        """
        new = patch.get("phase")
        if not new:
            return
        old = str((before.get("status") or {}).get("phase") or "")
        kind = type_label(before)
        now = self.clock()
        if not old:
            EXECUTIONS_CREATED.labels(kind).inc()
        if patch.get("podName") and patch.get("attempts") == 1:
            elapsed = self._since(key, before, now)
            if elapsed is not None:
                CREATE_TO_POD.labels(kind).observe(elapsed)
        if new in ACTIVE and old in UNSTARTED:
            attempts = patch.get("attempts") or (before.get("status") or {}).get("attempts") or 0
            if int(attempts) <= 1:
                elapsed = self._since(key, before, now)
                if elapsed is not None:
                    CREATE_TO_RUNNING.labels(kind).observe(elapsed)
        if patch.get("nextRetryTime"):
            EXECUTION_RETRIES.labels(kind).inc()
        if new in TERMINAL and old not in TERMINAL:
            why = reason if reason is not None else _finished_reason(patch)
            EXECUTIONS_FINISHED.labels(kind, new, reason_label(why or new)).inc()
            elapsed = self._since(key, before, now)
            if elapsed is not None:
                EXECUTION_DURATION.labels(kind, new).observe(elapsed)
            self.forget(key)


EXECUTIONS = ExecutionMetrics()
"""The process's recorder (the engine and the connection executor call it)."""


def connection_call(connector: str, seconds: float) -> None:
    """A connector call ended (any way) after ``seconds``."""
    CONNECTION_CALL.labels(connector or "unknown").observe(max(seconds, 0.0))


def schedule_fired(lag_seconds: float, catch_up: bool) -> None:
    """A Schedule created an Execution ``lag_seconds`` after its intended instant."""
    SCHEDULE_LAG.labels("true" if catch_up else "false").observe(max(lag_seconds, 0.0))


# --------------------------------------------------------------------------- scrape-time gauges


def count_active(bodies: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Unfinished Executions by (type, phase); every type and live phase present (maybe 0)."""
    counts = {(t, p): 0 for t in TYPES for p in LIVE_PHASES}
    for body in bodies:
        phase = str((body.get("status") or {}).get("phase") or "Pending")
        if phase in TERMINAL:
            continue
        key = (type_label(body), phase)
        counts[key] = counts.get(key, 0) + 1
    return counts


class _LiveCollector(Collector):
    """Gauges read from the engine's and the connection executor's state at scrape time."""

    def __init__(self) -> None:
        self.executions: Callable[[], Iterable[Mapping[str, Any]]] | None = None
        self.backlog: Callable[[], int] | None = None
        self.connection_queued: Callable[[], int] | None = None
        self.connection_running: Callable[[], int] | None = None

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "kumulus_executions_active",
                "Unfinished Executions this operator caches, by type and phase (no phase yet "
                "counts as Pending).",
                labels=["type", "phase"],
            ),
            GaugeMetricFamily(
                "kumulus_engine_queue_depth",
                "Executions waiting for a reconcile worker (Settings.reconcile_workers).",
            ),
            GaugeMetricFamily(
                "kumulus_connection_calls_queued",
                "CONNECTION Executions accepted by this connection executor and not yet "
                "claimed (waiting for a slot or being prepared).",
            ),
            GaugeMetricFamily(
                "kumulus_connection_calls_running",
                "Connector calls holding one of the connection_concurrency slots.",
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        active, backlog, queued, running = self._families()
        if self.executions is not None:
            for (kind, phase), count in sorted(count_active(self.executions()).items()):
                active.add_metric([kind, phase], count)
        if self.backlog is not None:
            backlog.add_metric([], self.backlog())
        if self.connection_queued is not None:
            queued.add_metric([], self.connection_queued())
        if self.connection_running is not None:
            running.add_metric([], self.connection_running())
        yield from (active, backlog, queued, running)


_LIVE = _LiveCollector()
REGISTRY.register(_LIVE)


def bind_engine(
    executions: Callable[[], Iterable[Mapping[str, Any]]], backlog: Callable[[], int]
) -> None:
    """Report the engine's cached Executions and queue at each scrape."""
    _LIVE.executions = executions
    _LIVE.backlog = backlog


def bind_connection_executor(queued: Callable[[], int], running: Callable[[], int]) -> None:
    """Report the connection executor's queue and busy slots at each scrape."""
    _LIVE.connection_queued = queued
    _LIVE.connection_running = running


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)
