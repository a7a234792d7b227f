"""Runner Pods: idempotent create, get, graceful delete of owned Pods only.

A Pod's name reaches the operator through an Execution's status, which flow code can write, so
the name alone never justifies a delete: :func:`delete_owned_pod` reads the Pod and deletes it
only when the Execution controls it (:func:`kumulus.domain.podspec.owned_by`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightkube import codecs
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod, ServiceAccount

from kumulus.domain.podspec import owned_by
from kumulus.k8s.resources import client, is_not_found, status_code, to_dict

log = logging.getLogger(__name__)


class PodOwnedByOther(RuntimeError):
    """A Pod with the attempt's name exists but another object controls it."""


class PodNotOwned(RuntimeError):
    """Refused to delete a Pod its Execution does not control."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"Pod {namespace}/{name} is not controlled by the Execution")
        self.namespace = namespace
        self.name = name


class ServiceAccountNotFound(RuntimeError):
    """The API server refused the Pod: its ServiceAccount does not exist."""

    def __init__(self, namespace: str, account: str) -> None:
        super().__init__(f"ServiceAccount {namespace}/{account} does not exist")
        self.account = account


def _refused_for_service_account(err: ApiError) -> bool:
    """The ServiceAccount admission plugin's answer: 403 "error looking up service account"."""
    message = str(err.status.message or "").lower()
    return status_code(err) == 403 and "service account" in message


async def service_account_exists(namespace: str, name: str) -> bool:
    """Whether the ServiceAccount exists (``True`` when the operator may not read it)."""
    try:
        await client().get(ServiceAccount, name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return False
        if status_code(err) == 403:
            return True
        raise
    return True


async def create_pod(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the Pod; if it already exists and the same Execution owns it, adopt it."""
    meta = manifest["metadata"]
    obj = codecs.from_dict(dict(manifest))
    try:
        created = await client().create(obj)
        log.info("Created Pod %s/%s.", meta["namespace"], meta["name"])
        return to_dict(created)
    except ApiError as err:
        if _refused_for_service_account(err):
            account = str(manifest["spec"].get("serviceAccountName") or "default")
            if not await service_account_exists(meta["namespace"], account):
                raise ServiceAccountNotFound(meta["namespace"], account) from err
        if status_code(err) != 409:
            raise
    existing = await get_pod(meta["namespace"], meta["name"])
    if existing is None:
        raise PodOwnedByOther(f"Pod {meta['namespace']}/{meta['name']} vanished during create")
    want_uid = meta["ownerReferences"][0]["uid"]
    refs = (existing.get("metadata") or {}).get("ownerReferences") or []
    if not any(r.get("uid") == want_uid and r.get("controller") for r in refs):
        raise PodOwnedByOther(
            f"Pod {meta['namespace']}/{meta['name']} exists but is not owned by its Execution"
        )
    log.info("Adopted existing Pod %s/%s.", meta["namespace"], meta["name"])
    return existing


async def get_pod(namespace: str, name: str) -> dict[str, Any] | None:
    """The Pod, or ``None`` if it does not exist."""
    try:
        return to_dict(await client().get(Pod, name, namespace=namespace))
    except ApiError as err:
        if is_not_found(err):
            return None
        raise


async def delete_owned_pod(
    namespace: str, name: str, execution_uid: str, grace_seconds: int
) -> None:
    """Delete the Pod if the Execution ``execution_uid`` controls it; a missing Pod is fine.

    Raises :class:`PodNotOwned` (and deletes nothing) for any other Pod.
    """
    pod = await get_pod(namespace, name)
    if pod is None:
        return
    if not owned_by(pod, execution_uid):
        raise PodNotOwned(namespace, name)
    await delete_pod(namespace, name, grace_seconds)


async def delete_pod(namespace: str, name: str, grace_seconds: int) -> None:
    """Delete the Pod with a grace period; a missing Pod is fine. Unchecked: the engine uses
    :func:`delete_owned_pod`."""
    try:
        await client().delete(Pod, name, namespace=namespace, grace_period=grace_seconds)
        log.info("Deleted Pod %s/%s (grace %ss).", namespace, name, grace_seconds)
    except ApiError as err:
        if not is_not_found(err):
            raise
