"""Resource classes of the Kumulus CRDs and the shared API client."""

from __future__ import annotations

from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource

GROUP = "kumulus.dev"
VERSION = "v1alpha1"

Execution: Any = create_namespaced_resource(GROUP, VERSION, "Execution", "executions")
Flow: Any = create_namespaced_resource(GROUP, VERSION, "Flow", "flows")

FIELD_MANAGER = "kumulus-operator"

_client: AsyncClient | None = None


def client() -> AsyncClient:
    """The process-wide API client (kubeconfig from ``KUBECONFIG`` or in-cluster config)."""
    global _client
    if _client is None:
        # trust_env=False: no proxy from the environment; the config still comes from
        # KUBECONFIG or the in-cluster ServiceAccount.
        _client = AsyncClient(
            config=KubeConfig.from_env(), field_manager=FIELD_MANAGER, trust_env=False
        )
    return _client


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
