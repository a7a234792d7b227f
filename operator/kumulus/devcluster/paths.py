"""Where the dev cluster keeps its state and finds its binaries.

One place for the file layout so the launcher, the node and tests agree on it:
the state directory (certificates, kubeconfigs, logs, etcd data, pids), the binary
cache outside the repo (keyed by version, filled by ``devcluster/build-binaries.sh``)
and the pinned versions read from ``devcluster/versions.env``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The repository root (this file is operator/kumulus/devcluster/paths.py).
REPO_ROOT = Path(__file__).resolve().parents[3]
#: The folder with versions.env and build-binaries.sh.
DEVCLUSTER_DIR = REPO_ROOT / "devcluster"
VERSIONS_FILE = DEVCLUSTER_DIR / "versions.env"
BUILD_SCRIPT = DEVCLUSTER_DIR / "build-binaries.sh"
#: The log of a binary build that may be running right now (only named in messages).
BUILD_LOG = Path("/tmp/build.log")  # noqa: S108

#: The default state directory name, relative to the current directory.
DEFAULT_STATE_DIR = Path(".devcluster")
#: The one Node of the dev cluster.
NODE_NAME = "kumulus-dev"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LOOPBACK = "127.0.0.1"

K8S_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
)


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse KEY=VALUE lines, ignoring blank lines and comments."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip().strip("'\"")
    return versions


def cache_dir(name: str, override: str) -> Path:
    """``$<override>``, else ``$XDG_CACHE_HOME/kumulus/<name>`` (``~/.cache`` without XDG).

    The same default as the build scripts use for their caches.
    """
    explicit = os.environ.get(override)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kumulus" / name


def bin_cache_dir() -> Path:
    """The cache of built binaries (build-binaries.sh; KUMULUS_BIN_CACHE overrides)."""
    return cache_dir("bin", "KUMULUS_BIN_CACHE")


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the control plane binaries for the pinned versions."""

    kubernetes_version: str
    etcd_version: str
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kube_proxy: Path
    kubelet: Path
    coredns: Path

    def all(self) -> tuple[Path, ...]:
        return (
            self.etcd,
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kube_proxy,
            self.kubelet,
            self.coredns,
        )

    def missing(self) -> list[Path]:
        return [p for p in self.all() if not os.access(p, os.X_OK)]


def binaries(cache: Path | None = None, versions: dict[str, str] | None = None) -> Binaries:
    """Locate the binaries of the pinned versions in the cache (they may not exist yet)."""
    cache = cache or bin_cache_dir()
    versions = versions or read_versions()
    k8s_version = versions["KUBERNETES_VERSION"]
    etcd_version = versions["ETCD_VERSION"]
    k8s_dir = cache / f"kubernetes-{k8s_version}"
    return Binaries(
        kubernetes_version=k8s_version,
        etcd_version=etcd_version,
        etcd=cache / f"etcd-{etcd_version}" / "etcd",
        kube_apiserver=k8s_dir / "kube-apiserver",
        kube_controller_manager=k8s_dir / "kube-controller-manager",
        kube_scheduler=k8s_dir / "kube-scheduler",
        kube_proxy=k8s_dir / "kube-proxy",
        kubelet=k8s_dir / "kubelet",
        coredns=cache / f"coredns-{versions['COREDNS_VERSION']}" / "coredns",
    )


@dataclass(frozen=True)
class StateLayout:
    """The files inside one dev cluster's state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        return self.root / "node.kubeconfig"

    @property
    def controller_manager_kubeconfig(self) -> Path:
        return self.root / "controller-manager.kubeconfig"

    @property
    def scheduler_kubeconfig(self) -> Path:
        return self.root / "scheduler.kubeconfig"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        return self.root / "kube-proxy.kubeconfig"

    @property
    def coredns_kubeconfig(self) -> Path:
        return self.root / "coredns.kubeconfig"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"
