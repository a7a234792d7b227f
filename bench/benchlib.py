"""Shared plumbing of the benchmarks: a cluster and an operator to measure, clocks, results.

Every benchmark in ``bench/`` is one command that measures Kumulus beside a baseline in the same
run (never a timed test). This module keeps them short and alike:

* :class:`BenchEnv` gives a benchmark its cluster and operator: by default a fresh dev cluster in
  ``/tmp/kdc-bench-<name>`` (``python -m kumulus.devcluster up``) with the CRDs, the RBAC and the
  operator from this checkout (:func:`kumulus.devcluster.dev.install_kumulus` and
  :func:`~kumulus.devcluster.dev.start_operator`); with ``--kubeconfig`` an existing cluster, still
  with the benchmark's own operator process (so its CPU and memory can be read) unless
  ``--external-operator`` says one already runs there.
* :class:`Milestones` records when each object was first seen in each state, from watches.
* :class:`CpuMeter` and :class:`ApiMeter` say what a run cost: CPU seconds of the operator, of
  every process of the dev cluster's real node and control plane (``cluster.json`` names
  them), of the Pods' containers (the node's cgroup) and of containerd's shims; API requests.
* :func:`bare_job` and :func:`bare_pod` are the baselines: the runner image running the bare
  runner command (:data:`BARE_RUNNER_COMMAND`) through a Job, or as a Pod with no controller.
* :func:`summary` and :func:`pct` turn samples into the figures the benchmarks print.
* :func:`save_results` writes ``bench/results/<name>.json`` (git-ignored) with the machine's
  description, so ``docs/performance.md`` can quote figures with their conditions.

Run the benchmarks from the repository root with the virtualenv's Python, e.g.
``.venv/bin/python bench/throughput.py --sizes 100,500``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType  # noqa: F401 - re-exported for the benchmarks

from kumulus.devcluster.dev import DevPaths, install_kumulus, start_operator, stop_operator
from kumulus.devcluster.launcher import ORDER
from kumulus.devcluster.network import NodeNetwork
from kumulus.devcluster.node import MAX_PODS, NodeLayout
from kumulus.domain.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PYTHON = sys.executable

# Generic (dict-backed) resources: the benchmark client must stay cheap next to what it measures,
# so objects are never parsed into lightkube's typed models.
Execution: Any = create_namespaced_resource("kumulus.dev", "v1alpha1", "Execution", "executions")
Flow: Any = create_namespaced_resource("kumulus.dev", "v1alpha1", "Flow", "flows")
Job: Any = create_namespaced_resource("batch", "v1", "Job", "jobs")
Pod: Any = create_namespaced_resource("", "v1", "Pod", "pods")

TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
TRIVIAL_SCRIPT = "def handler(system, this):\n    return this.success('ok')\n"
#: The image of every benchmark Pod: the runner image an Execution's Pod runs (the operator's
#: default, ``make images`` builds it and imports it into the dev node; never pulled).
RUNNER_IMAGE = Settings().runner_image
#: Pods the dev node runs at once (the kubelet's ``maxPods``: its /26 Pod range); a burst
#: above it waits in the scheduler, for Executions, Jobs and bare Pods alike.
NODE_MAX_PODS = MAX_PODS
# What the baseline Jobs and bare Pods run in the runner image: the same interpreter (Debian's
# python3 in the image's venv /opt/kumulus, first on its PATH) loading the same runner code as
# an Execution's Pod, without the runner's API calls (those are Kumulus's cost, counted
# against it).
BARE_RUNNER_COMMAND = [
    "python3",
    "-c",
    "import kumulus.runner.main, kumulus.runner.client, lightkube",
]


# --------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark shares."""
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="use this cluster instead of starting a fresh dev cluster",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="state dir of the benchmark's own dev cluster (default /tmp/kdc-bench-<name>)",
    )
    parser.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the benchmark's own dev cluster running afterwards",
    )
    parser.add_argument(
        "--external-operator",
        action="store_true",
        help="with --kubeconfig: an operator already runs there; do not start one",
    )
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the operator (e.g. KUMULUS_WORKER_LIMIT=400); repeatable",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")


# --------------------------------------------------------------------------- processes


def proc_cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process so far (or of its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (cutime + cstime if children else utime + stime) / ticks


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


#: The dev cluster's processes, as ``cluster.json`` names them (the launcher's start order).
COMPONENTS = ORDER
#: Where the kubelet puts every Pod of a node: ``/kumulus<slot>`` (kumulus.devcluster.node).
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
SHIM = "containerd-shim-runc-v2"


def process_cpu_seconds(pid: int) -> float:
    """A process's own CPU seconds plus those of its reaped children (e.g. containerd's CNI
    plugins, a shim's ``runc`` calls)."""
    return proc_cpu_seconds(pid) + proc_cpu_seconds(pid, children=True)


def containers_cpu_seconds(slot: int) -> float | None:
    """CPU seconds of every container of the node so far: its Pods' cgroup tree, which keeps
    counting the usage of Pods whose cgroups are gone (cgroup v1 charges every ancestor)."""
    try:
        return int((CPUACCT / f"kumulus{slot}" / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None


def shim_cpu(socket: str) -> dict[tuple[int, str], tuple[float, float]]:
    """CPU seconds of each live containerd shim of the node whose containerd listens on
    ``socket``, by (pid, start time): (its own, its reaped children's). The shims are
    re-parented to init and live outside the Pods' cgroup; their reaped children are the
    ``runc`` calls and, as the shim is their subreaper, the containers' ended processes."""
    found: dict[tuple[int, str], tuple[float, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not argv or not argv[0].endswith(SHIM.encode()):
                continue
            if socket.encode() not in argv:
                continue
            pid = int(entry.name)
            start = (entry / "stat").read_text().rsplit(")", 1)[1].split()[19]
            found[(pid, start)] = (proc_cpu_seconds(pid), proc_cpu_seconds(pid, children=True))
        except (OSError, ValueError, IndexError):
            continue
    return found


class ShimSampler:
    """Follows the node's containerd shims once a second in a thread: a shim lives as long as
    its Pod's sandbox, so its CPU is read while it lives (what it spends in its last second
    before it exits is missed: a lower bound)."""

    def __init__(self, socket: str, interval: float = 1.0) -> None:
        self.socket, self.interval = socket, interval
        self.initial = shim_cpu(socket)
        self.latest = dict(self.initial)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="shim-sampler")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.latest.update(shim_cpu(self.socket))

    def used(self) -> tuple[float, float]:
        """CPU seconds since the sampler started: the shims' own, their reaped children's
        (stops the sampler)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.latest.update(shim_cpu(self.socket))
        own = children = 0.0
        for key, (now_own, now_children) in self.latest.items():
            was_own, was_children = self.initial.get(key, (0.0, 0.0))
            own += now_own - was_own
            children += now_children - was_children
        return own, children


class CpuMeter:
    """CPU seconds used by the operator, each dev cluster component, the node's containers and
    shims, and the whole machine.

    Each component counts with its reaped children (containerd runs the CNI plugins and each
    shim's start-up as children). ``containers`` is the Pods' cgroup tree (``/kumulus<slot>``:
    runner processes and sandboxes); ``containerd-shims`` (their own) and ``runc`` (the shims'
    reaped children less the containers' processes) are sampled (:class:`ShimSampler`);
    ``unaccounted`` is the machine's busy time not in any of them (this benchmark client, other
    processes, the kernel's work outside these processes)."""

    def __init__(self, env: BenchEnv, extra: dict[str, int] | None = None) -> None:
        """``extra``: more processes to meter by name (e.g. a service the benchmark started)."""
        self.pids = {name: env.component_pid(name) for name in COMPONENTS}
        self.pids["operator"] = env.operator_pid
        self.pids.update(extra or {})
        self.slot = env.slot()
        self.start = {name: self._read(pid) for name, pid in self.pids.items()}
        self.containers_start = None if self.slot is None else containers_cpu_seconds(self.slot)
        socket = env.containerd_socket()
        self.shims = ShimSampler(socket) if socket else None
        self.machine_start = machine_busy_seconds()

    @staticmethod
    def _read(pid: int | None) -> float | None:
        if pid is None:
            return None
        try:
            return process_cpu_seconds(pid)
        except OSError:
            return None

    def used(self) -> dict[str, float]:
        """CPU seconds since the meter was made, per process, ``containers``,
        ``containerd-shims``, ``machine`` (all of it) and ``unaccounted``; call it once."""
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, now = self.start[name], self._read(pid)
            if before is not None and now is not None:
                out[name] = round(now - before, 2)
        if self.slot is not None and self.containers_start is not None:
            now_containers = containers_cpu_seconds(self.slot)
            if now_containers is not None:
                out["containers"] = round(now_containers - self.containers_start, 2)
        if self.shims is not None:
            own, children = self.shims.used()
            out["containerd-shims"] = round(own, 2)
            # The shims' reaped children are runc and the containers' processes; the latter
            # are in ``containers`` already, so only the rest counts as runc.
            out["runc"] = round(max(children - out.get("containers", 0.0), 0.0), 2)
        out["machine"] = round(machine_busy_seconds() - self.machine_start, 2)
        out["unaccounted"] = round(
            out["machine"] - sum(v for k, v in out.items() if k != "machine"), 2
        )
        return out


_REQUEST = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def api_request_counts(env: BenchEnv) -> Counter[str]:
    """``apiserver_request_total`` as ``VERB resource[/sub] code`` -> count (writes and gets)."""
    counts: Counter[str] = Counter()
    text = env.kubectl("get", "--raw", "/metrics", check=False)
    for line in text.splitlines():
        match = _REQUEST.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if not labels.get("resource") or labels.get("verb") in ("WATCH", "LIST"):
            continue
        what = labels["resource"] + (f"/{labels['subresource']}" if labels["subresource"] else "")
        counts[f"{labels['verb']} {what} {labels['code']}"] += int(float(match["value"]))
    return counts


class ApiMeter:
    """API requests (by verb, resource and status code) served while it runs."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.start = api_request_counts(env)

    def used(self, per: int = 1) -> dict[str, float]:
        """Requests since the meter was made, divided by ``per`` (e.g. per Execution)."""
        now = api_request_counts(self.env)
        delta = {k: now[k] - self.start.get(k, 0) for k in now}
        return {
            k: round(v / per, 2)
            for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
            if v >= max(per // 10, 1)
        }


def machine() -> dict[str, Any]:
    """Where and when the figures were measured (they mean little without it)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "commit": commit + ("+changes" if dirty else ""),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@dataclass
class BenchEnv:
    """The cluster and operator one benchmark measures (see the module docstring)."""

    name: str
    args: argparse.Namespace
    operator_env: dict[str, str] = field(default_factory=dict)
    kubeconfig: Path = field(init=False)
    state: Path = field(init=False)
    own_cluster: bool = field(init=False, default=False)
    operator_pid: int | None = field(init=False, default=None)
    _tmp: Path | None = field(init=False, default=None)

    def __enter__(self) -> BenchEnv:
        # SIGTERM (and SIGINT, which background jobs of a shell ignore) end the benchmark
        # through the normal exit path, so its operator and cluster are stopped.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _interrupt)
        given: Path | None = self.args.kubeconfig
        if given is None:
            self.state = (self.args.state_dir or Path(f"/tmp/kdc-bench-{self.name}")).resolve()
            print(f"Starting a fresh dev cluster in {self.state} ...", flush=True)
            subprocess.run(
                [PYTHON, "-m", "kumulus.devcluster", "up", "--state-dir", str(self.state)],
                check=True,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            self.own_cluster = True
            self.kubeconfig = self.state / "kubeconfig"
        else:
            self.kubeconfig = given.resolve()
            # The operator's pid file and log live in a scratch folder beside a copy of the
            # kubeconfig (DevPaths expects both in one folder).
            self._tmp = Path(tempfile.mkdtemp(prefix=f"kumulus-bench-{self.name}-"))
            shutil.copy(self.kubeconfig, self._tmp / "kubeconfig")
            self.state = self._tmp
        install_kumulus(self.kubeconfig)
        for item in self.args.operator_env:
            key, _, value = item.partition("=")
            self.operator_env[key] = value
        if given is None or not self.args.external_operator:
            self.operator_pid = start_operator(DevPaths(self.state), self.operator_env)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.operator_pid is not None:
            stop_operator(DevPaths(self.state))
        if self.own_cluster and not self.args.keep_cluster:
            subprocess.run(
                [PYTHON, "-m", "kumulus.devcluster", "down", "--state-dir", str(self.state)],
                check=False,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def operator_log(self) -> Path:
        return DevPaths(self.state).operator_log

    def stop_operator(self) -> None:
        stop_operator(DevPaths(self.state))
        self.operator_pid = None

    def restart_operator(self) -> None:
        """Stop and start the benchmark's operator (e.g. to measure a cold listing)."""
        stop_operator(DevPaths(self.state))
        self.operator_pid = start_operator(DevPaths(self.state), self.operator_env)

    def _record(self) -> dict[str, Any]:
        """The dev cluster's ``cluster.json`` beside the kubeconfig (empty if there is none)."""
        try:
            data: dict[str, Any] = json.loads((self.kubeconfig.parent / "cluster.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def component_pid(self, component: str) -> int | None:
        """Pid of a dev cluster component (``kube-controller-manager``...) if known."""
        try:
            return int(self._record()["components"][component]["pid"])
        except (KeyError, TypeError, ValueError):
            return None

    def slot(self) -> int | None:
        """The dev cluster's network slot (its Pods' cgroup is ``/kumulus<slot>``) if known."""
        slot = self._record().get("slot")
        return int(slot) if slot is not None else None

    def containerd_socket(self) -> str | None:
        """The socket of the node's containerd (its shims name it in their command line)."""
        slot = self.slot()
        if slot is None:
            return None
        return str(NodeLayout.of(NodeNetwork(slot)).containerd_socket)

    def client(self) -> AsyncClient:
        return AsyncClient(
            config=KubeConfig.from_file(self.kubeconfig),
            timeout=httpx.Timeout(60.0),
            field_manager="kumulus-bench",
            trust_env=False,
        )

    def kubectl(self, *argv: str, check: bool = True) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        done = subprocess.run(
            ["kubectl", *argv], env=env, capture_output=True, text=True, timeout=600
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout


# --------------------------------------------------------------------------- objects


def new_namespace(env: BenchEnv, prefix: str) -> str:
    """Create a uniquely named namespace and return its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    env.kubectl("create", "namespace", name)
    return name


def delete_namespace(env: BenchEnv, name: str, wait: bool = True) -> None:
    """Delete a namespace (waiting for it to be gone keeps the next measurement clean)."""
    env.kubectl(
        "delete",
        "namespace",
        name,
        f"--wait={'true' if wait else 'false'}",
        "--timeout=600s",
        check=False,
    )


def script_execution(name: str, script: str = TRIVIAL_SCRIPT) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": {"type": "SCRIPT", "script": script},
    }


def bare_container(command: list[str] | None = None) -> dict[str, Any]:
    """The baseline's container: the runner image with the bare runner command."""
    return {
        "name": "main",
        "image": RUNNER_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command or BARE_RUNNER_COMMAND,
    }


def bare_job(name: str, command: list[str] | None = None) -> dict[str, Any]:
    """The baseline: a Job whose Pod runs the bare runner command once, no retries."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "containers": [bare_container(command)],
                }
            },
        },
    }


def bare_pod(name: str, command: list[str] | None = None, token: bool = True) -> dict[str, Any]:
    """The floor: a plain Pod running the bare runner command (no controller at all).

    It is the Pod a Job would make, ServiceAccount token included as an Execution's Pod has one
    (``token=False`` leaves it out: a Pod without any API access)."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [bare_container(command)],
    }
    if not token:
        spec["automountServiceAccountToken"] = False
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def wait_service_account(env: BenchEnv, namespace: str, within: float = 60) -> None:
    """Wait for a namespace's ``default`` ServiceAccount: a Pod created before it exists is
    refused (Jobs and the operator retry; a benchmark creating bare Pods must not race it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        out = env.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False)
        if "default" in out:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"No ServiceAccount default in {namespace} after {within:.0f} s.")


async def create_all(
    client: AsyncClient,
    resource: Any,
    namespace: str,
    bodies: Iterable[dict[str, Any]],
    concurrency: int = 32,
    on_created: Callable[[str, float], None] | None = None,
) -> None:
    """Create objects with up to ``concurrency`` requests in flight (a burst "at once")."""
    sem = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> None:
        async with sem:
            name = body["metadata"]["name"]
            started = time.monotonic()
            for attempt in range(6):
                try:
                    await client.create(resource(body), namespace=namespace)
                    break
                except ApiError as err:
                    if err.status.code == 409 and attempt > 0:
                        break  # an earlier attempt got through before its answer was lost
                    if attempt == 5 or err.status.code not in (429, 500, 503, 504):
                        raise
                except (OSError, httpx.TransportError):
                    if attempt == 5:
                        raise
                await asyncio.sleep(0.5 * (attempt + 1))
            if on_created is not None:
                on_created(name, started)

    await asyncio.gather(*(one(b) for b in bodies))


# --------------------------------------------------------------------------- watching


@dataclass
class Milestones:
    """First time (``time.monotonic()``) each object was seen reaching each milestone."""

    times: dict[str, dict[str, float]] = field(default_factory=dict)

    def mark(self, name: str, milestone: str, at: float | None = None) -> None:
        self.times.setdefault(name, {}).setdefault(milestone, at or time.monotonic())

    def count(self, milestone: str) -> int:
        return sum(1 for t in self.times.values() if milestone in t)

    def deltas(self, start: str, end: str) -> list[float]:
        return [t[end] - t[start] for t in self.times.values() if start in t and end in t]

    def phases(self) -> dict[str, int]:
        """How many objects ended in each phase (``phase:<name>`` milestones)."""
        keys = {m for t in self.times.values() for m in t if m.startswith("phase:")}
        return {key.split(":", 1)[1]: self.count(key) for key in sorted(keys)}

    def last(self, milestone: str) -> float:
        return max((t[milestone] for t in self.times.values() if milestone in t), default=0.0)


async def follow(
    client: AsyncClient,
    resource: Any,
    namespace: str,
    on_event: Callable[[str, dict[str, Any]], None],
    labels: dict[str, str] | None = None,
) -> None:
    """Feed every watch event (initial state included) to ``on_event`` until cancelled."""
    while True:
        try:
            async for event, obj in client.watch(resource, namespace=namespace, labels=labels):
                on_event(event, dict(obj))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken watch restarts; the benchmark reports gaps
            print(f"Restarted a watch of {resource.__name__}: {exc!r}", flush=True)
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def watching(*coros: Awaitable[None]) -> AsyncIterator[None]:
    """Run watch coroutines in the background while the body runs."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0.5)  # let the watches connect before the clock starts
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def pod_owner(pod: dict[str, Any]) -> str:
    """The name of a Pod's controller (its Execution or Job), else the Pod's own name."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("name"))
    return str(meta.get("name"))


def pod_milestones(marks: Milestones, bare: bool = False) -> Callable[[str, dict[str, Any]], None]:
    """Record ``pod`` (Pod created), ``running`` and ``pod-ended`` under the Pod's owner.

    ``running`` is the first event with phase Running, or the end when none showed it (the
    kubelet notices a container every second, and reports a short one only once it ended);
    ``running-seen`` only when an event showed Running. A ``bare`` Pod (no controller) is its
    own object: its end is also ``ended`` and ``phase:<phase>``."""

    def on_event(event: str, pod: dict[str, Any]) -> None:
        owner = pod_owner(pod)
        marks.mark(owner, "pod")
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            marks.mark(owner, "running")
            marks.mark(owner, "running-seen")
        elif phase in ("Succeeded", "Failed"):
            marks.mark(owner, "running")  # it ran, even if no watch event showed Running
            marks.mark(owner, "pod-ended")
            if bare:
                marks.mark(owner, "ended")
                marks.mark(owner, f"phase:{phase}")

    return on_event


def execution_milestones(marks: Milestones) -> Callable[[str, dict[str, Any]], None]:
    """Record ``exec-running`` and ``ended`` (any terminal phase) of Executions."""

    def on_event(event: str, ex: dict[str, Any]) -> None:
        name = str((ex.get("metadata") or {}).get("name"))
        phase = (ex.get("status") or {}).get("phase")
        if phase in ("Running", "Waiting", "Paused"):
            marks.mark(name, "exec-running")
        if phase in TERMINAL:
            marks.mark(name, "exec-running")
            marks.mark(name, "ended")
            marks.mark(name, f"phase:{phase}")

    return on_event


def job_milestones(marks: Milestones) -> Callable[[str, dict[str, Any]], None]:
    """Record ``ended`` of Jobs (condition Complete or Failed)."""

    def on_event(event: str, job: dict[str, Any]) -> None:
        name = str((job.get("metadata") or {}).get("name"))
        for cond in (job.get("status") or {}).get("conditions") or []:
            if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
                marks.mark(name, "ended")
                marks.mark(name, f"phase:{cond['type']}")

    return on_event


async def until(predicate: Callable[[], bool], within: float, poll: float = 0.1) -> bool:
    """Wait until ``predicate()`` holds; ``False`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(poll)
    return predicate()


# --------------------------------------------------------------------------- figures


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    """Count, p50, p90, p99 and max of a list of seconds."""
    return {
        "n": len(values),
        "p50": round(pct(values, 0.5), 4),
        "p90": round(pct(values, 0.9), 4),
        "p99": round(pct(values, 0.99), 4),
        "max": round(max(values), 4) if values else float("nan"),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.0f} ms"


def save_results(args: argparse.Namespace, name: str, data: dict[str, Any]) -> Path:
    """Write ``<results>/<name>.json`` (the latest run) and a timestamped copy."""
    folder: Path = args.results
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **data}
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"
    latest = folder / f"{name}.json"
    latest.write_text(text)
    stamp = payload["machine"]["date"].replace(":", "").replace("-", "")
    (folder / f"{name}-{stamp}.json").write_text(text)
    print(f"Wrote {latest}.")
    return latest


def sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]
