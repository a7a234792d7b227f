"""Resource classes of the Kumulus CRDs and the shared API client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2 as httpx
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

GROUP = "kumulus.dev"
VERSION = "v1alpha1"

Execution: Any = create_namespaced_resource(GROUP, VERSION, "Execution", "executions")
Flow: Any = create_namespaced_resource(GROUP, VERSION, "Flow", "flows")

FIELD_MANAGER = "kumulus-operator"

API_CONNECTIONS = 64
"""Connections the client opens to the API server, all kept alive between requests.

The engine's reconcile workers (``Settings.reconcile_workers``) and its background calls stay
below this, so a burst of thousands of Executions reuses these connections. With httpx's
default (20 kept alive) every request beyond the 20th opened a new TLS connection and closed it
afterwards: a handshake per request, a measurable share of the operator's CPU in a burst."""

_client: AsyncClient | None = None


def client() -> AsyncClient:
    """The process-wide API client (kubeconfig from ``KUBECONFIG`` or in-cluster config)."""
    global _client
    if _client is None:
        config = KubeConfig.from_env().get()
        if config is None or config.user is None:
            raise RuntimeError("The kubeconfig has no current context with a user.")
        # The same TLS settings lightkube would use (CA, client certificate), with a bigger pool.
        transport = httpx.AsyncHTTPTransport(
            verify=verify_cluster(config.cluster, config.user, config.abs_file, trust_env=False),
            limits=httpx.Limits(
                max_connections=API_CONNECTIONS, max_keepalive_connections=API_CONNECTIONS
            ),
        )
        # trust_env=False: no proxy from the environment; the config still comes from
        # KUBECONFIG or the in-cluster ServiceAccount.
        _client = AsyncClient(
            config=config, field_manager=FIELD_MANAGER, trust_env=False, transport=transport
        )
    return _client


Key = tuple[str, str]
"""``(namespace, name)`` of a namespaced object: how the operator's caches and queues key it."""


def object_key(body: Mapping[str, Any]) -> Key:
    """``(namespace, name)`` of an object."""
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def resource_version(body: Mapping[str, Any] | None) -> int:
    """``metadata.resourceVersion`` as a number to compare versions of one object (0 if none).

    The API treats it as opaque; within one object's history it grows, which is all the caches
    rely on to keep the newer of two versions."""
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def status_code(err: ApiError) -> int:
    """HTTP status code of an API error."""
    return int(err.status.code or 0)


def is_not_found(err: ApiError) -> bool:
    return status_code(err) == 404


def is_conflict(err: ApiError) -> bool:
    return status_code(err) == 409


def to_dict(obj: Any) -> dict[str, Any]:
    """A lightkube object (model or generic resource) as a plain dict."""
    if isinstance(obj, dict):
        return obj
    result: dict[str, Any] = obj.to_dict()
    return result


async def patch_status(
    resource: Any, namespace: str, name: str, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Merge-patch ``status`` of a Kumulus object (``resource`` is its generic resource class).

    Returns the patched object as a dict, or ``None`` if the object is gone.
    """
    try:
        obj = await client().patch(
            resource.Status,
            name,
            {"status": dict(status)},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as err:
        if is_not_found(err):
            return None
        raise
    return to_dict(obj)
