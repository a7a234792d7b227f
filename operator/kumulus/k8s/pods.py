"""Runner Pods: idempotent create, get, graceful delete."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightkube import codecs
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from kumulus.k8s.resources import client, is_not_found, status_code, to_dict

log = logging.getLogger(__name__)


class PodOwnedByOther(RuntimeError):
    """A Pod with the attempt's name exists but another object controls it."""


async def create_pod(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the Pod; if it already exists and the same Execution owns it, adopt it."""
    meta = manifest["metadata"]
    obj = codecs.from_dict(dict(manifest))
    try:
        created = await client().create(obj)
        log.info("Created Pod %s/%s.", meta["namespace"], meta["name"])
        return to_dict(created)
    except ApiError as err:
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


async def delete_pod(namespace: str, name: str, grace_seconds: int) -> None:
    """Delete the Pod with a grace period; a missing Pod is fine."""
    try:
        await client().delete(Pod, name, namespace=namespace, grace_period=grace_seconds)
        log.info("Deleted Pod %s/%s (grace %ss).", namespace, name, grace_seconds)
    except ApiError as err:
        if not is_not_found(err):
            raise
