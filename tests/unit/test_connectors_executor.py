"""The connection executor's runtime against an in-memory API (races a cluster cannot stage).

The Kubernetes API is replaced by a small fake with resourceVersions and conflicts; every
write is echoed back to the executors as a watch event, as kopf would. Covered: the result
and its scrubbing, the time limit, cancel, two executors racing for one call (exactly once),
a restart, a graceful stop, the bounded queue, what a call through a Connection may change
(``OverrideRefused``, ``spec.allowedOverrides``, ad-hoc calls), and the standalone entry
point's detection.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import random
import subprocess
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from tests.local_servers import HttpServer, Seen

from kumulus.connectors.base import CallContext, Connector
from kumulus.domain import connection as rules
from kumulus.domain.settings import Settings
from kumulus.handlers.connection_executor import kopf_modules, runs_alone
from kumulus.k8s import connection_executor as ce
from kumulus.k8s import connections, events, executions, secrets

pytestmark = pytest.mark.unit

NS = "ns"
SECRET = "hunter2-very-secret"


class FakeApi:
    """Executions, one Connection and one Secret, with optimistic concurrency."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.executors: list[ce.ConnectionExecutor] = []
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.order = random.Random(7)
        self.connection_spec: dict[str, Any] = {
            "type": "FAKE",
            "values": {"stored": "v"},
            "secretRef": {"name": "s"},
        }
        self.secret_reads = 0
        self.secret = {"password": SECRET}

    def add(self, body: dict[str, Any]) -> None:
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[body["metadata"]["name"]] = body
        self._emit(body)

    def _emit(self, body: dict[str, Any]) -> None:
        # Watch events reach the executors in a varying (seeded) order, so each wins claims.
        for executor in self.order.sample(self.executors, len(self.executors)):
            event = copy.deepcopy(body)
            asyncio.get_running_loop().call_soon(executor.on_execution, "MODIFIED", event)

    def _check(self, name: str, rv: str | None) -> dict[str, Any] | None:
        body = self.objects.get(name)
        if body is None:
            return None
        if rv is not None and rv != body["metadata"]["resourceVersion"]:
            raise executions.Conflict(name)
        return body

    def _bump(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(body)
        return copy.deepcopy(body)

    async def patch_status(
        self, namespace: str, name: str, rv: str | None, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        body = self._check(name, rv)
        if body is None:
            return None
        body["status"] = rules.status_after(body.get("status") or {}, patch)
        self.writes.append((name, dict(patch)))
        return self._bump(body)

    async def write_status(
        self, namespace: str, name: str, rv: str | None, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        body = self._check(name, rv)
        if body is None:
            return None
        body["status"] = copy.deepcopy(dict(status))
        self.writes.append((name, dict(status)))
        return self._bump(body)

    def patch_spec(self, name: str, spec: Mapping[str, Any]) -> None:
        body = self.objects[name]
        body["spec"].update(spec)
        self._bump(body)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.objects.get(name)
        return copy.deepcopy(body) if body is not None else None

    async def get_connection(self, namespace: str, name: str) -> dict[str, Any] | None:
        if name != "api":
            return None
        return {"metadata": {"name": "api", "namespace": NS}, "spec": self.connection_spec}

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.secret_reads += 1
        return {k: base64.b64encode(v.encode()).decode() for k, v in self.secret.items()}


class FakeConnector(Connector):
    type: ClassVar[str] = "FAKE"
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password"})
    call_inputs: ClassVar[frozenset[str]] = frozenset({"mode", "headers"})
    call_refused_fields: ClassVar[Mapping[str, frozenset[str]]] = {
        "headers": frozenset({"authorization"})
    }

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.cancelled = 0
        self.running = 0
        self.max_running = 0

    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        self.calls.append(dict(inputs))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            mode = inputs.get("mode", "echo")
            if mode == "block":
                await self.release.wait()
            if mode == "raise":
                raise RuntimeError(f"remote said no to {inputs['password']}")
            return {"echo": f"got {inputs['password']}", "stored": inputs["stored"]}
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(executions, "patch_execution_status", fake.patch_status)
    monkeypatch.setattr(executions, "get_execution", fake.get)
    monkeypatch.setattr(ce, "write_status", fake.write_status)
    monkeypatch.setattr(connections, "get_connection", fake.get_connection)
    monkeypatch.setattr(secrets, "read_secret_data", fake.read_secret)

    async def no_event(*_: Any) -> None:
        return None

    monkeypatch.setattr(events, "post_event", no_event)
    monkeypatch.setattr(rules, "TIMEOUT_GRACE_SECONDS", 0.05)
    return fake


@pytest.fixture
def connector(monkeypatch: pytest.MonkeyPatch) -> FakeConnector:
    fake = FakeConnector()
    monkeypatch.setattr(connections, "load_type", lambda type_: (fake, None))
    return fake


def executor(
    api: FakeApi, host: str = "host-a", pid: int | None = None, **settings: Any
) -> ce.ConnectionExecutor:
    """An executor; ``pid`` pretends it is another process (default: this one)."""
    ident = f"{host}/{pid or os.getpid()}-{len(api.executors)}"
    ex = ce.ConnectionExecutor(Settings(**settings), instance_id=ident)
    api.executors.append(ex)
    return ex


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def call_body(name: str, **inputs: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"type": "CONNECTION", "connection": {"name": "api", "inputs": inputs}},
        "status": {},
    }


async def until(predicate: Any, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def phase(api: FakeApi, name: str) -> str | None:
    return (api.objects[name].get("status") or {}).get("phase")


def finished_reason(api: FakeApi, name: str) -> str:
    conds = api.objects[name]["status"]["conditions"]
    return str(next(c for c in conds if c["type"] == "Finished")["reason"])


async def test_result_is_written_with_secrets_scrubbed(
    api: FakeApi, connector: FakeConnector
) -> None:
    ex = executor(api)
    api.add(call_body("c1"))
    await until(lambda: phase(api, "c1") == "Succeeded")
    status = api.objects["c1"]["status"]
    assert status["outputs"] == {"echo": "got ***", "stored": "v"}
    assert connector.calls == [{"stored": "v", "password": SECRET}]  # the connector got it
    assert status["executor"]["id"] == ex.instance_id
    assert SECRET not in repr(api.writes)
    await ex.shutdown(grace=0)


async def test_exception_message_is_scrubbed(api: FakeApi, connector: FakeConnector) -> None:
    ex = executor(api)
    api.add(call_body("c1", mode="raise"))
    await until(lambda: phase(api, "c1") == "Failed")
    assert finished_reason(api, "c1") == "ConnectorError"
    assert api.objects["c1"]["status"]["statusMessage"] == (
        "The FAKE connector failed: RuntimeError: remote said no to ***"
    )
    await ex.shutdown(grace=0)


async def test_time_limit_cancels_the_call(api: FakeApi, connector: FakeConnector) -> None:
    ex = executor(api)
    api.add(call_body("c1", mode="block", timeout=0.05))
    await until(lambda: phase(api, "c1") == "Failed")
    assert finished_reason(api, "c1") == "Timeout"
    assert connector.cancelled == 1
    await ex.shutdown(grace=0)


async def test_cancel_interrupts_a_running_call(api: FakeApi, connector: FakeConnector) -> None:
    ex = executor(api)
    api.add(call_body("c1", mode="block"))
    await until(lambda: phase(api, "c1") == "Running")
    api.patch_spec("c1", {"desiredState": "Cancelled"})
    await until(lambda: phase(api, "c1") == "Cancelled")
    assert connector.cancelled == 1
    await ex.shutdown(grace=0)


async def test_two_executors_run_a_call_exactly_once(
    api: FakeApi, connector: FakeConnector
) -> None:
    first, second = executor(api, "host-a"), executor(api, "host-b")
    for i in range(10):
        api.add(call_body(f"c{i}"))
    await until(lambda: all(phase(api, f"c{i}") == "Succeeded" for i in range(10)))
    assert len(connector.calls) == 10
    await first.shutdown(grace=0)
    await second.shutdown(grace=0)


async def test_two_executors_on_one_host_leave_each_others_calls_alone(
    api: FakeApi, connector: FakeConnector
) -> None:
    # Both pretend to be other live processes of this host (init and this test's parent).
    first = executor(api, "host-a", pid=1)
    second = executor(api, "host-a", pid=os.getppid())
    for i in range(6):
        api.add(call_body(f"c{i}", mode="block"))
    await until(lambda: all(phase(api, f"c{i}") == "Running" for i in range(6)))
    claimers = {api.objects[f"c{i}"]["status"]["executor"]["id"] for i in range(6)}
    assert claimers == {first.instance_id, second.instance_id}
    connector.release.set()
    await until(lambda: all(phase(api, f"c{i}") == "Succeeded" for i in range(6)))
    assert len(connector.calls) == 6
    await first.shutdown(grace=0)
    await second.shutdown(grace=0)


async def test_a_claimed_call_is_failed_not_repeated_after_a_restart(
    api: FakeApi, connector: FakeConnector
) -> None:
    body = call_body("c1")
    body["status"] = {
        "phase": "Running",
        "startTime": "2025-01-01T00:00:00Z",
        "executor": {"id": f"host-a/{dead_pid()}-old", "deadline": "2999-01-01T00:00:00Z"},
    }
    ex = executor(api, "host-a")
    api.add(body)
    await until(lambda: phase(api, "c1") == "Failed")
    assert finished_reason(api, "c1") == "ExecutorRestarted"
    assert connector.calls == []
    await ex.shutdown(grace=0)


async def test_graceful_stop_fails_what_is_still_running(
    api: FakeApi, connector: FakeConnector
) -> None:
    ex = executor(api)
    api.add(call_body("c1", mode="block"))
    await until(lambda: phase(api, "c1") == "Running")
    await ex.shutdown(grace=0.05)
    assert phase(api, "c1") == "Failed"
    assert finished_reason(api, "c1") == "ExecutorStopped"


async def test_bounded_concurrency_queues_the_rest(api: FakeApi, connector: FakeConnector) -> None:
    ex = executor(api, connection_concurrency=1)
    api.add(call_body("c1", mode="block"))
    await until(lambda: phase(api, "c1") == "Running")
    api.add(call_body("c2", mode="block"))
    await until(lambda: phase(api, "c2") == "Pending")
    started = api.objects["c2"]["status"]["conditions"][0]
    assert (started["type"], started["status"], started["reason"]) == ("Started", "False", "Queued")
    connector.release.set()
    await until(lambda: phase(api, "c1") == phase(api, "c2") == "Succeeded")
    assert connector.max_running == 1
    await ex.shutdown(grace=0)


async def test_missing_connection_fails_before_any_call(
    api: FakeApi, connector: FakeConnector
) -> None:
    ex = executor(api)
    body = call_body("c1")
    body["spec"]["connection"]["name"] = "nope"
    api.add(body)
    await until(lambda: phase(api, "c1") == "Failed")
    assert finished_reason(api, "c1") == "ConnectionNotFound"
    assert "executor" not in api.objects["c1"]["status"]  # never claimed
    await ex.shutdown(grace=0)


async def test_a_call_through_a_connection_may_not_change_its_target(
    api: FakeApi, connector: FakeConnector
) -> None:
    ex = executor(api)
    api.add(call_body("c1", mode="echo", stored="http://attacker", password="guess"))
    api.add(call_body("c2", headers={"Accept": "text/plain", "AUTHORIZATION": "Bearer x"}))
    await until(lambda: phase(api, "c1") == phase(api, "c2") == "Failed")
    assert finished_reason(api, "c1") == finished_reason(api, "c2") == "OverrideRefused"
    assert api.objects["c1"]["status"]["statusMessage"] == (
        "Connection api refused the per-call inputs password, stored: a call through a FAKE "
        "Connection may set only headers (without authorization), mode, timeout; where the "
        "call goes and its credentials are the Connection's. To allow more, list the input "
        "names in the Connection's spec.allowedOverrides."
    )
    assert "headers.AUTHORIZATION" in api.objects["c2"]["status"]["statusMessage"]
    assert "guess" not in repr(api.writes) and "attacker" not in repr(api.writes)
    # Refused before anything else: no Secret read, never claimed, never called.
    assert api.secret_reads == 0
    assert connector.calls == []
    assert all("executor" not in api.objects[n]["status"] for n in ("c1", "c2"))
    await ex.shutdown(grace=0)


async def test_safe_inputs_and_timeout_pass_and_win_over_stored_values(
    api: FakeApi, connector: FakeConnector
) -> None:
    ex = executor(api)
    api.connection_spec["values"] = {"stored": "v", "mode": "raise"}
    api.add(call_body("c1", mode="echo", headers={"Accept": "x"}, timeout=5))
    await until(lambda: phase(api, "c1") == "Succeeded")
    assert connector.calls == [
        {"stored": "v", "mode": "echo", "headers": {"Accept": "x"}, "password": SECRET}
    ]
    await ex.shutdown(grace=0)


async def test_allowed_overrides_widen_what_a_call_may_change(
    api: FakeApi, connector: FakeConnector
) -> None:
    ex = executor(api)
    api.connection_spec["allowedOverrides"] = ["stored", "headers.Authorization"]
    api.add(call_body("c1", stored="per-call", headers={"authorization": "Bearer own"}))
    api.add(call_body("c2", other="x"))
    await until(lambda: phase(api, "c1") == "Succeeded" and phase(api, "c2") == "Failed")
    assert api.objects["c1"]["status"]["outputs"] == {"echo": "got ***", "stored": "per-call"}
    assert finished_reason(api, "c2") == "OverrideRefused"
    assert "input other:" in api.objects["c2"]["status"]["statusMessage"]
    await ex.shutdown(grace=0)


async def test_ad_hoc_calls_take_every_input(api: FakeApi, connector: FakeConnector) -> None:
    ex = executor(api)
    body = call_body("c1", stored="ad-hoc", password="own-password", anything="goes")
    body["spec"]["connection"] = {"type": "FAKE", "inputs": body["spec"]["connection"]["inputs"]}
    api.add(body)
    await until(lambda: phase(api, "c1") == "Succeeded")
    assert connector.calls == [{"stored": "ad-hoc", "password": "own-password", "anything": "goes"}]
    assert api.secret_reads == 0  # no Connection, no Secret
    await ex.shutdown(grace=0)


async def test_rest_through_a_connection_never_reaches_another_host(api: FakeApi) -> None:
    """The real REST connector: retargets are refused, the attacker gets no request."""
    legit, attacker = HttpServer().start(), HttpServer().start()
    try:
        api.connection_spec = {
            "type": "REST",
            "values": {"url": legit.url},
            "secretRef": {"name": "s"},
        }
        api.secret = {"bearer_token": SECRET}
        ex = executor(api)
        api.add(call_body("url", url=f"{attacker.url}/steal"))
        api.add(call_body("proxy", proxy=attacker.url, path="/x"))
        api.add(call_body("verify", verify=False, path="/x"))
        api.add(call_body("legit", path="/legit", method="POST", json={"k": 1}))
        names = ("url", "proxy", "verify", "legit")
        await until(lambda: all(phase(api, n) in rules.TERMINAL for n in names))
        for name in ("url", "proxy", "verify"):
            assert finished_reason(api, name) == "OverrideRefused"
            message = api.objects[name]["status"]["statusMessage"]
            assert f"refused the per-call input {name}:" in message
        assert phase(api, "legit") == "Succeeded"
        assert api.objects["legit"]["status"]["outputs"]["json"]["authorization"] == "Bearer ***"
        assert legit.requests == [Seen("POST", "/legit", "", f"Bearer {SECRET}")]
        assert attacker.requests == []
        await ex.shutdown(grace=0)
    finally:
        legit.stop()
        attacker.stop()


def test_standalone_entry_point_detection() -> None:
    alone = ["kopf", "run", "--standalone", "-m", "kumulus.handlers.connection_executor"]
    assert runs_alone(alone)
    assert runs_alone(["kopf", "run", "--module=kumulus.handlers.connection_executor"])
    both = ["kopf", "run", "-m", "kumulus.handlers", "-m", "kumulus.handlers.connection_executor"]
    assert not runs_alone(both)
    assert not runs_alone(["kopf", "run", "-m", "kumulus.handlers"])
    assert not runs_alone(["pytest", "-m", "kumulus.handlers.connection_executor"])
    assert kopf_modules(both) == ["kumulus.handlers", "kumulus.handlers.connection_executor"]
