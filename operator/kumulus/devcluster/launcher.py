"""Starts, checks and stops the embedded dev cluster: a real control plane and a real node.

This machine has no container engine, so kind or k3d cannot run. Instead the launcher runs
the real upstream binaries: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(built from Go modules by ``devcluster/build-binaries.sh``) on this machine, and the node
(containerd and runc from Debian, the kubelet and kube-proxy built like the control plane)
inside the cluster's own network namespace (:mod:`kumulus.devcluster.network`,
:mod:`kumulus.devcluster.node`). Every process is detached in its own session. Everything a
run needs (certificates, kubeconfigs, etcd data, the node's files, logs, pids, ports and the
network slot in ``cluster.json``) lives in one state directory, so ``down`` can stop exactly
what ``up`` started and ``up`` can reuse a healthy cluster. The images the node runs are
built by ``make images`` (:mod:`kumulus.devcluster.images`) and imported into its containerd.

Dev-only trade-offs, on purpose:

* etcd runs with ``--unsafe-no-fsync`` and plain HTTP on loopback: a power cut may lose
  the last writes, which is fine for a throwaway cluster and makes writes much faster
  on slow disks.
* The API server listens on the host end of the node's veth (a documentation-range address
  that exists only on this machine), not on every interface: Pods reach it through the
  ``kubernetes`` Service (kube-proxy) like on any cluster, and nothing outside can.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kumulus.devcluster import images, network, node, pki
from kumulus.devcluster.network import NodeNetwork
from kumulus.devcluster.node import NodeLayout
from kumulus.devcluster.paths import (
    BUILD_LOG,
    BUILD_SCRIPT,
    LOOPBACK,
    NODE_NAME,
    SERVICE_ACCOUNT_ISSUER,
    Binaries,
    StateLayout,
    binaries,
)

#: Written into every state directory the launcher creates; ``down`` and a fresh ``up``
#: only ever delete a directory that carries it.
MARKER = ".kumulus-devcluster"
#: Components in start order; they are stopped in reverse order.
ORDER = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
)
#: The components that run inside the node's network namespace.
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns")
#: Stop stages: the consumers first, so nothing reconnects to a dying apiserver. The Pods and
#: containerd's shims are killed by :func:`kumulus.devcluster.node.cleanup` after these.
STOP_STAGES = (
    ("kubelet", "kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"),
    ("containerd",),
    ("kube-apiserver",),
    ("etcd",),
)
STOP_GRACE_SECONDS = 15.0
POLL_SECONDS = 0.25
LOG_TAIL_LINES = 40
BUILD_WAIT_SECONDS = 3600.0


class LaunchError(Exception):
    """A component failed to start or become ready; ``component`` names whose log to show."""

    def __init__(self, message: str, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


# --------------------------------------------------------------------------- processes


def _proc_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks (guards against pid reuse); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass
class Component:
    """One running process of the dev cluster, as recorded in ``cluster.json``."""

    name: str
    pid: int
    start_ticks: int
    port: int
    log: str
    argv: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return _proc_start_ticks(self.pid) == self.start_ticks


@dataclass
class ClusterRecord:
    """The contents of ``cluster.json``."""

    state_dir: str
    apiserver_url: str
    kubernetes_version: str
    ports: dict[str, int]
    slot: int
    components: dict[str, Component] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def network(self) -> NodeNetwork:
        return NodeNetwork(self.slot)

    def save(self, path: Path) -> None:
        data = asdict(self)
        tmp = path.with_suffix(".tmp")
        pki.write_private(tmp, (json.dumps(data, indent=2) + "\n").encode())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterRecord:
        data = json.loads(path.read_text())
        comps = {k: Component(**v) for k, v in data.pop("components", {}).items()}
        return cls(**data, components=comps)


def _free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Distinct free ports on ``host`` (all sockets held open until every port is picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _spawn(
    name: str, argv: Sequence[str], log: Path, port: int, cwd: Path
) -> tuple[Component, subprocess.Popen[bytes]]:
    """Start a detached process in its own session, output appended to its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
    ticks = _proc_start_ticks(proc.pid) or 0
    comp = Component(
        name=name, pid=proc.pid, start_ticks=ticks, port=port, log=str(log), argv=list(argv)
    )
    print(f"Started {name} (pid {proc.pid})" + (f" on port {port}." if port else "."))
    return comp, proc


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    return _proc_start_ticks(pid) is None


def stop_components(components: dict[str, Component], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each stage's process groups, wait up to ``grace``, then SIGKILL the rest."""
    for stage in STOP_STAGES:
        targets = [components[n] for n in stage if n in components and components[n].alive()]
        for comp in targets:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        pending = list(targets)
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if not _gone(c.pid)]
            if pending:
                time.sleep(POLL_SECONDS)
        for comp in pending:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.pid, signal.SIGKILL)
            print(f"Killed {comp.name} (pid {comp.pid}) after {grace:.0f} s without exiting.")
        for comp in targets:
            deadline = time.monotonic() + 5
            while not _gone(comp.pid) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            # Leftover members of the group (children that ignored SIGTERM) go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(comp.pid, signal.SIGKILL)
            print(f"Stopped {comp.name} (pid {comp.pid}).")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- health checks


@dataclass(frozen=True)
class Probe:
    """HTTPS requests to the control plane, authenticated as the cluster admin."""

    layout: StateLayout
    #: Where the API server listens (the host end of the node's veth).
    apiserver_host: str = LOOPBACK

    @property
    def context(self) -> ssl.SSLContext:
        files = pki.PkiFiles(self.layout.pki)
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        ctx.load_cert_chain(str(files.cert("admin")), str(files.key("admin")))
        return ctx

    def get(
        self, port: int, path: str, timeout: float = 3.0, host: str = LOOPBACK
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(host, port, context=self.context, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def create(self, port: int, path: str, body: dict[str, Any]) -> None:
        """POST an object to the API server; one that exists already is fine."""
        conn = http.client.HTTPSConnection(
            self.apiserver_host, port, context=self.context, timeout=10
        )
        try:
            conn.request(
                "POST", path, json.dumps(body), headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            text = resp.read()
        finally:
            conn.close()
        if resp.status not in (200, 201, 409):
            raise LaunchError(f"POST {path} answered {resp.status}: {text[:300]!r}")

    def ok(self, port: int, path: str, host: str = LOOPBACK) -> bool:
        try:
            status, _ = self.get(port, path, host=host)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def json(self, port: int, path: str) -> dict[str, Any] | None:
        try:
            status, body = self.get(port, path, host=self.apiserver_host)
        except (OSError, http.client.HTTPException):
            return None
        if status != 200:
            return None
        data: dict[str, Any] = json.loads(body)
        return data

    def node_ready(self, apiserver_port: int) -> bool:
        node = self.json(apiserver_port, f"/api/v1/nodes/{NODE_NAME}")
        if not node:
            return False
        conditions = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def default_service_account(self, apiserver_port: int) -> bool:
        path = "/api/v1/namespaces/default/serviceaccounts/default"
        return self.json(apiserver_port, path) is not None


def http_ok(host: str, port: int, path: str) -> bool:
    """Whether a plain-HTTP health endpoint answers 200."""
    conn = http.client.HTTPConnection(host, port, timeout=3)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return resp.status == 200


def etcd_healthy(port: int) -> bool:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=3)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    if resp.status != 200:
        return False
    return bool(json.loads(body).get("health") == "true")


@dataclass(frozen=True)
class Check:
    """A readiness condition and the component whose log explains its failure."""

    description: str
    component: str
    test: Callable[[], bool]


def component_health(record: ClusterRecord, probe: Probe) -> dict[str, bool]:
    """Whether each component is alive and answers its health endpoint."""
    ports = record.ports
    net = record.network
    node_layout = NodeLayout.of(net)
    checks: dict[str, Callable[[], bool]] = {
        "etcd": lambda: etcd_healthy(ports["etcd-client"]),
        "kube-apiserver": lambda: probe.ok(ports["kube-apiserver"], "/readyz", net.host_ip),
        "kube-controller-manager": lambda: probe.ok(ports["kube-controller-manager"], "/healthz"),
        "kube-scheduler": lambda: probe.ok(ports["kube-scheduler"], "/healthz"),
        "containerd": lambda: node.containerd_ready(node_layout),
        "kubelet": lambda: http_ok(net.node_ip, node.KUBELET_HEALTHZ_PORT, "/healthz"),
        "kube-proxy": lambda: http_ok(net.node_ip, node.KUBE_PROXY_HEALTHZ_PORT, "/healthz"),
        "coredns": lambda: http_ok(net.node_ip, node.COREDNS_READY_PORT, "/ready"),
    }
    health = {}
    for name in ORDER:
        comp = record.components.get(name)
        health[name] = bool(comp and comp.alive() and checks[name]())
    return health


# --------------------------------------------------------------------------- binaries


def _build_running() -> bool:
    """Whether some process is running build-binaries.sh right now."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"build-binaries.sh" in cmdline:
            return True
    return False


def ensure_binaries(bins: Binaries) -> None:
    """Wait for a running build, else build what is missing with build-binaries.sh."""
    if not bins.missing():
        return
    if _build_running():
        print(f"Waiting for the running binary build (progress in {BUILD_LOG}) ...")
        deadline = time.monotonic() + BUILD_WAIT_SECONDS
        while bins.missing() and _build_running() and time.monotonic() < deadline:
            time.sleep(5)
        if not bins.missing():
            return
    print(f"Building missing binaries with {BUILD_SCRIPT} ...")
    subprocess.run([str(BUILD_SCRIPT)], check=True)
    missing = bins.missing()
    if missing:
        raise LaunchError(f"Binaries still missing after the build: {', '.join(map(str, missing))}")


# --------------------------------------------------------------------------- the launcher


@dataclass
class Launcher:
    """Brings one dev cluster up in ``state_dir`` and tears it down again."""

    state_dir: Path
    timeout: float = 300.0
    bins: Binaries | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _deadline: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.expanduser().resolve()
        self.layout = StateLayout(self.state_dir)
        self.probe = Probe(self.layout)

    # -- state

    def record(self) -> ClusterRecord | None:
        try:
            record = ClusterRecord.load(self.layout.cluster_file)
        except (OSError, ValueError, TypeError):
            return None
        self.probe = Probe(self.layout, record.network.host_ip)
        return record

    def healthy(self, record: ClusterRecord) -> bool:
        return all(component_health(record, self.probe).values())

    def _remove_state_dir(self) -> None:
        if not self.state_dir.exists():
            return
        if not (self.state_dir / MARKER).exists():
            if any(self.state_dir.iterdir()):
                raise LaunchError(
                    f"{self.state_dir} exists and is not a dev cluster state directory; "
                    "refusing to delete it."
                )
            return
        shutil.rmtree(self.state_dir)

    def _teardown(self, record: ClusterRecord) -> None:
        """Stop the processes, then remove the node's Pods, mounts, cgroups and network."""
        stop_components(record.components)
        net = record.network
        if network.owner_state_dir(net) in (None, self.state_dir):
            node.cleanup(net, NodeLayout.of(net))
            network.teardown(net)

    # -- commands

    def down(self) -> bool:
        """Stop everything recorded in the state dir and remove it; False if nothing ran."""
        record = self.record()
        if record:
            self._teardown(record)
        existed = self.state_dir.exists()
        self._remove_state_dir()
        if existed:
            print(f"Removed {self.state_dir}.")
        return record is not None

    # -- one component (fault tests: a crashed kubelet, a restarted API server)

    def _component(self, name: str) -> tuple[ClusterRecord, Component]:
        record = self.record()
        if record is None:
            raise LaunchError(f"No dev cluster in {self.state_dir}.")
        comp = record.components.get(name)
        if comp is None:
            raise LaunchError(f"The dev cluster in {self.state_dir} has no component {name}.")
        return record, comp

    def stop_component(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one component's process group and wait until it is gone (SIGKILL after grace).

        SIGKILL is a crash: a killed kubelet leaves its containers running, and the next
        kubelet finds them through containerd, as on any node.
        """
        _, comp = self._component(name)
        if not comp.alive():
            print(f"{name} (pid {comp.pid}) was not running.")
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(comp.pid, sig)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while not _gone(comp.pid) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS / 5)
        if not _gone(comp.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(comp.pid, signal.SIGKILL)
            while not _gone(comp.pid):
                time.sleep(POLL_SECONDS / 5)
        print(f"Stopped {name} (pid {comp.pid}) with {signal.Signals(sig).name}.")

    def start_component(self, name: str) -> None:
        """Start a stopped component with its recorded command line and port; wait until healthy."""
        record, comp = self._component(name)
        if comp.alive():
            raise LaunchError(f"{name} is already running (pid {comp.pid}).", name)
        self._deadline = time.monotonic() + self.timeout
        self._start(record, name, comp.argv, comp.port)
        self._wait(
            [Check(f"{name} healthy", name, lambda: component_health(record, self.probe)[name])]
        )

    def restart_component(
        self, name: str, sig: int = signal.SIGKILL, down_seconds: float = 0.0
    ) -> None:
        """:meth:`stop_component`, wait ``down_seconds``, :meth:`start_component`."""
        self.stop_component(name, sig)
        time.sleep(down_seconds)
        self.start_component(name)

    def _slot_in_use(self, net: NodeNetwork, owner: Path | None) -> bool:
        """Whether a claimed slot belongs to a cluster whose node still runs."""
        if owner is None or owner == self.state_dir:
            return False
        other = Launcher(owner).record()
        if other is None or other.slot != net.slot:
            return False
        containerd = other.components.get("containerd")
        return bool(containerd and containerd.alive())

    def _reclaim(self, net: NodeNetwork, owner: Path | None) -> None:
        """Clean a stale slot: the leftovers of a cluster whose processes were killed."""
        print(f"Cleaning stale dev cluster slot {net.slot} (was {owner or 'unowned'}).")
        node.cleanup(net, NodeLayout.of(net))
        network.teardown(net)

    def up(self) -> ClusterRecord:
        """Reuse a healthy cluster or start a fresh one; raise LaunchError on failure."""
        started = time.monotonic()
        record = self.record()
        if record is not None:
            if self.healthy(record):
                print("Reused the running dev cluster.")
                return record
            print(f"Found a stale dev cluster in {self.state_dir}; stopping its leftovers.")
            self._teardown(record)
        self._remove_state_dir()

        bins = self.bins or binaries()
        ensure_binaries(bins)
        archives = images.ensure_images()
        cold_start = time.monotonic()
        self._deadline = cold_start + self.timeout
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.state_dir / MARKER).write_text("Created by python -m kumulus.devcluster up.\n")
        try:
            net = network.claim(self.state_dir, self._slot_in_use, self._reclaim)
            network.setup(net)
        except network.NetworkError as exc:
            raise LaunchError(str(exc)) from exc
        node.create_cgroups(net)
        node_layout = NodeLayout.of(net)
        files = pki.generate(
            self.layout.pki,
            apiserver_ips=(net.host_ip, net.kubernetes_service_ip),
            node_ip=net.node_ip,
        )

        names = ("etcd-client", "etcd-peer", "kube-controller-manager", "kube-scheduler")
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        ports["kube-apiserver"] = _free_ports(1, net.host_ip)[0]
        ports["kubelet"] = node.KUBELET_PORT
        server = f"https://{net.host_ip}:{ports['kube-apiserver']}"
        record = ClusterRecord(
            state_dir=str(self.state_dir),
            apiserver_url=server,
            kubernetes_version=bins.kubernetes_version,
            ports=ports,
            slot=net.slot,
            started_at=time.time(),
        )
        self.probe = Probe(self.layout, net.host_ip)
        kubeconfigs = {
            "controller-manager": (
                self.layout.controller_manager_kubeconfig,
                "system:kube-controller-manager",
            ),
            "scheduler": (self.layout.scheduler_kubeconfig, "system:kube-scheduler"),
            "node": (self.layout.node_kubeconfig, f"system:node:{NODE_NAME}"),
            "kube-proxy": (self.layout.kube_proxy_kubeconfig, "system:kube-proxy"),
            "coredns": (self.layout.coredns_kubeconfig, pki.COREDNS_USER),
        }
        for stem, (path, user) in kubeconfigs.items():
            pki.write_kubeconfig(path, server=server, files=files, stem=stem, user=user)
        node.write_containerd_config(node_layout, net, images.PAUSE_IMAGE)
        node.write_kubelet_config(
            node_layout,
            net,
            tls_cert=files.cert("kubelet"),
            tls_key=files.key("kubelet"),
            client_ca=files.ca_cert,
        )
        node.write_kube_proxy_config(
            node_layout,
            net,
            kubeconfig=self.layout.kube_proxy_kubeconfig,
            node_name=NODE_NAME,
        )
        node.write_corefile(node_layout, net, kubeconfig=self.layout.coredns_kubeconfig)

        try:
            self._start_control_plane(record, bins, files)
            self._start_node(record, bins, archives)
        except BaseException:
            # Leave the logs for the post-mortem, but no processes, mounts or network behind.
            self._teardown(record)
            raise
        pki.write_kubeconfig(
            self.layout.admin_kubeconfig,
            server=server,
            files=files,
            stem="admin",
            user="kubernetes-admin",
        )
        took = time.monotonic() - started
        cold = time.monotonic() - cold_start
        print(f"Dev cluster is up in {took:.1f} s (cluster start {cold:.1f} s); {server}.")
        print(f"Node {NODE_NAME} is {net.node_ip} in network namespace {net.netns}.")
        print(f"Logs are in {self.layout.logs}.")
        print(f"export KUBECONFIG={self.layout.admin_kubeconfig}")
        return record

    def _start_control_plane(
        self, record: ClusterRecord, bins: Binaries, files: pki.PkiFiles
    ) -> None:
        ports = record.ports
        net = record.network
        self._start(record, "etcd", self._etcd_argv(bins, ports), ports["etcd-client"])
        self._wait([Check("etcd /health", "etcd", lambda: etcd_healthy(ports["etcd-client"]))])
        api = ports["kube-apiserver"]
        self._start(record, "kube-apiserver", self._apiserver_argv(bins, files, record), api)
        self._wait(
            [
                Check(
                    "kube-apiserver /readyz",
                    "kube-apiserver",
                    lambda: self.probe.ok(api, "/readyz", net.host_ip),
                )
            ]
        )
        kcm, sched = ports["kube-controller-manager"], ports["kube-scheduler"]
        self._start(record, "kube-controller-manager", self._kcm_argv(bins, files, record), kcm)
        self._start(record, "kube-scheduler", self._scheduler_argv(bins, files, ports), sched)
        self._grant_coredns(api)

    def _grant_coredns(self, api: int) -> None:
        """Let the cluster DNS list and watch what it answers from (as kubeadm's RBAC does)."""
        name = "kumulus-dev:coredns"
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        watch = ["list", "watch"]
        self.probe.create(
            api,
            f"{rbac}/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": watch,
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": watch,
                    },
                ],
            },
        )
        self.probe.create(
            api,
            f"{rbac}/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": pki.COREDNS_USER,
                    }
                ],
            },
        )

    def _start_node(
        self, record: ClusterRecord, bins: Binaries, archives: list[images.ImageArchive]
    ) -> None:
        net = record.network
        api = record.ports["kube-apiserver"]
        nodecfg = NodeLayout.of(net)
        self._start(
            record,
            "containerd",
            [*net.nsenter(), "containerd", f"--config={nodecfg.containerd_config}"],
            0,
        )
        self._wait(
            [Check("containerd socket", "containerd", lambda: node.containerd_ready(nodecfg))]
        )
        images.import_images(str(nodecfg.containerd_socket), archives)
        self._start(record, "kubelet", self._kubelet_argv(bins, net), node.KUBELET_PORT)
        self._start(
            record,
            "kube-proxy",
            [*net.nsenter(), str(bins.kube_proxy), f"--config={nodecfg.kube_proxy_config}"],
            node.KUBE_PROXY_HEALTHZ_PORT,
        )
        self._start(
            record,
            "coredns",
            [*net.nsenter(), str(bins.coredns), "-conf", str(nodecfg.corefile)],
            53,
        )
        kcm, sched = record.ports["kube-controller-manager"], record.ports["kube-scheduler"]
        self._wait(
            [
                Check(
                    "kube-controller-manager /healthz",
                    "kube-controller-manager",
                    lambda: self.probe.ok(kcm, "/healthz"),
                ),
                Check(
                    "kube-scheduler /healthz",
                    "kube-scheduler",
                    lambda: self.probe.ok(sched, "/healthz"),
                ),
                Check(f"Node {NODE_NAME} Ready", "kubelet", lambda: self.probe.node_ready(api)),
                Check(
                    "kube-proxy /healthz",
                    "kube-proxy",
                    lambda: http_ok(net.node_ip, node.KUBE_PROXY_HEALTHZ_PORT, "/healthz"),
                ),
                Check(
                    "coredns /ready",
                    "coredns",
                    lambda: http_ok(net.node_ip, node.COREDNS_READY_PORT, "/ready"),
                ),
                Check(
                    "ServiceAccount default/default",
                    "kube-controller-manager",
                    lambda: self.probe.default_service_account(api),
                ),
            ],
        )

    # -- helpers

    def _start(self, record: ClusterRecord, name: str, argv: Sequence[str], port: int) -> None:
        comp, proc = _spawn(name, argv, self.layout.log(name), port, self.state_dir)
        self._procs[name] = proc
        record.components[name] = comp
        record.save(self.layout.cluster_file)

    def _wait(self, checks: list[Check]) -> None:
        """Poll the checks until all pass; fail fast when a started process exits."""
        start = time.monotonic()
        pending = list(checks)
        while True:
            for name, proc in self._procs.items():
                code = proc.poll()
                if code is not None:
                    raise LaunchError(f"{name} exited with code {code}.", name)
            still = []
            for check in pending:
                if check.test():
                    print(f"Saw {check.description} after {time.monotonic() - start:.1f} s.")
                else:
                    still.append(check)
            pending = still
            if not pending:
                return
            if time.monotonic() > self._deadline:
                raise LaunchError(
                    f"Timed out after {self.timeout:.0f} s waiting for "
                    + ", ".join(c.description for c in pending)
                    + ".",
                    pending[0].component,
                )
            time.sleep(POLL_SECONDS)

    def _etcd_argv(self, bins: Binaries, ports: dict[str, int]) -> list[str]:
        client = f"http://{LOOPBACK}:{ports['etcd-client']}"
        peer = f"http://{LOOPBACK}:{ports['etcd-peer']}"
        return [
            str(bins.etcd),
            "--name=kumulus-dev",
            f"--data-dir={self.layout.etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kumulus-dev={peer}",
            "--initial-cluster-state=new",
            # Dev speed: no fsync of the WAL; a crash may lose recent writes (see module doc).
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_argv(
        self, bins: Binaries, files: pki.PkiFiles, record: ClusterRecord
    ) -> list[str]:
        net = record.network
        return [
            str(bins.kube_apiserver),
            f"--bind-address={net.host_ip}",
            f"--advertise-address={net.host_ip}",
            f"--secure-port={record.ports['kube-apiserver']}",
            f"--etcd-servers=http://{LOOPBACK}:{record.ports['etcd-client']}",
            f"--service-cluster-ip-range={net.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--client-ca-file={files.ca_cert}",
            f"--tls-cert-file={files.cert('apiserver')}",
            f"--tls-private-key-file={files.key('apiserver')}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={files.sa_pub}",
            f"--service-account-signing-key-file={files.sa_key}",
            f"--kubelet-client-certificate={files.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={files.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={files.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--requestheader-client-ca-file={files.cert('front-proxy-ca')}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={files.cert('front-proxy-client')}",
            f"--proxy-client-key-file={files.key('front-proxy-client')}",
            "--profiling=false",
        ]

    def _kcm_argv(self, bins: Binaries, files: pki.PkiFiles, record: ClusterRecord) -> list[str]:
        kubeconfig = self.layout.controller_manager_kubeconfig
        return [
            str(bins.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={record.ports['kube-controller-manager']}",
            f"--tls-cert-file={files.cert('controller-manager-serving')}",
            f"--tls-private-key-file={files.key('controller-manager-serving')}",
            f"--client-ca-file={files.ca_cert}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={files.sa_key}",
            f"--root-ca-file={files.ca_cert}",
            "--controllers=*",
            f"--cluster-signing-cert-file={files.ca_cert}",
            f"--cluster-signing-key-file={files.ca_key}",
            f"--service-cluster-ip-range={record.network.service_cidr}",
            "--profiling=false",
        ]

    def _scheduler_argv(
        self, bins: Binaries, files: pki.PkiFiles, ports: dict[str, int]
    ) -> list[str]:
        kubeconfig = self.layout.scheduler_kubeconfig
        return [
            str(bins.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={ports['kube-scheduler']}",
            f"--tls-cert-file={files.cert('scheduler-serving')}",
            f"--tls-private-key-file={files.key('scheduler-serving')}",
            f"--client-ca-file={files.ca_cert}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _kubelet_argv(self, bins: Binaries, net: NodeNetwork) -> list[str]:
        return [
            *net.nsenter(),
            str(bins.kubelet),
            f"--config={NodeLayout.of(net).kubelet_config}",
            f"--kubeconfig={self.layout.node_kubeconfig}",
            f"--root-dir={NodeLayout.of(net).kubelet_root}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={net.node_ip}",
        ]


# --------------------------------------------------------------------------- CLI helpers


def status_lines(launcher: Launcher) -> Iterator[str]:
    """Human-readable status; the caller decides the exit code from ``launcher.healthy``."""
    record = launcher.record()
    if record is None:
        yield f"No dev cluster in {launcher.state_dir}."
        return
    health = component_health(record, launcher.probe)
    yield (
        f"Dev cluster in {record.state_dir}: {record.apiserver_url}"
        f" (Kubernetes {record.kubernetes_version})"
    )
    yield f"{'COMPONENT':<24} {'PID':>8} {'PORT':>6}  HEALTH"
    for name in ORDER:
        comp = record.components.get(name)
        if comp is None:
            yield f"{name:<24} {'-':>8} {'-':>6}  not started"
            continue
        state = "healthy" if health[name] else ("unhealthy" if comp.alive() else "not running")
        yield f"{name:<24} {comp.pid:>8} {comp.port:>6}  {state}"
