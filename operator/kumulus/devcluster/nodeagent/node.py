"""The Node object and its Lease: how the control plane learns that the dev node exists and lives.

Like a kubelet, the agent registers its Node, reports capacity, addresses, the kubelet endpoint
and a Ready condition through ``nodes/status``, and renews its Lease in ``kube-node-lease`` every
10 seconds so the node lifecycle controller keeps the node Ready (and untainted).
"""

from __future__ import annotations

import os
import platform
import uuid
from typing import Any

from kumulus.devcluster.nodeagent.status import NODE_IP

JsonDict = dict[str, Any]

KUBELET_VERSION = "v1.36.3"
MAX_PODS = 110
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10
STATUS_REPORT_SECONDS = 60

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def memory_kib() -> int:
    """Total memory from /proc/meminfo, in KiB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 4 * 1024 * 1024


def architecture() -> str:
    """The Go-style architecture name of this machine."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def _read_id(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return uuid.uuid4().hex


def resources() -> dict[str, str]:
    """Capacity (and allocatable: nothing is reserved on the dev node)."""
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib()}Ki",
        "pods": str(MAX_PODS),
        "ephemeral-storage": "100Gi",
    }


def node_object(node_name: str) -> JsonDict:
    """The Node to register."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": {
                "kubernetes.io/hostname": node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": architecture(),
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": architecture(),
                "kumulus.dev/dev-node": "true",
            },
        },
        "spec": {},
    }


def node_status(
    node_name: str, kubelet_port: int, now: str, previous: dict[str, JsonDict]
) -> JsonDict:
    """The Node's status: capacity, Ready and pressure conditions, addresses, nodeInfo."""

    def condition(ctype: str, status: str, reason: str, message: str) -> JsonDict:
        before = previous.get(ctype) or {}
        same = before.get("status") == status
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": (before.get("lastTransitionTime") if same else None) or now,
        }

    capacity = resources()
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready", "True", "KubeletReady", "kumulus node agent is posting ready status"
            ),
        ],
        "addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": _read_id("/etc/machine-id"),
            "systemUUID": _read_id("/sys/class/dmi/id/product_uuid"),
            "bootID": _read_id("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": platform.release(),
            "osImage": "kumulus dev node (processes)",
            "containerRuntimeVersion": "kumulus://0.1.0",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": architecture(),
        },
    }
