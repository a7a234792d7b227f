"""Webhooks on the operator's side: the keeper of ``url``, ``Ready`` and ``observedGeneration``.

The webhook service serves calls; the operator tells users whether a Webhook can be served:
``Ready`` is True when the Webhook is enabled, its Flow exists and every referenced Secret has
its key (key names only are looked at; values are never kept, logged or copied). The keeper
re-checks a Webhook on each of its watch events, on each event of a Flow it references, and
every ``webhook_recheck_seconds`` (Secrets are not watched by the operator). It writes a
status patch only when something changed, with an Event on each Ready transition.
``status.lastTriggeredTime`` belongs to the webhook service and is never touched here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from pydantic import ValidationError

from kumulus.domain import lifecycle
from kumulus.domain import webhook as rules
from kumulus.domain.settings import Settings
from kumulus.k8s import events, executions, secrets
from kumulus.k8s.keeper import StatusKeeper, ready_condition, ready_transition
from kumulus.k8s.resources import (
    GROUP,
    VERSION,
    Key,
    object_key,
    patch_status,
)

log = logging.getLogger("kumulus.webhooks")

Webhook: Any = create_namespaced_resource(GROUP, VERSION, "Webhook", "webhooks")

FORBIDDEN: frozenset[str] = frozenset({"\0forbidden"})
"""Marker returned by :func:`secret_keys` when RBAC denies reading the Secret."""


async def secret_keys(namespace: str, name: str) -> frozenset[str] | None:
    """The keys of a Secret that have a non-empty value; ``None`` if there is no such Secret.

    Only key names leave this function.
    """
    try:
        data = await secrets.read_secret_data(namespace, name)
    except secrets.SecretForbiddenError:
        return FORBIDDEN
    return None if data is None else frozenset(k for k, v in data.items() if v)


async def patch_webhook_status(
    namespace: str, name: str, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Merge-patch the Webhook's status; ``None`` if it is gone."""
    return await patch_status(Webhook, namespace, name, status)


async def evaluate(body: Mapping[str, Any]) -> rules.Readiness:
    """The Ready condition of a Webhook (reads its Flow and its Secrets' key names)."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    try:
        spec = rules.parse_webhook(body).spec
    except (ValidationError, ValueError) as err:
        return rules.Readiness(False, "Invalid", f"The webhook is not valid: {err}"[:1000])
    flow = await executions.get_flow(namespace, spec.flow_ref.name)
    found: dict[str, frozenset[str] | None] = {}
    forbidden: list[str] = []
    for _, secret, _ in rules.referenced_secrets(spec):
        if secret in found:
            continue
        keys = await secret_keys(namespace, secret)
        if keys is FORBIDDEN:
            forbidden.append(secret)
        found[secret] = keys
    if forbidden:
        return rules.Readiness(
            False,
            "SecretForbidden",
            f"The operator may not read Secret(s) {', '.join(forbidden)} to check them.",
        )
    return rules.readiness(spec, flow is not None, found)


def status_patch(
    body: Mapping[str, Any], ready: rules.Readiness, base_url: str, now: datetime
) -> dict[str, Any] | None:
    """The status patch that records ``ready``, or ``None`` if the status says it already."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    namespace, name = object_key(body)
    raw_generation = meta.get("generation")
    generation = int(raw_generation) if raw_generation is not None else None
    url = rules.webhook_url(base_url, namespace, name)
    current = ready_condition(body)
    if (
        current is not None
        and status.get("url") == url
        and status.get("observedGeneration") == generation
        and current.get("status") == ("True" if ready.ok else "False")
        and current.get("reason") == ready.reason
        and current.get("message") == ready.message
        and current.get("observedGeneration") == generation
    ):
        return None
    conditions = lifecycle.set_condition(
        status.get("conditions") or [],
        "Ready",
        ready.ok,
        ready.reason,
        ready.message,
        generation,
        now,
    )
    return {"url": url, "conditions": conditions, "observedGeneration": generation}


class WebhookKeeper(StatusKeeper):
    """Keeps ``status.url``, ``Ready`` and ``observedGeneration`` of every watched Webhook."""

    kind = "Webhook"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.namespaces, settings.webhook_recheck_seconds)
        self.settings = settings

    def on_webhook(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a Webhook (``None`` type = initial listing)."""
        key = self.store(event_type, body)
        if key is not None and event_type != "DELETED":
            self.trigger(key)

    def on_flow(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A Flow appeared, changed or went: re-check the Webhooks that start it."""
        if event_type is None:  # the initial listing: Webhooks are checked on their own
            return
        namespace, flow = object_key(body)
        for key, hook in list(self.bodies.items()):
            ref = ((hook.get("spec") or {}).get("flowRef") or {}).get("name")
            if key[0] == namespace and ref == flow:
                self.trigger(key)

    async def check(self, key: Key) -> None:
        """Evaluate one Webhook and patch its status when something changed."""
        body = self.bodies.get(key)
        if body is None:
            return
        ready = await evaluate(body)
        patch = status_patch(body, ready, self.settings.webhook_base_url, datetime.now(UTC))
        if patch is None:
            return
        patched = await patch_webhook_status(*key, patch)
        if patched is None:
            return
        if key in self.bodies:
            self.bodies[key] = patched
        if ready_transition(body, ready.ok, ready.reason):
            state = "Ready" if ready.ok else f"not Ready ({ready.reason})"
            if ready.ok:
                log.info("Marked Webhook %s/%s Ready.", *key)
            else:
                log.warning("Marked Webhook %s/%s not Ready: %s", *key, ready.message)
            await events.post_event(
                patched,
                "Normal" if ready.ok else "Warning",
                ready.reason,
                f"Webhook {key[1]} is {state}: {ready.message}",
            )
