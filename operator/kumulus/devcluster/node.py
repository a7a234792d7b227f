"""The dev cluster's real node: containerd, the kubelet and kube-proxy, configured and cleaned up.

The node's three processes run inside the cluster's network namespace (see
:mod:`kumulus.devcluster.network`), in this machine's mount and PID namespaces, so the kubelet's
volume mounts are the ones containerd sees. Everything they write lives under one folder per
slot, :attr:`NodeLayout.root` (``/var/lib/kumulus/slot<n>``: short enough for the unix socket
paths below it, on disk for emptyDir volumes): containerd's root and state (images,
snapshots, the Pods' network namespaces thanks to ``netns_mounts_under_state_dir``), runc's
state, the kubelet's root and Pod logs, the CNI configuration and its address leases. The
Pods' cgroups sit under one cgroup of their own, ``/kumulus<slot>``, in every hierarchy.

That is what makes :func:`cleanup` complete: kill every process in that cgroup tree and in the
namespace (the kubelet, kube-proxy, containerd and its shims), unmount everything under the
node's folder, remove the cgroups, the shims' sockets and the namespace. It works the same for
a cluster whose processes were killed from outside (a session that ended), which is how a
stale slot is reclaimed.

Facts of this machine the configuration depends on (``shared/reference/real-node.md``):
cgroup v1, so the kubelet needs ``cgroupDriver: cgroupfs`` and ``failCgroupV1: false``; no
``CAP_SYS_RESOURCE``, so containerd must not raise a sandbox's ``oom_score_adj``
(``restrict_oom_score_adj``); nothing may be pulled, so the sandbox image is a local one.
containerd 1.6 is the only containerd in Debian 12, and kubelets from 1.37 on drop the
fallback it needs: the versions are pinned together in ``devcluster/versions.env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from kumulus.devcluster.network import NodeNetwork, netns_inode

CGROUP_FS = Path("/sys/fs/cgroup")
#: Where Debian's containernetworking-plugins put the CNI binaries.
CNI_BIN_DIR = Path("/usr/lib/cni")
#: The kubelet's and kube-proxy's health ports (inside the namespace, on the node's address).
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
#: CoreDNS answers on the node's address: port 53 for queries, this one for ``/ready``.
COREDNS_READY_PORT = 8181
CLUSTER_DOMAIN = "cluster.local"
#: Pods per node: the /26 Pod range has 61 addresses after the bridge's.
MAX_PODS = 60
#: Where containerd 1.6 puts its shims' sockets (not configurable in 1.6).
SHIM_SOCKET_DIR = Path("/run/containerd/s")
KILL_WAIT_SECONDS = 10.0
#: Each slot's node keeps its files in ``NODE_ROOT/slot<n>``.
NODE_ROOT = Path("/var/lib/kumulus")


@dataclass(frozen=True)
class NodeLayout:
    """The files of one node, all under ``root``."""

    root: Path

    @classmethod
    def of(cls, net: NodeNetwork) -> NodeLayout:
        return cls(NODE_ROOT / f"slot{net.slot}")

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd-state"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def corefile(self) -> Path:
        return self.root / "Corefile"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni-ipam"


def cgroup_name(net: NodeNetwork) -> str:
    """The cgroup under which the kubelet puts every Pod of this node."""
    return f"kumulus{net.slot}"


def _hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers, named ones and the v2 unified one)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            found.append(Path(parts[1]))
    return found


def create_cgroups(net: NodeNetwork) -> None:
    """Create the node's cgroup in every hierarchy (the kubelet requires its root to exist)."""
    name = cgroup_name(net)
    for root in _hierarchies():
        path = root / name
        path.mkdir(exist_ok=True)
        if (root / "cpuset.cpus").exists():
            # A new cpuset cgroup starts empty; a process cannot join it until it has CPUs.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (path / knob).read_text().strip():
                    (path / knob).write_text((root / knob).read_text())


def _cgroup_dirs(net: NodeNetwork) -> list[Path]:
    """Every cgroup folder of the node, deepest first."""
    dirs: list[Path] = []
    for root in _hierarchies():
        top = root / cgroup_name(net)
        if top.is_dir():
            dirs.extend(Path(d) for d, _, _ in os.walk(top))
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(net: NodeNetwork) -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs(net):
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
    return pids


def _netns_pids(net: NodeNetwork) -> set[int]:
    inode = netns_inode(net)
    if inode is None:
        return set()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    pids.add(int(entry.name))
    return pids - {os.getpid()}


def _shim_sockets(pids: Iterable[int]) -> set[Path]:
    """The socket files under :data:`SHIM_SOCKET_DIR` that these processes listen on."""
    paths: set[Path] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 8 and parts[7].startswith(str(SHIM_SOCKET_DIR) + "/"):
                    paths.add(Path(parts[7]))
    return {p for p in paths if p.parent == SHIM_SOCKET_DIR}


def kill_processes(get_pids: Callable[[], set[int]]) -> int:
    """SIGKILL what ``get_pids`` returns until it returns nothing (or time runs out)."""
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while time.monotonic() < deadline:
        pids = get_pids()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        killed |= pids
        time.sleep(0.1)
    return len(killed)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (from this process's mountinfo)."""
    prefix = str(root.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_all(root: Path) -> int:
    """Lazily unmount everything below ``root``; the number of mounts removed."""
    if not root.exists():
        return 0
    count = 0
    for _ in range(5):  # a lazy unmount can uncover a mount beneath it
        points = _mounts_under(root)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", "-l", point], capture_output=True).returncode == 0:
                count += 1
    return count


def cleanup(net: NodeNetwork, layout: NodeLayout) -> None:
    """Remove every trace of the node (processes, mounts, cgroups, shim sockets, files).

    Safe to call on a node that is half up, fully up or long dead; the network namespace
    itself is removed by :func:`kumulus.devcluster.network.teardown` afterwards.
    """
    # Pods first (so nothing restarts them), then what runs in the namespace: the kubelet,
    # kube-proxy, containerd and its shims, whose sockets are collected before they die.
    kill_processes(lambda: _cgroup_pids(net))
    sockets = _shim_sockets(_netns_pids(net))
    kill_processes(lambda: _netns_pids(net))
    kill_processes(lambda: _cgroup_pids(net))
    for path in sockets:
        with contextlib.suppress(OSError):
            path.unlink()
    unmount_all(layout.root)
    for d in _cgroup_dirs(net):
        with contextlib.suppress(OSError):
            d.rmdir()
    if layout.root.exists() and not _mounts_under(layout.root):
        shutil.rmtree(layout.root, ignore_errors=True)


# --------------------------------------------------------------------------- configuration


def write_containerd_config(layout: NodeLayout, net: NodeNetwork, sandbox_image: str) -> None:
    """containerd 1.6's configuration (version 2 format) for this node."""
    for d in (layout.containerd_root, layout.containerd_state, layout.runc_root):
        d.mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""\
# Written by kumulus.devcluster.node; one containerd per dev cluster.
version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.containerd_socket}.ttrpc"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # This machine lacks CAP_SYS_RESOURCE: runc cannot raise a sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  # The Pods' network namespaces live under the state folder, so cleanup finds them all.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{layout.runc_root}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
  max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.containerd_root}/opt"
"""
    layout.containerd_config.write_text(text)
    write_cni_config(layout, net)


def write_cni_config(layout: NodeLayout, net: NodeNetwork) -> None:
    """The Pods' network: the bridge plugin with host-local addresses from the slot's range."""
    layout.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    layout.cni_ipam_dir.mkdir(parents=True, exist_ok=True)
    conf = {
        "cniVersion": "1.0.0",
        "name": net.netns,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_cidr, "gateway": net.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_ipam_dir),
                },
            }
        ],
    }
    (layout.cni_conf_dir / "10-kumulus.conflist").write_text(json.dumps(conf, indent=2) + "\n")


def write_kubelet_config(
    layout: NodeLayout, net: NodeNetwork, *, tls_cert: Path, tls_key: Path, client_ca: Path
) -> None:
    """The KubeletConfiguration: cgroupfs on cgroup v1, no DNS of this machine, no pulls."""
    layout.kubelet_root.mkdir(parents=True, exist_ok=True)
    layout.pod_logs.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": net.node_ip,
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupRoot": "/" + cgroup_name(net),
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        "podLogsDir": str(layout.pod_logs),
        # Pods get the cluster's DNS (CoreDNS on the node's address) and no nameserver of this
        # machine: names outside the cluster do not resolve, so nothing could leave it.
        "resolvConf": "",
        "clusterDNS": [net.node_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "maxPods": MAX_PODS,
        "serializeImagePulls": False,
        # Images are imported, never pulled: never collect them, and do not evict on a
        # busy development disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "registerNode": True,
        "nodeStatusUpdateFrequency": "10s",
        "protectKernelDefaults": False,
        "localStorageCapacityIsolation": True,
    }
    layout.kubelet_config.write_text(yaml.safe_dump(config, sort_keys=False))


def write_kube_proxy_config(
    layout: NodeLayout, net: NodeNetwork, *, kubeconfig: Path, node_name: str
) -> None:
    """kube-proxy in iptables mode, inside the namespace; it leaves conntrack sysctls alone."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": net.pod_cidr,
        "hostnameOverride": node_name,
        "bindAddress": net.node_ip,
        "healthzBindAddress": f"{net.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"{net.node_ip}:{KUBE_PROXY_METRICS_PORT}",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    layout.kube_proxy_config.write_text(yaml.safe_dump(config, sort_keys=False))


def write_corefile(layout: NodeLayout, net: NodeNetwork, *, kubeconfig: Path) -> None:
    """CoreDNS: Services and Pods of the cluster domain; every other name fails at once.

    There is no ``forward`` plugin on purpose: a Pod's query for any other name is answered
    with an error by the node itself and never leaves the machine.
    """
    zones = f"{CLUSTER_DOMAIN} in-addr.arpa ip6.arpa"
    text = f"""\
# Written by kumulus.devcluster.node: the dev cluster's DNS, on the node's address.
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {net.node_ip}
    errors
    ready {net.node_ip}:{COREDNS_READY_PORT}
    kubernetes {zones} {{
        kubeconfig {kubeconfig} kumulus-dev
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {net.node_ip}
    errors
}}
"""
    layout.corefile.write_text(text)


def containerd_ready(layout: NodeLayout) -> bool:
    """Whether containerd answers on its socket."""
    path = str(layout.containerd_socket)
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(path) == 0
