"""The node agent: registers the Node, keeps its Lease, watches its Pods and runs them.

This is the kubelet's outer loop for the dev cluster: list+watch Pods bound to this node (re-list
on 410 Gone, reconnect when the API server restarts), one :class:`PodWorker` per Pod uid, Events
for container transitions, and the log server the API server proxies ``kubectl logs`` to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node, NodeStatus, Pod
from lightkube.types import PatchType

from kumulus.devcluster.nodeagent.identity import read_cluster_endpoint
from kumulus.devcluster.nodeagent.logserver import LogServer
from kumulus.devcluster.nodeagent.node import (
    LEASE_DURATION_SECONDS,
    LEASE_NAMESPACE,
    LEASE_RENEW_SECONDS,
    STATUS_REPORT_SECONDS,
    node_object,
    node_status,
    resources,
)
from kumulus.devcluster.nodeagent.pod import NodeContext, PodWorker
from kumulus.devcluster.nodeagent.status import now_iso

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
RETRY_SECONDS = 2.0


def micro_time() -> str:
    """A Kubernetes ``MicroTime`` for Lease renewals."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class AgentConfig:
    """The agent's command line."""

    kubeconfig: Path
    node_name: str
    kubelet_port: int
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    state_dir: Path
    image_map: dict[str, list[str]]
    path: str


class NodeAgent:
    """Everything the agent runs, started by :meth:`run` and stopped by :meth:`stop`."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.client = AsyncClient(
            KubeConfig.from_file(config.kubeconfig), field_manager="kumulus-nodeagent"
        )
        self.workers: dict[str, PodWorker] = {}
        self.log_server = LogServer(self)
        self.node_conditions: dict[str, JsonDict] = {}
        self.ctx = NodeContext(
            client=self.client,
            node_name=config.node_name,
            state_dir=config.state_dir,
            endpoint=read_cluster_endpoint(config.kubeconfig),
            path=config.path,
            image_map=config.image_map,
            allocatable=resources(),
            emit_event=self.emit_event,
        )
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        """Run until :meth:`stop` is called."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        await self.log_server.start(
            self.config.kubelet_port,
            self.config.tls_cert,
            self.config.tls_key,
            self.config.client_ca,
        )
        await self._register()
        tasks = [
            asyncio.create_task(self._lease_loop(), name="lease"),
            asyncio.create_task(self._status_loop(), name="node status"),
            asyncio.create_task(self._pod_loop(), name="pods"),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("Stopping %d Pod workers.", len(self.workers))
            await asyncio.gather(
                *(w.shutdown() for w in self.workers.values()), return_exceptions=True
            )
            await self.log_server.stop()
            await self.client.close()
            log.info("Stopped node agent %s.", self.config.node_name)

    def stop(self) -> None:
        """Ask :meth:`run` to kill every Pod process and return."""
        self._stop.set()

    # ------------------------------------------------------------------ node

    async def _register(self) -> None:
        name = self.config.node_name
        while True:
            try:
                await self.client.create(cast(Node, Node.from_dict(node_object(name))))
                log.info("Registered Node %s.", name)
                break
            except ApiError as exc:
                if exc.status.code == 409:
                    log.info("Found Node %s already registered.", name)
                    break
                log.warning("Failed to register Node %s: %s", name, exc.status.message)
            except Exception as exc:
                log.warning("Failed to register Node %s: %s", name, exc)
            await asyncio.sleep(RETRY_SECONDS)
        await self._report_status()

    async def _report_status(self) -> None:
        status = node_status(
            self.config.node_name, self.config.kubelet_port, now_iso(), self.node_conditions
        )
        await self.client.patch(
            NodeStatus,
            self.config.node_name,
            {"status": status},
            patch_type=PatchType.MERGE,
        )
        self.node_conditions = {c["type"]: c for c in status["conditions"]}

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_REPORT_SECONDS)
            try:
                await self._report_status()
            except ApiError as exc:
                if exc.status.code == 404:
                    log.warning(
                        "Found Node %s deleted; registering it again.", self.config.node_name
                    )
                    with contextlib.suppress(Exception):
                        await self._register()
                else:
                    log.warning("Failed to update Node %s status: %s", self.config.node_name, exc)
            except Exception as exc:
                log.warning("Failed to update Node %s status: %s", self.config.node_name, exc)

    async def _lease_loop(self) -> None:
        name = self.config.node_name
        while True:
            try:
                await self._renew_lease()
            except Exception as exc:
                log.warning("Failed to renew Lease %s/%s: %s", LEASE_NAMESPACE, name, exc)
            await asyncio.sleep(LEASE_RENEW_SECONDS)

    async def _renew_lease(self) -> None:
        name = self.config.node_name
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro_time(),
        }
        try:
            await self.client.patch(
                Lease, name, {"spec": spec}, namespace=LEASE_NAMESPACE, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            node = await self.client.get(Node, name)
            assert node.metadata is not None
            lease = cast(
                Lease,
                Lease.from_dict(
                    {
                        "metadata": {
                            "name": name,
                            "namespace": LEASE_NAMESPACE,
                            "ownerReferences": [
                                {
                                    "apiVersion": "v1",
                                    "kind": "Node",
                                    "name": name,
                                    "uid": node.metadata.uid,
                                }
                            ],
                        },
                        "spec": spec,
                    }
                ),
            )
            await self.client.create(lease)
            log.info("Created Lease %s/%s.", LEASE_NAMESPACE, name)

    # ------------------------------------------------------------------ pods

    async def _pod_loop(self) -> None:
        fields: dict[str, Any] = {"spec.nodeName": self.config.node_name}
        while True:
            try:
                listing = self.client.list(Pod, namespace="*", fields=fields)
                seen: set[str] = set()
                async for pod in listing:
                    data = pod.to_dict()
                    seen.add(data["metadata"]["uid"])
                    self._on_pod(data)
                for uid in set(self.workers) - seen:
                    await self._forget(uid)
                self._sweep_pod_dirs(seen)
                version = listing.resourceVersion
                log.info("Listed %d Pods on Node %s.", len(seen), self.config.node_name)
                async for event, obj in self.client.watch(
                    Pod, namespace="*", fields=fields, resource_version=version
                ):
                    data = obj.to_dict()
                    if event == "DELETED":
                        await self._forget(data["metadata"]["uid"])
                    else:
                        self._on_pod(data)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status.code == 410:
                    log.info("Re-listed Pods: the watch's resourceVersion expired.")
                    continue
                log.warning("Failed to watch Pods: %s", exc.status.message)
                await asyncio.sleep(RETRY_SECONDS)
            except Exception as exc:
                log.warning("Failed to watch Pods: %r", exc)
                await asyncio.sleep(RETRY_SECONDS)

    def _sweep_pod_dirs(self, live_uids: set[str]) -> None:
        """Remove directories of Pods deleted while the agent was not watching."""
        pods_dir = self.config.state_dir / "pods"
        if not pods_dir.is_dir():
            return
        for entry in pods_dir.iterdir():
            uid = entry.name.rsplit("_", 1)[-1]
            if uid not in live_uids and uid not in self.workers:
                shutil.rmtree(entry, ignore_errors=True)
                log.info("Removed the directory of deleted Pod uid %s.", uid)

    def _on_pod(self, pod: JsonDict) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        worker = PodWorker(self.ctx, pod)
        self.workers[uid] = worker
        log.info("Accepted Pod %s (uid %s).", worker.label, uid)
        worker.start()

    async def _forget(self, uid: str) -> None:
        worker = self.workers.pop(uid, None)
        if worker is not None:
            worker.gone = True
            await worker.shutdown()
            worker.remove_files()
            log.info("Forgot Pod %s: it was removed from the API.", worker.label)

    def find_log(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[Path, asyncio.Event] | None:
        """The log server's view of container logs (the newest Pod of that name wins)."""
        for worker in reversed(list(self.workers.values())):
            if worker.namespace == namespace and worker.name == pod:
                return worker.find_log(container, previous)
        return None

    # ------------------------------------------------------------------ events

    async def emit_event(
        self, pod: JsonDict, etype: str, reason: str, message: str, field_path: str | None
    ) -> None:
        """Record a Kubernetes Event about a Pod (best effort)."""
        meta = pod["metadata"]
        now = now_iso()
        involved: JsonDict = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if field_path:
            involved["fieldPath"] = field_path
        event = cast(
            Event,
            Event.from_dict(
                {
                    "metadata": {
                        "name": f"{meta['name']}.{secrets.token_hex(8)}",
                        "namespace": meta["namespace"],
                    },
                    "involvedObject": involved,
                    "reason": reason,
                    "message": message,
                    "type": etype,
                    "source": {"component": "kubelet", "host": self.config.node_name},
                    "reportingComponent": "kubelet",
                    "reportingInstance": self.config.node_name,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                }
            ),
        )
        try:
            await self.client.create(event)
        except Exception as exc:
            log.debug("Failed to record Event %s for Pod %s: %s", reason, meta["name"], exc)
