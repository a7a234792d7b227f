"""Executions and Flows: reads and optimistic-concurrency status patches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from kumulus.k8s.resources import (
    Execution,
    Flow,
    client,
    is_conflict,
    is_not_found,
    patch_status,
    to_dict,
)


class Conflict(RuntimeError):
    """The object changed since it was read (HTTP 409); read again and re-decide."""


async def get_execution(namespace: str, name: str) -> dict[str, Any] | None:
    """The Execution, or ``None`` if it does not exist."""
    try:
        return to_dict(await client().get(Execution, name, namespace=namespace))
    except ApiError as err:
        if is_not_found(err):
            return None
        raise


async def patch_execution_status(
    namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Merge-patch ``status``; with ``resource_version`` the patch fails on a stale read.

    Returns the patched object, or ``None`` if the Execution is gone. Raises
    :class:`Conflict` when the object changed since ``resource_version``.
    """
    body: dict[str, Any] = {"status": dict(status)}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        result = await client().patch(
            Execution.Status, name, body, namespace=namespace, patch_type=PatchType.MERGE
        )
    except ApiError as err:
        if is_not_found(err):
            return None
        if is_conflict(err):
            raise Conflict(f"Execution {namespace}/{name} changed") from err
        raise
    return to_dict(result)


async def patch_execution_spec(namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    """Merge-patch the Execution's ``spec`` (e.g. ``desiredState``); a missing one is fine."""
    try:
        await client().patch(
            Execution, name, {"spec": dict(spec)}, namespace=namespace, patch_type=PatchType.MERGE
        )
    except ApiError as err:
        if not is_not_found(err):
            raise


async def delete_execution(namespace: str, name: str) -> None:
    """Delete the Execution (background propagation: Pods and children follow by GC)."""
    try:
        await client().delete(Execution, name, namespace=namespace)
    except ApiError as err:
        if not is_not_found(err):
            raise


async def get_flow(namespace: str, name: str) -> dict[str, Any] | None:
    """The Flow, or ``None`` if it does not exist."""
    try:
        return to_dict(await client().get(Flow, name, namespace=namespace))
    except ApiError as err:
        if is_not_found(err):
            return None
        raise


async def patch_flow_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch the Flow's status (nothing if the Flow is gone)."""
    await patch_status(Flow, namespace, name, status)
