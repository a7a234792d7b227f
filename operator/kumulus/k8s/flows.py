"""Flows on the operator's side: the keeper of ``Ready``, ``observedGeneration`` and ``codeHash``.

A Flow is Ready when its code (inline ``spec.code`` or ``spec.codeFrom.configMapKeyRef``)
compiles and defines its handler, and its ``spec.image`` (if any) is one the operator allows
(``Settings.allowed_images``). A syntax error gives ``Ready=False``, reason ``SyntaxError``
and the line in the message, so it shows before any Execution runs the Flow; an image that is
not allowed gives reason ``ImageNotAllowed``.

The keeper checks a Flow on each of its watch events and, for Flows with ``codeFrom``, again
every ``flow_recheck_seconds``: their ConfigMap may appear after the Flow (GitOps applies in
any order) or change without the Flow changing. The operator reads ConfigMaps with ``get``
only, so it polls the referenced keys rather than watching every ConfigMap of the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kumulus.domain import flowcode, lifecycle, podspec
from kumulus.domain.settings import Settings
from kumulus.k8s import configmaps, events, executions
from kumulus.k8s.keeper import StatusKeeper, ready_condition, ready_transition
from kumulus.k8s.resources import Key

log = logging.getLogger("kumulus.flow")


async def flow_code(namespace: str, spec: Mapping[str, Any]) -> tuple[str | None, str]:
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


class FlowKeeper(StatusKeeper):
    """Keeps ``Ready``, ``observedGeneration`` and ``codeHash`` of every watched Flow."""

    kind = "Flow"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.namespaces, settings.flow_recheck_seconds)
        self.settings = settings

    def on_flow(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a Flow (``None`` type = initial listing)."""
        key = self.store(event_type, body)
        if key is not None and event_type != "DELETED":
            self.trigger(key)

    def recheck_keys(self) -> list[Key]:
        """Only Flows whose code lives in a ConfigMap can change without a Flow event."""
        return [k for k, b in self.bodies.items() if (b.get("spec") or {}).get("codeFrom")]

    async def check(self, key: Key) -> None:
        """Check the Flow's code; patch its status where it changed, with an Event."""
        body = self.bodies.get(key)
        if body is None:
            return
        namespace, name = key
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        code, problem = await flow_code(namespace, spec)
        if code is None:
            check = flowcode.CodeCheck(False, "CodeNotFound", problem, "")
        else:
            handler = str(spec.get("handler") or "handler")
            check = flowcode.check_code(code, handler, f"<flow {name}>")
        refusal = podspec.image_refusal(body, self.settings)
        if check.ok and refusal is not None:
            check = flowcode.CodeCheck(False, "ImageNotAllowed", refusal, check.code_hash)
        raw_generation = meta.get("generation")
        generation = int(raw_generation) if raw_generation is not None else None
        ready = ready_condition(body)
        unchanged = (
            status.get("observedGeneration") == generation
            and status.get("codeHash", "") == check.code_hash
            and ready is not None
            and ready.get("status") == str(check.ok)
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
            {
                "conditions": conditions,
                "observedGeneration": generation,
                "codeHash": check.code_hash,
            },
        )
        before = str(status.get("codeHash") or "")
        if before and check.code_hash and before != check.code_hash:
            # Runner Pods created from now on run only the new code; say it changed.
            message = (
                f"Flow {name}: its code changed ({before} -> {check.code_hash}); runs started "
                "from now on run the new code, runs started before refuse it (CodeChanged)."
            )
            log.info(
                "Code of Flow %s/%s changed: %s -> %s", namespace, name, before, check.code_hash
            )
            await events.post_event(body, "Normal", "CodeChanged", message)
        if not ready_transition(body, check.ok, check.reason):
            return
        if check.ok:
            log.info("Marked Flow %s/%s Ready.", namespace, name)
            await events.post_event(body, "Normal", "Ready", f"Flow {name} is ready.")
        else:
            log.warning("Marked Flow %s/%s not Ready: %s", namespace, name, check.message)
            await events.post_event(body, "Warning", check.reason, f"Flow {name}: {check.message}")
