"""Schedules and the Executions they start: reads, idempotent creates, guarded status patches.

The scheduler (:mod:`kumulus.k8s.scheduler`) reads a Schedule and lists its Executions fresh
from the API server before each decision (the label ``kumulus.dev/schedule`` is the source
of truth for which instants already ran), so a second operator process or a restart never
acts on a stale cache. Creating an Execution that already exists returns ``False``: another
process started that instant first, which is the exactly-once guarantee at work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from kumulus.domain.schedule import LABEL_SCHEDULE
from kumulus.k8s import executions
from kumulus.k8s.executions import Conflict
from kumulus.k8s.resources import (
    GROUP,
    VERSION,
    Execution,
    client,
    is_conflict,
    is_not_found,
    status_code,
    to_dict,
)

__all__ = [
    "Conflict",
    "NamespaceTerminating",
    "Schedule",
    "cancel_execution",
    "create_execution",
    "delete_execution",
    "get_execution",
    "get_schedule",
    "list_runs",
    "patch_schedule_status",
]

Schedule: Any = create_namespaced_resource(GROUP, VERSION, "Schedule", "schedules")


async def get_schedule(namespace: str, name: str) -> dict[str, Any] | None:
    """The Schedule, or ``None`` if it does not exist."""
    try:
        return to_dict(await client().get(Schedule, name, namespace=namespace))
    except ApiError as err:
        if is_not_found(err):
            return None
        raise


async def list_runs(namespace: str, label_value: str) -> list[dict[str, Any]]:
    """The Executions labelled ``kumulus.dev/schedule=<label_value>`` in ``namespace``."""
    return [
        to_dict(obj)
        async for obj in client().list(
            Execution, namespace=namespace, labels={LABEL_SCHEDULE: label_value}
        )
    ]


async def get_execution(namespace: str, name: str) -> dict[str, Any] | None:
    """The Execution of that name (to see who owns a name that was taken), or ``None``."""
    return await executions.get_execution(namespace, name)


class NamespaceTerminating(RuntimeError):
    """The namespace is being deleted: nothing new can be created in it."""


async def create_execution(manifest: Mapping[str, Any]) -> bool:
    """Create the Execution; ``False`` if one with its name already exists.

    Raises :class:`NamespaceTerminating` when the namespace is being deleted.
    """
    try:
        await client().create(codecs.from_dict(dict(manifest)))
    except ApiError as err:
        if status_code(err) == 409:
            return False
        if status_code(err) == 403 and "being terminated" in str(err.status.message or ""):
            raise NamespaceTerminating(str(err.status.message)) from err
        raise
    return True


async def patch_schedule_status(
    namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Merge-patch the status, failing with :class:`Conflict` if the Schedule changed since
    ``resource_version``; ``None`` if it is gone."""
    body: dict[str, Any] = {"status": dict(status)}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        result = await client().patch(
            Schedule.Status, name, body, namespace=namespace, patch_type=PatchType.MERGE
        )
    except ApiError as err:
        if is_not_found(err):
            return None
        if is_conflict(err):
            raise Conflict(f"Schedule {namespace}/{name} changed") from err
        raise
    return to_dict(result)


async def cancel_execution(namespace: str, name: str) -> None:
    """Set ``spec.desiredState: Cancelled`` (the engine stops its Pod); a missing one is fine."""
    await executions.patch_execution_spec(namespace, name, {"desiredState": "Cancelled"})


async def delete_execution(namespace: str, name: str) -> None:
    """Delete a finished Execution beyond the history limits; a missing one is fine."""
    await executions.delete_execution(namespace, name)
