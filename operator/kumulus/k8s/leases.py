"""Lock Leases of finished Executions: the operator's half of ``system.setting(...).acquire()``.

A flow's lock is a ``coordination.k8s.io`` Lease (label ``kumulus.dev/lock: "true"``) whose
``holderIdentity`` is the holding Execution's name (see ``kumulus.runner.settings``). The runner
releases its locks when the flow ends, but it cannot when its Pod is killed (OOM, SIGKILL after
a cancel's grace period, a deleted Pod). So when an Execution that used locks reaches a terminal
phase, the engine calls :func:`release_held`, which clears ``holderIdentity`` on every lock
Lease of the namespace that the Execution still holds. Each update is guarded by the Lease's
``resourceVersion``, so a Lease taken over meanwhile by another Execution is left alone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType

from kumulus.k8s.resources import client, is_conflict, is_not_found, to_dict

log = logging.getLogger(__name__)

LOCK_LABEL = "kumulus.dev/lock"
ATTEMPTS = 3


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def release_held(namespace: str, execution: str) -> list[str]:
    """Release the lock Leases in ``namespace`` held by ``execution``; return their names.

    Errors are logged, never raised: the Execution has ended already, and a Lease left held
    expires on its own once nobody renews it.
    """
    try:
        return await _release_held(namespace, execution)
    except Exception as exc:
        log.warning(
            "Failed to release the lock Leases of Execution %s/%s: %s", namespace, execution, exc
        )
        return []


async def _release_held(namespace: str, execution: str) -> list[str]:
    try:
        found = [
            to_dict(lease)
            async for lease in client().list(
                Lease, namespace=namespace, labels={LOCK_LABEL: "true"}
            )
        ]
    except ApiError as err:
        log.warning(
            "Failed to list lock Leases in %s to release those of Execution %s/%s: %s",
            namespace,
            namespace,
            execution,
            err.status.message,
        )
        return []
    released = []
    for lease in found:
        name = str(lease["metadata"]["name"])
        if await _release_one(namespace, name, execution, lease):
            released.append(name)
    return released


async def _release_one(namespace: str, name: str, execution: str, lease: dict[str, Any]) -> bool:
    for _ in range(ATTEMPTS):
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != execution:
            return False
        meta = lease.get("metadata") or {}
        patch = {
            # The resourceVersion makes the patch conditional: 409 if the Lease changed.
            "metadata": {"resourceVersion": meta.get("resourceVersion")},
            "spec": {"holderIdentity": None, "renewTime": _now()},
        }
        try:
            await client().patch(
                Lease, name, patch, namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as err:
            if is_not_found(err):
                return False
            if not is_conflict(err):
                log.warning(
                    "Failed to release Lease %s/%s of Execution %s: %s",
                    namespace,
                    name,
                    execution,
                    err.status.message,
                )
                return False
            try:
                lease = to_dict(await client().get(Lease, name, namespace=namespace))
            except ApiError:
                return False
            continue
        log.info(
            "Released Lease %s/%s held by finished Execution %s/%s.",
            namespace,
            name,
            namespace,
            execution,
        )
        return True
    log.warning(
        "Gave up releasing Lease %s/%s of Execution %s: it kept changing.",
        namespace,
        name,
        execution,
    )
    return False
