"""The operator's metrics (kumulus.observability): what each recorded transition counts.

The engine runs with its API adapters faked (as in test_engine_queue) so the counters are
checked where they are recorded: after the status writes that won. The registry is the
process's, so every check compares a value before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.local_servers import free_port

from kumulus.domain.settings import Settings
from kumulus.k8s import engine as engine_mod
from kumulus.k8s import events, executions, pods
from kumulus.observability import metrics
from kumulus.observability.server import MetricsServer

pytestmark = pytest.mark.unit


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Sample values now, to compare with later ones."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = [value(n, **labels) for n, labels in samples]

    def moved(self) -> list[float]:
        return [
            value(n, **labels) - b for (n, labels), b in zip(self.samples, self.before, strict=True)
        ]


def execution(name: str, type_: str = "SCRIPT", status: dict[str, Any] | None = None) -> dict:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"type": type_, "script": "def handler(system, this):\n    pass\n"},
        "status": status or {},
    }


# --------------------------------------------------------------------------- recorder


def test_a_flow_lifecycle_counts_once_per_transition() -> None:
    clock = [1735689600.2]  # 0.2 s after the creationTimestamp second began
    rec = metrics.ExecutionMetrics(clock=lambda: clock[0])
    key = ("ns", "life")
    body = execution("life", "FLOW")
    delta = Delta(
        ("kumulus_executions_created_total", {"type": "FLOW"}),
        ("kumulus_execution_create_to_pod_seconds_count", {"type": "FLOW"}),
        ("kumulus_execution_create_to_pod_seconds_sum", {"type": "FLOW"}),
        ("kumulus_execution_create_to_running_seconds_count", {"type": "FLOW"}),
        ("kumulus_execution_retries_total", {"type": "FLOW"}),
        (
            "kumulus_executions_finished_total",
            {"type": "FLOW", "phase": "Failed", "reason": "FlowError"},
        ),
        ("kumulus_execution_duration_seconds_count", {"type": "FLOW", "phase": "Failed"}),
        ("kumulus_execution_duration_seconds_sum", {"type": "FLOW", "phase": "Failed"}),
    )
    rec.seen(key, body)
    clock[0] += 0.3
    started = {"phase": "Pending", "attempts": 1, "podName": "life-a1"}
    rec.status_written(key, body, started)
    body["status"] = started
    rec.seen(key, body)  # later watch events change nothing
    clock[0] += 1.0
    rec.status_written(key, body, {"phase": "Running"})
    body["status"] = {**started, "phase": "Running"}
    # A failed attempt with a retry, then a second attempt (not a "first" Pod or start again).
    rec.status_written(key, body, {"phase": "Pending", "nextRetryTime": "2025-01-01T00:01:00Z"})
    body["status"] = {**started, "phase": "Pending"}
    rec.status_written(key, body, {"phase": "Pending", "attempts": 2, "podName": "life-a2"})
    body["status"] = {**started, "attempts": 2}
    rec.status_written(key, body, {"phase": "Running"})
    body["status"] = {**started, "attempts": 2, "phase": "Running"}
    clock[0] += 2.0
    finished = {
        "phase": "Failed",
        "conditions": [{"type": "Finished", "status": "True", "reason": "FlowError"}],
    }
    rec.status_written(key, body, finished)
    assert rec.tracked() == 0  # forgotten once finished
    # A repeated write of the terminal phase (e.g. outputs) is not a second end.
    body["status"] = {**body["status"], **finished}
    rec.status_written(key, body, finished)
    created, pod_n, pod_sum, running_n, retries, failed, dur_n, dur_sum = delta.moved()
    assert (created, pod_n, running_n, retries, failed, dur_n) == (1, 1, 1, 1, 1, 1)
    assert pod_sum == pytest.approx(0.3)  # from the first sight, not the whole second
    assert dur_sum == pytest.approx(3.3)


def test_creation_is_estimated_from_the_timestamp_when_first_seen_late() -> None:
    rec = metrics.ExecutionMetrics(clock=lambda: 1735689700.0)  # 100 s after creation
    body = execution("late")
    rec.seen(("ns", "late"), body)
    # Seen late (e.g. after an operator restart): creationTimestamp + 1 s is the better bound.
    assert rec.created_at(("ns", "late"), body) == 1735689601.0
    assert rec.created_at(("ns", "other"), execution("other")) == 1735689601.0
    early = metrics.ExecutionMetrics(clock=lambda: 1735689600.4)
    early.seen(("ns", "early"), body)
    assert early.created_at(("ns", "early"), body) == 1735689600.4


def test_finished_executions_are_not_tracked() -> None:
    rec = metrics.ExecutionMetrics()
    rec.seen(("ns", "done"), execution("done", status={"phase": "Succeeded"}))
    assert rec.tracked() == 0
    rec.seen(("ns", "live"), execution("live"))
    rec.forget(("ns", "live"))
    assert rec.tracked() == 0


def test_connection_executions_count_with_the_reason_given() -> None:
    rec = metrics.ExecutionMetrics()
    body = execution("call", "TASK")  # the old alias counts as CONNECTION
    delta = Delta(
        ("kumulus_executions_created_total", {"type": "CONNECTION"}),
        ("kumulus_execution_create_to_running_seconds_count", {"type": "CONNECTION"}),
        (
            "kumulus_executions_finished_total",
            {"type": "CONNECTION", "phase": "Failed", "reason": "Timeout"},
        ),
    )
    rec.status_written(("ns", "call"), body, {"phase": "Running", "attempts": 1})
    body["status"] = {"phase": "Running", "attempts": 1}
    rec.status_written(("ns", "call"), body, {"phase": "Failed"}, reason="Timeout")
    assert delta.moved() == [1, 1, 1]


def test_label_values_are_bounded() -> None:
    assert metrics.reason_label("PodStartTimeout") == "PodStartTimeout"
    for odd in ("exit code 3: boom", "", None, "lowercase", "X" * 80, "Name/with/slash"):
        assert metrics.reason_label(odd) == "Other"
    assert metrics.type_label({"spec": {"type": "TASK"}}) == "CONNECTION"
    assert metrics.type_label({"spec": {}}) == "FLOW"
    assert metrics.type_label({"spec": {"type": "SOMETHING"}}) == "OTHER"


def test_active_executions_are_counted_from_the_cache() -> None:
    bodies = [
        execution("a", "FLOW", {"phase": "Running"}),
        execution("b", "FLOW", {"phase": "Running"}),
        execution("c", "SCRIPT"),  # no phase yet: Pending
        execution("d", "CONNECTION", {"phase": "Succeeded"}),  # finished: not active
    ]
    counts = metrics.count_active(bodies)
    assert counts[("FLOW", "Running")] == 2
    assert counts[("SCRIPT", "Pending")] == 1
    assert counts[("CONNECTION", "Running")] == 0  # every series present, at 0
    assert sum(counts.values()) == 3


def test_gauges_are_read_at_scrape_time() -> None:
    cache = [execution("a", "FLOW", {"phase": "Waiting"})]
    metrics.bind_engine(lambda: cache, lambda: 7)
    metrics.bind_connection_executor(lambda: 3, lambda: 2)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert families["kumulus_engine_queue_depth"].samples[0].value == 7
    assert families["kumulus_connection_calls_queued"].samples[0].value == 3
    assert families["kumulus_connection_calls_running"].samples[0].value == 2
    active = {
        (s.labels["type"], s.labels["phase"]): s.value
        for s in families["kumulus_executions_active"].samples
    }
    assert active[("FLOW", "Waiting")] == 1
    cache.append(execution("b", "FLOW", {"phase": "Waiting"}))
    assert value("kumulus_executions_active", type="FLOW", phase="Waiting") == 2
    # The process' own metrics are there too (CPU and memory on the dashboard).
    assert "process_cpu_seconds" in families


def test_connection_calls_and_schedule_lag() -> None:
    delta = Delta(
        ("kumulus_connection_call_duration_seconds_count", {"connector": "REST"}),
        ("kumulus_connection_call_duration_seconds_bucket", {"connector": "REST", "le": "0.25"}),
        ("kumulus_schedule_lag_seconds_count", {"catch_up": "true"}),
        ("kumulus_schedule_lag_seconds_bucket", {"catch_up": "false", "le": "0.1"}),
    )
    metrics.connection_call("REST", 0.2)
    metrics.schedule_fired(120.0, catch_up=True)
    metrics.schedule_fired(0.05, catch_up=False)
    assert delta.moved() == [1, 1, 1, 1]


# --------------------------------------------------------------------------- engine


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[str] = []

    async def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return {**manifest, "status": {"phase": "Pending"}}

    async def patch_status(
        self, namespace: str, name: str, rv: str | None, status: dict[str, Any]
    ) -> dict[str, Any]:
        body = self.objects[name]
        updated = {
            **body,
            "metadata": {
                **body["metadata"],
                "resourceVersion": str(int(body["metadata"]["resourceVersion"]) + 1),
            },
            "status": {**(body.get("status") or {}), **status},
        }
        self.objects[name] = updated
        return updated

    async def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append(reason)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(pods, "create_pod", fake.create_pod)
    monkeypatch.setattr(executions, "patch_execution_status", fake.patch_status)
    monkeypatch.setattr(events, "post_event", fake.post_event)
    yield fake


def runner_pod(name: str, owner: str, phase: str, rv: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(rv),
            "creationTimestamp": "2025-01-01T00:00:01Z",
            "ownerReferences": [
                {"kind": "Execution", "name": owner, "uid": f"uid-{owner}", "controller": True}
            ],
        },
        "status": {"phase": phase},
    }


async def settle(engine: engine_mod.Engine) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not engine.backlog and not engine._running and not engine._tasks:
            return
    raise AssertionError("the engine did not settle")


async def test_the_engine_records_each_transition_it_writes(api: FakeApi) -> None:
    engine = engine_mod.Engine(Settings(manage_runner_rbac=False))
    delta = Delta(
        ("kumulus_executions_created_total", {"type": "SCRIPT"}),
        ("kumulus_execution_create_to_pod_seconds_count", {"type": "SCRIPT"}),
        ("kumulus_execution_create_to_running_seconds_count", {"type": "SCRIPT"}),
        (
            "kumulus_executions_finished_total",
            {"type": "SCRIPT", "phase": "Succeeded", "reason": "Succeeded"},
        ),
        ("kumulus_execution_duration_seconds_count", {"type": "SCRIPT", "phase": "Succeeded"}),
    )
    body = execution("eng")
    api.objects["eng"] = body
    engine.on_execution("ADDED", body)
    await settle(engine)
    assert delta.moved()[:3] == [1, 1, 0]
    for rv, phase in ((10, "Running"), (11, "Succeeded")):
        engine.on_execution("MODIFIED", api.objects["eng"])
        engine.on_pod("MODIFIED", runner_pod("eng-a1", "eng", phase, rv))
        await settle(engine)
    await engine.shutdown()
    assert delta.moved() == [1, 1, 1, 1, 1]
    assert api.events == ["CreatedPod", "Started", "Succeeded"]
    assert metrics.EXECUTIONS.created_at(("ns", "eng"), body) == 1735689601.0  # forgotten


# --------------------------------------------------------------------------- server


async def test_the_server_answers_metrics_and_survives_a_taken_port() -> None:
    port = free_port()
    server = MetricsServer("127.0.0.1", port)
    assert await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"kumulus_executions_created", "kumulus_engine_queue_depth"} <= names
        # A second server on the same port logs and gives up instead of raising.
        assert not await MetricsServer("127.0.0.1", port).start()
    finally:
        await server.stop()
    assert not await MetricsServer("127.0.0.1", 0).start()  # 0 disables
