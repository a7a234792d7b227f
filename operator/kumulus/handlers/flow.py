"""kopf handler of Flows: check the code, set ``Ready``, ``observedGeneration``, ``codeHash``.

A Flow is Ready when its code (inline ``spec.code`` or ``spec.codeFrom.configMapKeyRef``)
compiles and defines its handler. A syntax error gives ``Ready=False``, reason
``SyntaxError`` and the line in the message, so it shows before any Execution runs the Flow.
Executions of a Flow that is not Ready fail at once with reason ``FlowNotReady``.

Flows with ``codeFrom`` are checked again every ``flow_recheck_seconds``: their ConfigMap may
appear after the Flow (GitOps applies in any order) or change without the Flow changing. The
operator reads ConfigMaps with ``get`` only, so it polls the referenced keys rather than
watching every ConfigMap of the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from kumulus.domain import flowcode, lifecycle
from kumulus.handlers.state import engine
from kumulus.k8s import configmaps, events, executions

log = logging.getLogger("kumulus.flow")


async def _code(namespace: str, spec: dict[str, Any]) -> tuple[str | None, str]:
    """The Flow's code, or ``None`` and why not."""
    if spec.get("code"):
        return str(spec["code"]), ""
    ref = (spec.get("codeFrom") or {}).get("configMapKeyRef") or {}
    if not ref.get("name") or not ref.get("key"):
        return None, "Flow has neither code nor codeFrom.configMapKeyRef."
    value = await configmaps.get_configmap_key(namespace, ref["name"], ref["key"])
    if value is None:
        return None, f"ConfigMap {ref['name']} has no key {ref['key']}."
    return value, ""


@kopf.on.event("kumulus.dev", "v1alpha1", "flows")
async def flow_event(event: kopf.RawEvent, **_: Any) -> None:
    """Cache the Flow for starting Executions, then check its code if it changed."""
    body: dict[str, Any] = dict(event["object"])
    engine().on_flow(event.get("type"), body)
    if event.get("type") == "DELETED":
        return
    await check_flow(body)


async def check_flow(body: dict[str, Any]) -> None:
    """Check the Flow's code; write Ready, observedGeneration and codeHash where they changed."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    code, problem = await _code(namespace, spec)
    if code is None:
        check = flowcode.CodeCheck(False, "CodeNotFound", problem, "")
    else:
        check = flowcode.check_code(code, str(spec.get("handler") or "handler"), f"<flow {name}>")
    raw_generation = meta.get("generation")
    generation = int(raw_generation) if raw_generation is not None else None
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    unchanged = (
        status.get("observedGeneration") == generation
        and status.get("codeHash", "") == check.code_hash
        and ready is not None
        and ready.get("status") == ("True" if check.ok else "False")
        and ready.get("message") == check.message
    )
    if unchanged:
        return
    conditions = lifecycle.set_condition(
        status.get("conditions") or [],
        "Ready",
        check.ok,
        check.reason,
        check.message,
        generation,
        datetime.now(UTC),
    )
    await executions.patch_flow_status(
        namespace,
        name,
        {"conditions": conditions, "observedGeneration": generation, "codeHash": check.code_hash},
    )
    if check.ok:
        log.info("Marked Flow %s/%s Ready.", namespace, name)
        await events.post_event(body, "Normal", "Ready", f"Flow {name} is ready.")
    else:
        log.warning("Marked Flow %s/%s not Ready: %s", namespace, name, check.message)
        await events.post_event(body, "Warning", check.reason, f"Flow {name}: {check.message}")


_recheck: asyncio.Task[None] | None = None


async def _recheck_code_from(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for body in list(engine().flows.values()):
            if not (body.get("spec") or {}).get("codeFrom"):
                continue
            meta = body.get("metadata") or {}
            try:
                await check_flow(body)
            except Exception:
                log.exception(
                    "Failed to check Flow %s/%s again.", meta.get("namespace"), meta.get("name")
                )


@kopf.on.startup()
async def start_flow_recheck(**_: Any) -> None:
    """Start the periodic check of Flows whose code lives in a ConfigMap."""
    global _recheck
    _recheck = asyncio.create_task(_recheck_code_from(engine().settings.flow_recheck_seconds))


@kopf.on.cleanup()
async def stop_flow_recheck(**_: Any) -> None:
    """Stop the periodic check."""
    if _recheck is not None:
        _recheck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _recheck
