"""kopf handlers of Flows: feed the engine's Flow cache and the Flow keeper.

The engine needs each Flow when an Execution starts; the keeper
(:class:`kumulus.k8s.flows.FlowKeeper`) keeps the Flow's ``Ready`` condition, ``codeHash`` and
``observedGeneration`` true, also for code in a ConfigMap that appears or changes later.
Executions of a Flow that is not Ready fail at once with reason ``FlowNotReady``.
"""

from __future__ import annotations

from typing import Any

import kopf

from kumulus.handlers.state import engine
from kumulus.k8s.flows import FlowKeeper

_keeper: FlowKeeper | None = None


def keeper() -> FlowKeeper:
    """The process's Flow keeper (built on first use from the engine's settings)."""
    global _keeper
    if _keeper is None:
        _keeper = FlowKeeper(engine().settings)
    return _keeper


@kopf.on.event("kumulus.dev", "v1alpha1", "flows")
async def flow_event(event: kopf.RawEvent, **_: Any) -> None:
    """Cache the Flow for starting Executions, and check its code."""
    engine().on_flow(event.get("type"), event["object"])
    keeper().on_flow(event.get("type"), event["object"])


@kopf.on.startup()
async def start_flow_keeper(**_: Any) -> None:
    """Start the periodic check of Flows whose code lives in a ConfigMap."""
    keeper().start()


@kopf.on.cleanup()
async def stop_flow_keeper(**_: Any) -> None:
    """Stop the keeper's tasks."""
    await keeper().stop()
