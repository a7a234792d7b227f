"""``GET /metrics`` of an operator process, served on kopf's event loop.

On the event loop, not in prometheus_client's thread server, so the scrape-time gauges read the
engine's caches from the thread that changes them. A port that cannot be bound (taken by
another process) is logged and skipped: the operator keeps reconciling without metrics rather
than crash-looping over them.
"""

from __future__ import annotations

import logging

from aiohttp import web

from kumulus.observability import metrics

log = logging.getLogger("kumulus.metrics")


class MetricsServer:
    """An aiohttp site answering ``/metrics`` (and ``/`` with a pointer to it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> bool:
        """Listen on ``host:port`` (0 disables); ``False`` if disabled or the bind failed."""
        if self._runner is not None:
            return True
        if self.port <= 0:
            log.info("Did not serve metrics: KUMULUS_METRICS_PORT is 0.")
            return False
        app = web.Application()
        app.router.add_get("/metrics", _metrics)
        app.router.add_get("/", _index)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as err:
            await runner.cleanup()
            log.warning(
                "Failed to serve metrics on %s:%d: %s; the operator runs without them.",
                self.host,
                self.port,
                err,
            )
            return False
        self._runner = runner
        log.info("Started serving metrics on http://%s:%d/metrics.", self.host, self.port)
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _metrics(request: web.Request) -> web.Response:
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})


async def _index(request: web.Request) -> web.Response:
    return web.Response(text="Kumulus operator: metrics at /metrics\n")
