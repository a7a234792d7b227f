"""Faults lose nothing: a crashed operator, a crashed kubelet, a restarted API server, a
parent deleted under its running children.

These tests break the cluster on purpose, so the module runs on a dev cluster of its own
(``python -m kumulus.devcluster up`` in a temporary folder) with an operator process of its own;
the session cluster and operator the other tests use are never touched. The components are
stopped and started with the launcher's ``stop-component``/``start-component``.

Every test records what happened from watches that run for the whole test (every Pod ever
created, every phase every Execution was seen in), so "no duplicate Pods" and "ended exactly
once" are checked on the history, not only on the final state.

``KUMULUS_FAULT_BURST`` sets the size of the burst under which the operator is killed (default
500, the number in the issue); ``KUMULUS_FAULT_OPERATOR_KILLS`` how many times (default 3).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod
from tests.polling import eventually

from kumulus.devcluster.dev import DevPaths, install_kumulus, start_operator, stop_operator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
Execution: Any = create_namespaced_resource("kumulus.dev", "v1alpha1", "Execution", "executions")
Flow: Any = create_namespaced_resource("kumulus.dev", "v1alpha1", "Flow", "flows")

TERMINAL = ("Succeeded", "Failed", "Cancelled")
BURST = int(os.environ.get("KUMULUS_FAULT_BURST", "500"))
OPERATOR_KILLS = int(os.environ.get("KUMULUS_FAULT_OPERATOR_KILLS", "3"))
TRIVIAL = "def handler(system, this):\n    return this.success('ok')\n"


# --------------------------------------------------------------------------- the private cluster


@dataclass
class FaultCluster:
    """A dev cluster and an operator that only this module uses."""

    state: Path
    operator_pid: int = 0
    kills: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def client(self) -> Client:
        return Client(
            config=KubeConfig.from_file(self.kubeconfig),
            field_manager="kumulus-fault-tests",
            trust_env=False,
        )

    def launcher(self, *argv: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "kumulus.devcluster", *argv, "--state-dir", str(self.state)],
            check=True,
            cwd=REPO,
            timeout=300,
        )

    def start_operator(self) -> None:
        self.operator_pid = start_operator(
            DevPaths(self.state),
            {
                # A burst beyond the node's 110 Pods queues Pods for minutes: not a start failure.
                "KUMULUS_POD_START_DEADLINE_SECONDS": "900",
                # After the API server restart, Pods that ended meanwhile are found within 10 s.
                "KUMULUS_POD_RESYNC_SECONDS": "10",
                "PYTHONUNBUFFERED": "1",
            },
        )

    def kill_operator(self) -> None:
        """SIGKILL, like a crash: no cleanup, no final writes."""
        os.killpg(self.operator_pid, signal.SIGKILL)
        os.waitpid(self.operator_pid, 0)  # our child: reap it, or it lingers as a zombie
        self.kills += 1

    def operator_alive(self) -> bool:
        try:
            os.kill(self.operator_pid, 0)
        except ProcessLookupError:
            return False
        pid, _ = os.waitpid(self.operator_pid, os.WNOHANG)
        return pid == 0

    def operator_log(self, lines: int = 80) -> str:
        log = DevPaths(self.state).operator_log
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    state = tmp_path_factory.mktemp("faults") / "cluster"
    fc = FaultCluster(state)
    fc.launcher("up")
    try:
        install_kumulus(fc.kubeconfig)
        fc.start_operator()
        yield fc
    finally:
        stop_operator(DevPaths(state))
        # Keep the components' and the operator's logs for a post-mortem; down removes state.
        shutil.copytree(state / "logs", state.parent / "logs", dirs_exist_ok=True)
        fc.launcher("down")


@pytest.fixture
def ns(cluster: FaultCluster) -> Iterator[str]:
    name = f"fault-{uuid.uuid4().hex[:8]}"
    client = cluster.client()
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    yield name
    client.delete(Namespace, name)
    client.close()


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "cluster" in request.fixturenames:
        fc: FaultCluster = request.getfixturevalue("cluster")
        print(f"\n----- fault-test operator log (last lines) -----\n{fc.operator_log()}")


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """Everything the watches saw: phases per Execution, Pod uids per Execution."""

    phases: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    end_times: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    pods: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_execution(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        with self.lock:
            self.last[name] = obj
            phase = status.get("phase") or ""
            seen = self.phases[name]
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            if status.get("endTime"):
                self.end_times[name].add(status["endTime"])

    def on_pod(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        owner = next(
            (r["name"] for r in meta.get("ownerReferences") or [] if r.get("controller")), ""
        )
        with self.lock:
            self.pods[owner].add((meta["name"], meta["uid"]))

    def finished(self, names: list[str]) -> int:
        with self.lock:
            return sum(
                1
                for n in names
                if ((self.last.get(n) or {}).get("status") or {}).get("phase") in TERMINAL
            )

    def phase(self, name: str) -> str:
        with self.lock:
            return str(((self.last.get(name) or {}).get("status") or {}).get("phase") or "")


def _follow(
    cluster: FaultCluster,
    resource: Any,
    namespace: str,
    on_event: Callable[[dict[str, Any]], None],
    stop: threading.Event,
    labels: dict[str, str] | None = None,
) -> None:
    """List+watch until ``stop``; reconnects (re-listing) after any error, e.g. an API restart."""
    while not stop.is_set():
        client = cluster.client()
        try:
            for _, obj in client.watch(
                resource, namespace=namespace, labels=labels, server_timeout=20
            ):
                on_event(obj if isinstance(obj, dict) else obj.to_dict())
                if stop.is_set():
                    return
        except Exception:
            time.sleep(0.5)
        finally:
            client.close()


@pytest.fixture
def history(cluster: FaultCluster, ns: str) -> Iterator[History]:
    record = History()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_follow,
            args=(cluster, Execution, ns, record.on_execution, stop),
            daemon=True,
        ),
        threading.Thread(
            target=_follow,
            args=(
                cluster,
                Pod,
                ns,
                record.on_pod,
                stop,
                {"app.kubernetes.io/managed-by": "kumulus"},
            ),
            daemon=True,
        ),
    ]
    for t in threads:
        t.start()
    time.sleep(1)  # both watches connected before anything is created
    yield record
    stop.set()


def execution(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_all(cluster: FaultCluster, namespace: str, bodies: list[dict[str, Any]]) -> None:
    """Create many Executions at once (16 requests in flight), riding out API hiccups."""

    def one(body: dict[str, Any]) -> None:
        client = cluster.client()
        try:
            for attempt in range(20):
                try:
                    client.create(Execution(body), namespace=namespace)
                    return
                except ApiError as err:
                    if err.status.code == 409:
                        return
                    if attempt == 19:
                        raise
                except Exception:
                    if attempt == 19:
                        raise
                time.sleep(1)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, bodies))


def assert_ended_once(record: History, names: list[str]) -> None:
    """Each Execution reached one terminal phase, never left it, and ended at one time."""
    for name in names:
        phases = record.phases[name]
        assert phases and phases[-1] in TERMINAL, (name, phases)
        first = next(i for i, p in enumerate(phases) if p in TERMINAL)
        assert phases[first:] == [phases[-1]], f"{name} left its terminal phase: {phases}"
        assert len(record.end_times[name]) == 1, (name, record.end_times[name])


def assert_one_pod_per_attempt(record: History, names: list[str]) -> None:
    """Every Pod ever created for an Execution is a distinct attempt (no duplicates)."""
    for name in names:
        last = record.last[name]
        attempts = int(last["status"].get("attempts") or 0)
        pods = record.pods.get(name, set())
        pod_names = sorted(p for p, _ in pods)
        assert len(pods) == attempts, f"{name}: {attempts} attempts but Pods {sorted(pods)}"
        assert pod_names == sorted(f"{name}-a{i}" for i in range(1, attempts + 1)), pod_names


# --------------------------------------------------------------------------- the tests


def test_operator_sigkilled_three_times_during_a_burst(
    cluster: FaultCluster, ns: str, history: History
) -> None:
    names = [f"burst-{i}" for i in range(BURST)]
    # A runner that times out on an overloaded API server fails its attempt; the policy
    # retries it. Retries are allowed, duplicates are not: each attempt has exactly one Pod.
    retry = {"limit": 2, "backoffSeconds": 1}
    bodies = [execution(n, type="SCRIPT", script=TRIVIAL, retry=retry) for n in names]
    started = time.monotonic()
    creator = threading.Thread(target=create_all, args=(cluster, ns, bodies))
    creator.start()
    # Kill while work is in every state: early (most still to start), midway, late.
    thresholds = [int(BURST * f) for f in (0.05, 0.35, 0.65)][:OPERATOR_KILLS]
    for at in thresholds:
        eventually(f"{at} ended Executions", lambda at=at: history.finished(names) >= at, 600)
        cluster.kill_operator()
        time.sleep(1)  # runners and kubelet keep going while no operator runs
        cluster.start_operator()
    creator.join()
    eventually(f"all {BURST} Executions to end", lambda: history.finished(names) == BURST, 900)
    took = time.monotonic() - started
    time.sleep(2)  # late watch events (a duplicate Pod would show up here)
    assert cluster.kills == len(thresholds)
    assert_ended_once(history, names)
    assert_one_pod_per_attempt(history, names)
    failed = {
        n: history.last[n]["status"].get("statusMessage")
        for n in names
        if history.phase(n) != "Succeeded"
    }
    assert failed == {}
    retried = {n: history.last[n]["status"]["attempts"] for n in names}
    retried = {n: a for n, a in retried.items() if int(a) > 1}
    print(
        f"\n{BURST} Executions through {len(thresholds)} operator kills in {took:.0f} s; "
        f"retried by policy: {retried or 'none'}."
    )


SLEEPY_ONCE = (
    "import time\ndef handler(system, this):\n    time.sleep(15)\n    return this.success('done')\n"
)


def test_kubelet_killed_and_restarted_while_executions_run(
    cluster: FaultCluster, ns: str, history: History
) -> None:
    """A crashed kubelet leaves its containers running (as on any node); nothing is lost.

    The new kubelet finds the running containers through containerd and keeps reporting them,
    so every Execution ends once, in its first attempt, with one Pod: the operator neither
    fails an attempt whose Pod merely went unreported nor starts a second one.
    """
    names = [f"run-{i}" for i in range(8)]
    create_all(cluster, ns, [execution(n, type="SCRIPT", script=SLEEPY_ONCE) for n in names])
    eventually(
        "all Executions Running", lambda: all(history.phase(n) == "Running" for n in names), 180
    )
    cluster.launcher("stop-component", "kubelet", "--signal", "KILL")
    time.sleep(3)
    assert all(_runner_processes(ns, n) for n in names), "the containers died with the kubelet"
    cluster.launcher("start-component", "kubelet")
    eventually("every Execution to end", lambda: history.finished(names) == len(names), 240)
    assert_ended_once(history, names)
    assert_one_pod_per_attempt(history, names)
    for name in names:
        status = history.last[name]["status"]
        assert (status["phase"], status["attempts"]) == ("Succeeded", 1), (name, status)


def _runner_processes(namespace: str, execution_name: str, attempt: int | None = None) -> list[int]:
    """Processes of an Execution's runner containers, found by their environment in /proc."""
    wanted = {
        f"KUMULUS_NAMESPACE={namespace}".encode(),
        f"KUMULUS_EXECUTION={execution_name}".encode(),
    }
    if attempt is not None:
        wanted.add(f"KUMULUS_ATTEMPT={attempt}".encode())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ:
            found.append(int(entry.name))
    return found


def test_api_server_restarted_during_a_burst(
    cluster: FaultCluster, ns: str, history: History
) -> None:
    names = [f"api-{i}" for i in range(60)]
    retry = {"limit": 2, "backoffSeconds": 1}
    create_all(
        cluster, ns, [execution(n, type="SCRIPT", script=TRIVIAL, retry=retry) for n in names]
    )
    eventually("10 ended Executions", lambda: history.finished(names) >= 10, 300)
    cluster.launcher(
        "restart-component", "kube-apiserver", "--signal", "KILL", "--down-seconds", "3"
    )
    eventually("every Execution to end", lambda: history.finished(names) == len(names), 600)
    time.sleep(2)
    assert cluster.operator_alive(), "the operator exited instead of reconnecting"
    assert_ended_once(history, names)
    assert_one_pod_per_attempt(history, names)
    assert {history.phase(n) for n in names} == {"Succeeded"}, {
        n: history.last[n]["status"].get("statusMessage")
        for n in names
        if history.phase(n) != "Succeeded"
    }


PARENT = """
def handler(system, this):
    for i in range(3):
        this.flow('napper', wait=False)
    this.sleep(300)
    return this.success('never')
"""

NAPPER = """
def handler(system, this):
    this.sleep(300)
    return this.success('never')
"""


def test_deleting_a_parent_cancels_and_collects_its_running_children(
    cluster: FaultCluster, ns: str, history: History
) -> None:
    client = cluster.client()
    for name, code in (("parent", PARENT), ("napper", NAPPER)):
        client.create(Flow(metadata=ObjectMeta(name=name), spec={"code": code}), namespace=ns)
    client.create(Execution(execution("dad", flowRef={"name": "parent"})), namespace=ns)
    children = [f"dad-1-{i}" for i in (1, 2, 3)]
    eventually(
        "3 running children", lambda: all(history.phase(c) == "Running" for c in children), 180
    )
    assert all(_runner_processes(ns, c) for c in children)
    client.delete(Execution, "dad", namespace=ns)

    def gone() -> bool:
        left = [e.metadata.name for e in client.list(Execution, namespace=ns)]
        pods = [p.metadata.name for p in client.list(Pod, namespace=ns)]
        return not left and not pods

    eventually("the parent, its children and all their Pods to be deleted", gone, 180)
    # Cancelled for real: no runner process of any child is left on the machine.
    eventually(
        "the children's runner processes to stop",
        lambda: not any(_runner_processes(ns, c) for c in [*children, "dad"]),
        60,
    )
    assert sorted(n for n in history.pods if n in children) == children
    client.close()
