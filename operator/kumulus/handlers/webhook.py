"""kopf handlers of Webhooks: ``status.url``, the ``Ready`` condition and ``observedGeneration``.

The webhook service (``kumulus-webhook``) serves the calls; this module only keeps the
Webhook's status true (see :class:`kumulus.k8s.webhooks.WebhookKeeper`). Event handlers on
purpose: no finalizer and no kopf annotations on Webhooks. Flow events re-check the Webhooks
that start the Flow, so ``Ready`` follows a Flow created after its Webhook at once; Secrets
are re-checked periodically (``KUMULUS_WEBHOOK_RECHECK_SECONDS``).
"""

from __future__ import annotations

from typing import Any

import kopf

from kumulus.domain.settings import Settings
from kumulus.k8s.webhooks import WebhookKeeper

_keeper: WebhookKeeper | None = None


def keeper() -> WebhookKeeper:
    """The Webhook keeper of this process (created lazily)."""
    global _keeper
    if _keeper is None:
        _keeper = WebhookKeeper(Settings.from_env())
    return _keeper


@kopf.on.event("kumulus.dev", "v1alpha1", "webhooks")
async def webhook_event(event: kopf.RawEvent, **_: Any) -> None:
    """Re-check the Webhook's status."""
    keeper().on_webhook(event.get("type"), event["object"])


@kopf.on.event("kumulus.dev", "v1alpha1", "flows")
async def flow_event_for_webhooks(event: kopf.RawEvent, **_: Any) -> None:
    """Re-check the Webhooks that start this Flow."""
    keeper().on_flow(event.get("type"), event["object"])


@kopf.on.startup()
async def start_webhook_keeper(**_: Any) -> None:
    """Start the periodic re-check (Secrets are not watched by the operator)."""
    keeper().start()


@kopf.on.cleanup()
async def stop_webhook_keeper(**_: Any) -> None:
    """Stop the keeper's tasks."""
    await keeper().stop()
