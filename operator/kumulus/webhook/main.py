"""``kumulus-webhook``: run the webhook HTTP service until SIGTERM or SIGINT.

Configuration comes from ``KUMULUS_WEBHOOK_*`` variables (:class:`WebhookSettings`) and the
API credentials from ``KUBECONFIG`` or the Pod's ServiceAccount. On SIGTERM the service stops
accepting calls, lets answers in progress finish for a few seconds, writes the pending
``lastTriggeredTime`` values and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from kumulus.webhook.app import Service
from kumulus.webhook.kube import Clients
from kumulus.webhook.settings import WebhookSettings

log = logging.getLogger("kumulus.webhook")

SHUTDOWN_GRACE_SECONDS = 5.0
LINGERING_SECONDS = 2.0


async def serve(settings: WebhookSettings) -> None:
    """Serve until a termination signal arrives."""
    service = Service(settings, Clients.create(settings.api_timeout_seconds))
    # lingering_time: after refusing a body (413) aiohttp reads and discards what the caller
    # still sends, so the caller sees the answer rather than a reset; 2 s is plenty for that.
    runner = web.AppRunner(
        service.app(),
        access_log=None,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        lingering_time=LINGERING_SECONDS,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    scope = ", ".join(settings.namespaces) or "all namespaces"
    log.info(
        "Started serving webhooks on http://%s:%d (%s; /api/latest/webhook/... in %s).",
        settings.host,
        settings.port,
        scope,
        settings.namespace,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    synced = await service.cache.wait_synced(60)
    if synced:
        log.info("Listed Webhooks and Flows; calls are served.")
    else:
        log.warning("Webhooks and Flows are not listed after 60 s; still trying.")
    await stop.wait()
    log.info("Stopping the webhook service.")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``kumulus-webhook``); takes no arguments, only the environment."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        print(WebhookSettings.__doc__)
        return 0
    try:
        settings = WebhookSettings.from_env()
    except ValueError as err:
        print(f"kumulus-webhook: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
