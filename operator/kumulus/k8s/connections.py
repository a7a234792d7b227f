"""Connections: API access and the keeper of their ``Ready`` condition.

A Connection is Ready when its type is known (built in or a plugin), its ``secretRef``
Secret can be read and its values (merged with the Secret's keys) pass the connector's static
check. The keeper re-checks on every watch event of a Connection and, because Secrets are not
watched (the executor only has ``secrets: get``), every ``connection_recheck_seconds``; a
status patch is written only when the condition changes, with an Event on each transition.
It also tells the connectors to drop pooled clients when a Connection changes or is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource

from kumulus.connectors import base as connectors
from kumulus.domain import connection as rules
from kumulus.domain.connection import Ready, SecretState
from kumulus.domain.settings import Settings
from kumulus.k8s import events, secrets
from kumulus.k8s.keeper import StatusKeeper, ready_transition
from kumulus.k8s.resources import (
    GROUP,
    VERSION,
    Key,
    client,
    is_not_found,
    object_key,
    patch_status,
)

log = logging.getLogger("kumulus.connections")

Connection: Any = create_namespaced_resource(GROUP, VERSION, "Connection", "connections")


async def get_connection(namespace: str, name: str) -> dict[str, Any] | None:
    """The Connection as a dict, or ``None`` if it does not exist."""
    try:
        obj = await client().get(Connection, name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return None
        raise
    result: dict[str, Any] = obj.to_dict() if not isinstance(obj, dict) else obj
    return result


async def patch_connection_status(
    namespace: str, name: str, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Merge-patch the Connection's status; ``None`` if it is gone."""
    return await patch_status(Connection, namespace, name, status)


def load_type(type_: str) -> tuple[connectors.Connector | None, tuple[str, str] | None]:
    """The connector for ``type_`` or ``(None, (reason, message))`` when it cannot be used."""
    try:
        return connectors.get_connector(type_), None
    except connectors.UnknownConnectorTypeError as err:
        return None, ("UnknownType", str(err)[:1000])
    except connectors.ConnectorUnavailableError as err:
        return None, ("ConnectorUnavailable", str(err)[:1000])


async def evaluate(body: Mapping[str, Any]) -> Ready:
    """The Ready condition of a Connection (reads its Secret; never returns a secret)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    type_ = str(spec.get("type") or "")
    secret_name = (spec.get("secretRef") or {}).get("name")
    connector, type_problem = load_type(type_)
    state = SecretState.NONE
    detail = ""
    secret: dict[str, str] = {}
    if secret_name:
        try:
            data = await secrets.read_secret_data(namespace, str(secret_name))
        except secrets.SecretForbiddenError as err:
            state, detail = SecretState.FORBIDDEN, str(err)
        else:
            if data is None:
                state = SecretState.MISSING
            else:
                try:
                    secret = rules.decode_secret(data)
                    state = SecretState.PRESENT
                except rules.InputError as err:
                    state, detail = SecretState.INVALID, str(err)
    problems: list[str] = []
    if connector is not None and state in (SecretState.NONE, SecretState.PRESENT):
        values = rules.merge_inputs(spec.get("values"), secret, None)
        try:
            problems = connector.validate(values, partial=True)
        except Exception as exc:  # a plugin's bug must not stop the keeper
            problems = [f"the {type_} connector's validate() failed: {type(exc).__name__}"]
        texts = rules.secret_texts(secret, values, connector.secret_keys)
        problems = [rules.redact(p, texts) for p in problems]
    return rules.connection_ready(
        type_=type_,
        type_problem=type_problem,
        secret_name=str(secret_name) if secret_name else None,
        secret_state=state,
        secret_detail=detail,
        problems=problems,
    )


class ConnectionKeeper(StatusKeeper):
    """Keeps ``status.conditions[Ready]`` of every watched Connection up to date."""

    kind = "Connection"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.namespaces, settings.connection_recheck_seconds)
        self.settings = settings

    def on_connection(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a Connection (``None`` type = initial listing)."""
        old = self.bodies.get(object_key(body))
        key = self.store(event_type, body)
        if key is None:
            return
        if event_type == "DELETED":
            self.spawn(self._discard(key, "deleted"))
            return
        generation = (body.get("metadata") or {}).get("generation")
        if old is not None and (old.get("metadata") or {}).get("generation") != generation:
            self.spawn(self._discard(key, "changed"))
        self.trigger(key)

    async def _discard(self, key: Key, why: str) -> None:
        for connector in connectors.loaded_connectors():
            try:
                await connector.discard(*key)
            except Exception as exc:
                log.warning(
                    "Failed to drop pooled %s clients of Connection %s/%s (%s): %s.",
                    connector.type,
                    *key,
                    why,
                    type(exc).__name__,
                )

    async def check(self, key: Key) -> None:
        """Evaluate one Connection and patch its status when the condition changed."""
        body = self.bodies.get(key)
        if body is None:
            return
        ready = await evaluate(body)
        patch = rules.connection_status_patch(body, ready, datetime.now(UTC))
        if patch is None:
            return
        patched = await patch_connection_status(*key, patch)
        if patched is None:
            return
        if key in self.bodies:
            self.bodies[key] = patched
        if ready_transition(body, ready.status, ready.reason):
            state = "ready" if ready.status else f"not ready ({ready.reason})"
            log.info("Marked Connection %s/%s %s.", *key, state)
            await events.post_event(
                patched,
                "Normal" if ready.status else "Warning",
                "Ready" if ready.status else ready.reason,
                f"Connection {key[1]} is {state}: {ready.message}",
            )
