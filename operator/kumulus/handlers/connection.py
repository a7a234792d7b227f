"""kopf handlers of Connections: the ``Ready`` condition (type, values, Secret).

Registered by :mod:`kumulus.handlers.connection_executor` on its registry, because only the
process that runs connector calls may read Secrets: a Connection's Ready condition is kept by
the connection executor, inline in the operator or as its own process. An event handler on
purpose: no finalizer and no kopf annotations on Connections.
"""

from __future__ import annotations

from typing import Any

import kopf

from kumulus.domain.settings import Settings
from kumulus.k8s.connections import ConnectionKeeper

_keeper: ConnectionKeeper | None = None


def keeper() -> ConnectionKeeper:
    """The Connection keeper of this process (created lazily)."""
    global _keeper
    if _keeper is None:
        _keeper = ConnectionKeeper(Settings.from_env())
    return _keeper


async def connection_event(event: kopf.RawEvent, **_: Any) -> None:
    """Re-check the Connection's Ready condition."""
    keeper().on_connection(event.get("type"), event["object"])


async def start_keeper(**_: Any) -> None:
    """Start the periodic re-check (Secrets are not watched)."""
    keeper().start()


async def stop_keeper(**_: Any) -> None:
    """Stop the keeper's tasks."""
    await keeper().stop()


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the Connection handlers on ``registry``."""
    kopf.on.event("kumulus.dev", "v1alpha1", "connections", registry=registry)(connection_event)
    kopf.on.startup(registry=registry)(start_keeper)
    kopf.on.cleanup(registry=registry)(stop_keeper)
