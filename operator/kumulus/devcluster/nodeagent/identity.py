"""Pod identity the kubelet way: a bound ServiceAccount token, handed over as a kubeconfig.

A kubelet projects a short-lived token bound to the Pod into the container. The dev node has no
volumes, so it writes a kubeconfig (API server URL, cluster CA, token) into the Pod's private
directory and passes ``KUBECONFIG``; the process therefore has exactly its ServiceAccount's
permissions, never the node's. The token is refreshed at ~80% of its lifetime.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOKEN_EXPIRATION_SECONDS = 3600
REFRESH_FRACTION = 0.8


@dataclass(frozen=True)
class ClusterEndpoint:
    """Where the API server is and which CA signed its serving certificate."""

    server: str
    ca_pem: bytes


def read_cluster_endpoint(kubeconfig_path: Path) -> ClusterEndpoint:
    """The current context's server URL and CA from the node's kubeconfig."""
    config: dict[str, Any] = yaml.safe_load(kubeconfig_path.read_text()) or {}
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
    current = config.get("current-context")
    cluster_name = (contexts.get(current) or {}).get("cluster") if current else None
    clusters = {c["name"]: c.get("cluster") or {} for c in config.get("clusters") or []}
    if cluster_name not in clusters:
        if not clusters:
            raise ValueError(f"{kubeconfig_path} names no cluster")
        cluster_name = next(iter(clusters))
    cluster = clusters[cluster_name]
    if cluster.get("certificate-authority-data"):
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        ca_path = Path(cluster["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = kubeconfig_path.parent / ca_path
        ca_pem = ca_path.read_bytes()
    else:
        raise ValueError(f"{kubeconfig_path} has no cluster CA")
    return ClusterEndpoint(server=str(cluster["server"]), ca_pem=ca_pem)


def pod_kubeconfig(endpoint: ClusterEndpoint, token: str, namespace: str) -> str:
    """A kubeconfig that authenticates with a ServiceAccount token."""
    config: Mapping[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kumulus-dev",
                "cluster": {
                    "server": endpoint.server,
                    "certificate-authority-data": base64.b64encode(endpoint.ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "pod", "user": {"token": token}}],
        "contexts": [
            {
                "name": "pod",
                "context": {"cluster": "kumulus-dev", "user": "pod", "namespace": namespace},
            }
        ],
        "current-context": "pod",
    }
    return yaml.safe_dump(dict(config), sort_keys=False)


def write_private(path: Path, text: str) -> None:
    """Atomically write a file only its owner can read (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def wants_token(pod: Mapping[str, Any], service_account: Mapping[str, Any] | None) -> bool:
    """Whether the Pod gets a ServiceAccount token (the pod's flag wins over the SA's).

    The ServiceAccount admission plugin already encodes the decision as a projected
    ``serviceAccountToken`` volume; without one, the ServiceAccount's own flag decides.
    """
    spec = pod.get("spec") or {}
    if spec.get("automountServiceAccountToken") is False:
        return False
    if spec.get("automountServiceAccountToken") is True:
        return True
    for volume in spec.get("volumes") or []:
        for source in (volume.get("projected") or {}).get("sources") or []:
            if source.get("serviceAccountToken") is not None:
                return True
    if service_account is None:
        return False
    return service_account.get("automountServiceAccountToken") is not False
