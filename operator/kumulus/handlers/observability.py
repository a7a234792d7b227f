"""kopf wiring of the operator's observability: ``/metrics``, scrape-time gauges, JSON logs.

Importing this module (``kumulus.handlers`` does, before kopf logs anything about objects)
switches the log lines to JSON when ``KUMULUS_LOG_FORMAT=json``. Its startup handlers serve
``/metrics`` on ``KUMULUS_METRICS_HOST:KUMULUS_METRICS_PORT`` and let the gauges read the
engine's cache. A connection executor running alone (``kopf run -m
kumulus.handlers.connection_executor``) registers :func:`serve_metrics` and
:func:`stop_metrics` on its own registry (see that module).
"""

from __future__ import annotations

from typing import Any

import kopf

from kumulus.domain.settings import Settings
from kumulus.handlers.state import engine
from kumulus.observability import logs, metrics
from kumulus.observability.server import MetricsServer

logs.configure(Settings.from_env().log_format)

_server: MetricsServer | None = None


async def serve_metrics(**_: Any) -> None:
    """Start ``GET /metrics`` (once per process, whichever registry asks first)."""
    global _server
    if _server is None:
        settings = Settings.from_env()
        _server = MetricsServer(settings.metrics_host, settings.metrics_port)
    await _server.start()


async def stop_metrics(**_: Any) -> None:
    if _server is not None:
        await _server.stop()


async def bind_engine_metrics(**_: Any) -> None:
    """Active Executions and the reconcile queue come from the engine at each scrape."""
    metrics.bind_engine(lambda: engine().executions.values(), lambda: engine().backlog)


kopf.on.startup()(bind_engine_metrics)
kopf.on.startup()(serve_metrics)
kopf.on.cleanup()(stop_metrics)
