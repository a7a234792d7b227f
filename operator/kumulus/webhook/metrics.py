"""Prometheus metrics of the webhook service (``GET /metrics``).

Labels name a Webhook only once it is known to exist, so a caller probing random names
cannot grow the label set: unknown names are counted under ``webhook=""``. The registry is
per application so tests can start several services in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """The service's counters, gauges and histograms in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kumulus_webhook_requests",
            "Webhook calls answered, by namespace, webhook and HTTP status code.",
            ["namespace", "webhook", "code"],
            registry=self.registry,
        )
        self.executions = Counter(
            "kumulus_webhook_executions_created",
            "Executions created by webhook calls.",
            ["namespace", "webhook"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kumulus_webhook_request_duration_seconds",
            "Time from receiving a call to answering it, by response mode (sync/async).",
            ["mode"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "kumulus_webhook_in_flight",
            "Calls admitted and not yet past Execution creation.",
            registry=self.registry,
        )
        self.sync_waiting = Gauge(
            "kumulus_webhook_sync_waiting",
            "Sync calls waiting for their Execution to end.",
            registry=self.registry,
        )
        self.cached = Gauge(
            "kumulus_webhook_cached_objects",
            "Objects in the watch cache, by kind.",
            ["kind"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
