"""The reconciler's scheduling and cache (kumulus.k8s.engine) with the API adapters faked.

What the burst behaviour rests on: at most ``reconcile_workers`` reconciles at once, a key
queued once however often it is triggered, a conflict answered by the watch instead of a read,
and finished Executions cached as small views without their Pods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from kumulus.domain import lifecycle
from kumulus.domain.settings import Settings
from kumulus.k8s import engine as engine_mod
from kumulus.k8s import events, executions, pods

pytestmark = pytest.mark.unit

SCRIPT = "def handler(system, this):\n    pass\n"


def execution(name: str, rv: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": str(rv),
        },
        "spec": {"type": "SCRIPT", "script": SCRIPT, "inputs": {"big": "x" * 1000}},
        "status": status or {},
    }


class FakeApi:
    """Records the adapter calls the engine makes; ``conflicts`` patches fail with 409."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.patches: list[tuple[str, str | None, dict[str, Any]]] = []
        self.gets: list[str] = []
        self.events: list[str] = []
        self.conflicts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.objects: dict[str, dict[str, Any]] = {}

    async def _call(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1

    async def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        await self._call()
        self.created.append(manifest["metadata"]["name"])
        return {**manifest, "status": {"phase": "Pending"}}

    async def patch_status(
        self, namespace: str, name: str, rv: str | None, status: dict[str, Any]
    ) -> dict[str, Any]:
        await self._call()
        if self.conflicts:
            self.conflicts -= 1
            raise executions.Conflict(name)
        self.patches.append((name, rv, dict(status)))
        body = self.objects[name]
        new_rv = int(body["metadata"]["resourceVersion"]) + 100
        updated = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": str(new_rv)},
            "status": {**(body.get("status") or {}), **status},
        }
        self.objects[name] = updated
        return updated

    async def get_execution(self, namespace: str, name: str) -> dict[str, Any] | None:
        await self._call()
        self.gets.append(name)
        return self.objects.get(name)

    async def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        await self._call()
        self.events.append(reason)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(pods, "create_pod", fake.create_pod)
    monkeypatch.setattr(executions, "patch_execution_status", fake.patch_status)
    monkeypatch.setattr(executions, "get_execution", fake.get_execution)
    monkeypatch.setattr(events, "post_event", fake.post_event)
    yield fake


def new_engine(workers: int = 16) -> engine_mod.Engine:
    return engine_mod.Engine(Settings(manage_runner_rbac=False, reconcile_workers=workers))


async def settle(engine: engine_mod.Engine, fake: FakeApi, seconds: float = 5.0) -> None:
    """Wait until no reconcile is queued or running and no API call is in flight."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await asyncio.sleep(0.02)
        if not engine.backlog and not engine._running and not fake.in_flight:
            return
    raise AssertionError("the engine did not settle")


async def test_a_burst_is_reconciled_by_a_bounded_number_of_workers(api: FakeApi) -> None:
    engine = new_engine(workers=3)
    for i in range(30):
        body = execution(f"x-{i}", rv=1)
        api.objects[body["metadata"]["name"]] = body
        engine.on_execution(None, body)
    assert engine.backlog == 30
    await settle(engine, api)
    await engine.shutdown()
    assert sorted(api.created) == sorted(f"x-{i}-a1" for i in range(30))
    # Three workers, one call each at a time, plus at most BACKGROUND_SLOTS Event posts.
    assert api.max_in_flight <= 3 + engine_mod.BACKGROUND_SLOTS
    assert sorted(api.events) == ["CreatedPod"] * 30


async def test_a_key_triggered_while_queued_is_reconciled_once(api: FakeApi) -> None:
    engine = new_engine(workers=1)
    body = execution("once", rv=1)
    api.objects["once"] = body
    for _ in range(5):
        engine.on_execution("MODIFIED", body)
    assert engine.backlog == 1
    await settle(engine, api)
    await engine.shutdown()
    assert api.created == ["once-a1"]
    assert len(api.patches) == 1


async def test_a_conflict_waits_for_the_newer_version_from_the_watch(api: FakeApi) -> None:
    engine = new_engine()
    body = execution("raced", rv=1)
    api.objects["raced"] = body
    api.conflicts = 1
    engine.on_execution(None, body)
    await settle(engine, api)
    # The patch lost the race; nothing was read back.
    assert api.patches == [] and api.gets == []
    # The newer version arrives through the watch: decided again and patched, still no read.
    newer = execution("raced", rv=5, status={"runner": {"attempt": 0, "state": "running"}})
    api.objects["raced"] = newer
    engine.on_execution("MODIFIED", newer)
    await settle(engine, api)
    await engine.shutdown()
    assert api.gets == []
    assert [(name, rv, status["phase"]) for name, rv, status in api.patches] == [
        ("raced", "5", "Pending")
    ]


async def test_a_conflict_reads_the_execution_when_the_watch_is_late(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "CONFLICT_WAIT_SECONDS", 0.1)
    engine = new_engine()
    body = execution("late", rv=1)
    api.objects["late"] = execution("late", rv=7)
    api.conflicts = 1
    engine.on_execution(None, body)
    await asyncio.sleep(0.5)  # the fallback timer fires after 0.1 s
    await settle(engine, api)
    await engine.shutdown()
    assert api.gets == ["late"]
    assert [(name, rv) for name, rv, _ in api.patches] == [("late", "7")]


async def test_a_transition_the_table_does_not_list_is_refused(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A broken rule: "start" also claims the Execution succeeded. The engine applies nothing
    # of that decision (no Pod, no patch, no Event), says why, and does not retry it.
    start = next(t for t in lifecycle.TRANSITIONS if t.name == "start")

    def start_and_claim_success(ctx: lifecycle.Ctx) -> list[lifecycle.Action]:
        return [*start.effect(ctx), lifecycle.PatchStatus({"phase": "Succeeded"})]

    broken = dataclasses.replace(start, effect=start_and_claim_success)
    table = tuple(broken if t is start else t for t in lifecycle.TRANSITIONS)
    monkeypatch.setattr(lifecycle, "TRANSITIONS", table)
    engine = new_engine()
    body = execution("lawless", rv=1)
    api.objects["lawless"] = body
    with caplog.at_level(logging.ERROR, logger="kumulus.engine"):
        engine.on_execution(None, body)
        await settle(engine, api)
    timers = dict(engine._timers)
    await engine.shutdown()
    assert (api.created, api.patches, api.events) == ([], [], [])
    assert ("ns", "lawless") not in timers
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("Refused a transition of Execution ns/lawless: ")
    assert "'start'" in record.getMessage() and "Succeeded" in record.getMessage()


async def test_finished_executions_are_cached_small_and_without_pods(api: FakeApi) -> None:
    engine = new_engine()
    status = {
        "phase": "Succeeded",
        "attempts": 1,
        "podName": "done-a1",
        "endTime": "2025-01-01T00:00:00Z",
        "outputs": {"blob": "y" * 10000},
        "runner": {"attempt": 1, "state": "ended"},
        "conditions": [{"type": "Finished", "status": "True", "message": "z" * 1000}],
    }
    engine.on_execution(None, execution("done", rv=3, status=status))
    pod = {
        "metadata": {
            "name": "done-a1",
            "namespace": "ns",
            "resourceVersion": "4",
            "ownerReferences": [
                {"kind": "Execution", "name": "done", "uid": "uid-done", "controller": True}
            ],
        },
        "spec": {"containers": [{"name": "runner", "env": [{"name": "A", "value": "b"}]}]},
        "status": {"phase": "Succeeded"},
    }
    engine.on_pod(None, pod)
    await settle(engine, api)
    await engine.shutdown()
    cached = engine.executions[("ns", "done")]
    assert cached["status"] == {
        "phase": "Succeeded",
        "attempts": 1,
        "podName": "done-a1",
        "endTime": "2025-01-01T00:00:00Z",
    }
    assert cached["spec"] == {"type": "SCRIPT"}
    assert ("ns", "done") not in engine.pods
    assert api.created == [] and api.patches == []


async def test_a_pod_leaving_the_watch_is_read_once_to_see_how_it_ended(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished Pods leave the (field-selected) watch as DELETED; the engine reads the Pod."""
    engine = new_engine()
    running_status = {"phase": "Running", "attempts": 1, "podName": "run-a1"}
    body = execution("run", rv=10, status=running_status)
    api.objects["run"] = body
    pod = {
        "metadata": {
            "name": "run-a1",
            "namespace": "ns",
            "resourceVersion": "11",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "ownerReferences": [
                {"kind": "Execution", "name": "run", "uid": "uid-run", "controller": True}
            ],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [{"state": {"running": {}}}],
        },
    }
    finished = {
        **pod,
        "metadata": {**pod["metadata"], "resourceVersion": "12"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}],
        },
    }
    reads: list[str] = []

    async def get_pod(namespace: str, name: str) -> dict[str, Any]:
        reads.append(name)
        return finished

    monkeypatch.setattr(pods, "get_pod", get_pod)
    engine.on_pod(None, pod)
    engine.on_execution(None, body)
    await settle(engine, api)
    assert reads == [] and api.patches == []  # Running and reported so: nothing to do
    engine.on_pod("DELETED", pod)  # the Pod finished and left the watch (previous state)
    await settle(engine, api)
    await engine.shutdown()
    assert reads == ["run-a1"]
    assert [status["phase"] for _, _, status in api.patches] == ["Succeeded"]


async def test_a_quiet_pod_is_read_again_after_the_resync_interval(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch broken by an API server restart misses a Pod that ended: the resync reads it."""
    engine = engine_mod.Engine(Settings(manage_runner_rbac=False, pod_resync_seconds=0.2))
    running = {"phase": "Running", "attempts": 1, "podName": "quiet-a1"}
    body = execution("quiet", rv=10, status=running)
    api.objects["quiet"] = body
    pod = {
        "metadata": {
            "name": "quiet-a1",
            "namespace": "ns",
            "resourceVersion": "11",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "ownerReferences": [
                {"kind": "Execution", "name": "quiet", "uid": "uid-quiet", "controller": True}
            ],
        },
        "status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]},
    }
    ended = {
        **pod,
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}],
        },
    }
    reads: list[str] = []

    async def get_pod(namespace: str, name: str) -> dict[str, Any]:
        reads.append(name)
        return ended

    monkeypatch.setattr(pods, "get_pod", get_pod)
    engine.on_pod(None, pod)
    engine.on_execution(None, body)
    await settle(engine, api)
    assert reads == [] and api.patches == []
    await asyncio.sleep(0.6)  # no event at all: the resync timer fires and reads the Pod
    await settle(engine, api)
    await engine.shutdown()
    assert reads[:1] == ["quiet-a1"]
    assert [status["phase"] for _, _, status in api.patches] == ["Succeeded"]


def test_pod_view_keeps_what_the_lifecycle_reads() -> None:
    pod = {
        "metadata": {
            "name": "p-a1",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "9",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "deletionTimestamp": "2025-01-01T00:01:00Z",
            "ownerReferences": [{"kind": "Execution", "name": "p", "controller": True}],
            "managedFields": [{"manager": "x"}],
            "labels": {"a": "b"},
        },
        "spec": {"containers": [{"name": "runner"}]},
        "status": {
            "phase": "Failed",
            "reason": "DeadlineExceeded",
            "message": "m",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"state": {"terminated": {"exitCode": 1}}}],
            "podIP": "127.0.0.1",
        },
    }
    view = engine_mod.pod_view(pod)
    assert "spec" not in view and "managedFields" not in view["metadata"]
    assert "podIP" not in view["status"]
    from kumulus.domain.outcome import PodView

    assert PodView.from_dict(view) == PodView.from_dict(pod)


def test_executions_and_pods_have_event_handlers_only() -> None:
    """EventOnlyDiffBaseStorage skips kopf's diff for these kinds: nothing may read it."""
    import kopf
    from kopf._cogs.structs.references import Resource

    import kumulus.handlers  # noqa: F401  (registers every handler)
    from kumulus.handlers.execution import EVENT_ONLY_KINDS

    registry = kopf.get_default_registry()
    kinds = {
        "Execution": Resource("kumulus.dev", "v1alpha1", "executions", kind="Execution"),
        "Pod": Resource("", "v1", "pods", kind="Pod"),
    }
    assert set(kinds) == EVENT_ONLY_KINDS
    for kind, resource in kinds.items():
        assert registry._watching.has_handlers(resource=resource), kind
        assert not registry._changing.has_handlers(resource=resource), kind
        assert not registry._spawning.has_handlers(resource=resource), kind
