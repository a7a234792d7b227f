"""The webhook service's API clients and resource classes.

Three clients, one per kind of traffic, so that one kind can never starve another of pooled
connections: ``watch`` for the cache's long-lived watches, ``api`` for short requests
(creating Executions, patching Webhook status) and ``waits`` for the watches of sync calls
waiting on their Execution (bounded by ``max_sync_waiting``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource

GROUP = "kumulus.dev"
VERSION = "v1alpha1"
FIELD_MANAGER = "kumulus-webhook"

Execution: Any = create_namespaced_resource(GROUP, VERSION, "Execution", "executions")
Flow: Any = create_namespaced_resource(GROUP, VERSION, "Flow", "flows")
Webhook: Any = create_namespaced_resource(GROUP, VERSION, "Webhook", "webhooks")


def new_client(timeout: float) -> AsyncClient:
    """A client from ``KUBECONFIG`` or the in-cluster ServiceAccount (no proxy from env)."""
    return AsyncClient(
        config=KubeConfig.from_env(),
        field_manager=FIELD_MANAGER,
        trust_env=False,
        timeout=httpx2.Timeout(timeout),
    )


@dataclasses.dataclass
class Clients:
    """The three clients of the service (see the module docstring)."""

    watch: AsyncClient
    api: AsyncClient
    waits: AsyncClient

    @classmethod
    def create(cls, timeout: float) -> Clients:
        return cls(watch=new_client(timeout), api=new_client(timeout), waits=new_client(timeout))

    async def close(self) -> None:
        for client in (self.watch, self.api, self.waits):
            await client.close()


def status_code(err: ApiError) -> int:
    return int(err.status.code or 0)


def to_dict(obj: Any) -> dict[str, Any]:
    """A lightkube object as a plain dict."""
    if isinstance(obj, dict):
        return obj
    result: dict[str, Any] = obj.to_dict()
    return result
