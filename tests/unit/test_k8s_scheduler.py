"""The scheduler's rounds against a faked API: what it creates, reports and writes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kumulus.domain.settings import Settings
from kumulus.k8s import scheduler as mod
from kumulus.k8s.scheduler import EVENT_WINDOW, ScheduleLoop, Scheduler

pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class FakeApi:
    """Stands in for kumulus.k8s.schedules and events (unit tests only)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.executions: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []
        self.conflict_next = False
        self.taken: set[str] = set()  # names another operator process created first
        self.squatted: dict[str, dict[str, Any]] = {}  # names taken by objects we do not own

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any]:
        return self.body

    async def list_runs(self, namespace: str, label: str) -> list[dict[str, Any]]:
        return list(self.executions.values())

    async def create_execution(self, manifest: Mapping[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        if name in self.executions or name in self.taken or name in self.squatted:
            return False
        self.executions[name] = dict(manifest)
        return True

    async def get_execution(self, namespace: str, name: str) -> dict[str, Any] | None:
        if name in self.squatted:
            return self.squatted[name]
        if name in self.taken:  # created by another process of this operator: ours
            owner = {"kind": "Schedule", "name": "s", "uid": "u1", "controller": True}
            return {"metadata": {"name": name, "ownerReferences": [owner]}}
        return self.executions.get(name)

    async def patch_schedule_status(
        self, namespace: str, name: str, rv: str | None, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        if self.conflict_next:
            self.conflict_next = False
            raise mod.schedules.Conflict("changed")
        self.patches.append(dict(status))
        merged = dict(self.body.get("status") or {})
        for key, value in status.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self.body["status"] = merged
        return self.body

    async def cancel_execution(self, namespace: str, name: str) -> None:
        self.executions[name].setdefault("spec", {})["desiredState"] = "Cancelled"

    async def delete_execution(self, namespace: str, name: str) -> None:
        self.executions.pop(name, None)

    async def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    body = {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Schedule",
        "metadata": {
            "name": "s",
            "namespace": "ns",
            "uid": "u1",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": {"flowRef": {"name": "f"}, "schedule": "*/5 * * * * *"},
    }
    fake = FakeApi(body)
    for name in (
        "get_schedule",
        "list_runs",
        "create_execution",
        "get_execution",
        "patch_schedule_status",
        "cancel_execution",
        "delete_execution",
    ):
        monkeypatch.setattr(mod.schedules, name, getattr(fake, name))
    monkeypatch.setattr(mod.events, "post_event", fake.post_event)
    return fake


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


async def test_a_round_creates_the_due_execution_and_writes_the_status(api: FakeApi) -> None:
    clock = Clock(T0 + timedelta(seconds=0.2))
    loop = ScheduleLoop(("ns", "s"), api.body, clock)
    assert await loop.round() == T0 + timedelta(seconds=5)
    assert api.executions == {}
    clock.at = T0 + timedelta(seconds=5.01)
    assert await loop.round() == T0 + timedelta(seconds=10)
    assert list(api.executions) == ["s-1704067205"]
    assert api.body["status"]["lastScheduleTime"] == "2024-01-01T00:00:05Z"
    assert api.body["status"]["active"] == [{"name": "s-1704067205"}]
    assert [e[1] for e in api.events] == ["Started"]
    assert "0.010 s after its time" in api.events[0][2]


async def test_an_instant_another_process_created_is_not_reported_as_started(
    api: FakeApi,
) -> None:
    clock = Clock(T0 + timedelta(seconds=0.2))
    loop = ScheduleLoop(("ns", "s"), api.body, clock)
    await loop.round()
    api.taken.add("s-1704067205")
    clock.at = T0 + timedelta(seconds=5.01)
    await loop.round()
    assert api.executions == {} and api.events == []


def squatter(name: str, instant: int, owner_uid: str | None) -> dict[str, Any]:
    """An Execution someone created first under a run's name, with the Schedule's labels."""
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"kumulus.dev/schedule": "s", "kumulus.dev/scheduled-time": str(instant)},
    }
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {"kind": "Schedule", "name": "s", "uid": owner_uid, "controller": True}
        ]
    return {"metadata": meta, "spec": {"run": False}, "status": {"phase": "Pending"}}


@pytest.mark.parametrize("owner_uid", [None, "someone-else"], ids=["no-owner", "other-uid"])
async def test_a_run_name_taken_by_a_foreign_execution_is_reported_never_skipped_silently(
    api: FakeApi, owner_uid: str | None
) -> None:
    api.body["spec"]["concurrencyPolicy"] = "Forbid"
    clock = Clock(T0 + timedelta(seconds=0.2))
    loop = ScheduleLoop(("ns", "s"), api.body, clock)
    await loop.round()
    foreign = squatter("s-1704067205", 1704067205, owner_uid)
    api.squatted["s-1704067205"] = foreign
    clock.at = T0 + timedelta(seconds=5.01)
    await loop.round()
    # A Warning Event naming the taken run, and the RunStarted condition says so.
    assert [(e[0], e[1]) for e in api.events] == [("Warning", "RunNameTaken")]
    assert "s-1704067205" in api.events[0][2] and "2024-01-01T00:00:05Z" in api.events[0][2]
    status = api.body["status"]
    cond = next(c for c in status["conditions"] if c["type"] == "RunStarted")
    assert (cond["status"], cond["reason"]) == ("False", "RunNameTaken")
    assert "s-1704067205" in cond["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    # The foreign object is not counted as a run: not active, and Forbid does not wait for it.
    assert status.get("active") is None
    api.executions["s-1704067205"] = foreign  # now also listed by label, like the real API
    clock.at = T0 + timedelta(seconds=10.01)
    await loop.round()
    assert "s-1704067210" in api.executions
    assert api.executions["s-1704067205"] is foreign and foreign["spec"] == {"run": False}
    cond = next(c for c in api.body["status"]["conditions"] if c["type"] == "RunStarted")
    assert (cond["status"], cond["reason"]) == ("True", "Started")
    assert api.body["status"]["active"] == [{"name": "s-1704067210"}]
    assert [e[1] for e in api.events] == ["RunNameTaken", "Started"]


async def test_a_conflicting_status_write_runs_the_round_again(api: FakeApi) -> None:
    clock = Clock(T0 + timedelta(seconds=5.01))
    loop = ScheduleLoop(("ns", "s"), api.body, clock)
    loop.decided_through, loop.decided_generation = T0, 1
    api.conflict_next = True
    await loop.round()
    assert loop.wake.is_set()
    loop.wake.clear()
    await loop.round()  # the Execution exists: nothing is created twice
    assert list(api.executions) == ["s-1704067205"]
    assert api.body["status"]["lastScheduleTime"] == "2024-01-01T00:00:05Z"


async def test_an_invalid_spec_reports_once_and_waits(api: FakeApi) -> None:
    api.body["spec"]["schedule"] = "* * *"
    loop = ScheduleLoop(("ns", "s"), api.body, Clock(T0))
    assert await loop.round() is None
    assert await loop.round() is None
    assert [(t, r) for t, r, _ in api.events] == [("Warning", "InvalidSchedule")]
    ready = api.body["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSchedule")
    assert len(api.patches) == 1


async def test_skip_events_are_batched(api: FakeApi) -> None:
    api.body["spec"]["catchUp"] = "None"
    api.body["status"] = {"lastScheduleTime": "2024-01-01T00:00:00Z"}
    clock = Clock(T0 + timedelta(seconds=31))
    loop = ScheduleLoop(("ns", "s"), api.body, clock)
    await loop.round()  # after downtime: 6 missed instants skipped, one Event
    assert [(r, m.split(":")[0]) for _, r, m in api.events] == [
        ("Skipped", "Skipped 6 runs due 2024-01-01T00")
    ]
    clock.at = T0 + timedelta(seconds=40.5)  # the timer woke late: 35 skipped, 40 runs
    await loop.round()
    assert [r for _, r, _ in api.events] == ["Skipped", "Started"]  # the skip waits
    clock.at = T0 + EVENT_WINDOW + timedelta(seconds=31.5)  # 61.5: 45, 50, 55 skipped
    await loop.round()
    skipped = [m for _, r, m in api.events if r == "Skipped"]
    assert len(skipped) == 2
    assert skipped[1].startswith("Skipped 4 runs due 2024-01-01T00:00:35Z .. 2024-01-01T00:00:55Z")


async def test_the_scheduler_starts_updates_and_stops_loops(api: FakeApi) -> None:
    sched = Scheduler(Settings(namespaces=("ns",)), clock=Clock(T0))
    sched.on_schedule(None, {"metadata": {"name": "x", "namespace": "other", "uid": "u9"}})
    assert sched.loops == {}
    sched.on_schedule(None, api.body)
    loop = sched.loops[("ns", "s")]
    loop.wake.clear()
    sched.on_schedule("MODIFIED", {**api.body, "metadata": {**api.body["metadata"]}})
    assert not loop.wake.is_set()  # a status-only change does not run a round
    changed = {**api.body, "metadata": {**api.body["metadata"], "generation": 2}}
    sched.on_schedule("MODIFIED", changed)
    assert loop.wake.is_set()
    loop.wake.clear()
    run = {
        "metadata": {
            "name": "s-1",
            "namespace": "ns",
            "ownerReferences": [{"kind": "Schedule", "name": "s", "uid": "u1", "controller": True}],
        },
        "status": {"phase": "Running"},
    }
    sched.on_execution("ADDED", run)
    assert loop.wake.is_set()
    loop.wake.clear()
    sched.on_execution("MODIFIED", run)
    assert not loop.wake.is_set()  # same phase
    sched.on_schedule("DELETED", api.body)
    assert sched.loops == {}
    await sched.shutdown()
