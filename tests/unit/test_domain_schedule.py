"""Schedule decisions with an injected clock: due instants, catch-up, concurrency, history,
names, status and the drift-free sleep."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kumulus.domain import schedule as sch
from kumulus.domain.cron import CronSchedule
from kumulus.domain.schedule import (
    ANNOTATION_CATCH_UP,
    COUNT_CAP,
    LABEL_SCHEDULE,
    LABEL_SCHEDULED_TIME,
    MAX_SLEEP_SECONDS,
    Decision,
    Fire,
    InvalidSpec,
    Policy,
    RunView,
    decide,
    execution_manifest,
    execution_name,
    invalid_status,
    sleep_seconds,
)

pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def policy(schedule: str = "*/5 * * * * *", zone: str = "UTC", **kw: Any) -> Policy:
    return Policy(cron=CronSchedule.of(schedule, zone), **kw)


def run(seconds: float, phase: str = "Running", **kw: Any) -> RunView:
    return RunView(name=execution_name("s", at(seconds)), instant=at(seconds), phase=phase, **kw)


def decision(
    pol: Policy,
    now: float,
    *,
    last: float | None = None,
    runs: Sequence[RunView] = (),
    decided: float | None = None,
    reported: float | None = None,
    created: float = 0.0,
) -> Decision:
    status = {"lastScheduleTime": at(last).strftime("%Y-%m-%dT%H:%M:%SZ")} if last else {}
    return decide(
        pol,
        at(now),
        name="s",
        created=at(created),
        status=status,
        runs=list(runs),
        decided_through=at(decided) if decided is not None else None,
        reported_through=at(reported) if reported is not None else None,
        generation=1,
    )


def fired(d: Decision) -> list[tuple[float, bool]]:
    return [((f.instant - T0).total_seconds(), f.catch_up) for f in d.fire]


# --------------------------------------------------------------------------- names


def test_an_instant_always_maps_to_the_same_name() -> None:
    assert execution_name("nightly", at(5)) == "nightly-1704067205"
    assert execution_name("nightly", at(3600)) == "nightly-1704070800"
    assert execution_name("nightly", at(5)) != execution_name("nightly", at(10))
    assert execution_name("nightly", at(5)) != execution_name("nightly-2", at(5))


def test_long_schedule_names_are_hash_shortened_and_stay_distinct() -> None:
    a, b = "x" * 80 + "a", "x" * 80 + "b"
    name = execution_name(a, at(5))
    assert len(name) <= 63 and name.endswith("-1704067205")
    # The name of an instant must not change between operator versions, or an upgrade would
    # start that instant a second time: the expected value is fixed here.
    assert name == "x" * 41 + "-f5c8d1ee85-1704067205"
    assert name != execution_name(b, at(5))


# --------------------------------------------------------------------------- sleeping


def test_sleep_is_computed_from_the_absolute_instant_and_capped() -> None:
    assert sleep_seconds(at(0), at(2.5)) == 2.5
    assert sleep_seconds(at(3), at(2.5)) == 0.0
    assert sleep_seconds(at(0), at(3600)) == MAX_SLEEP_SECONDS
    assert sleep_seconds(at(0), None) is None


def test_the_timer_does_not_drift_over_hours() -> None:
    """Wake-ups come late by random jitter; every decision still targets the cron instant."""
    pol = policy("*/5 * * * * *")
    rng = random.Random(7)
    now = at(0.3)
    decided: datetime | None = None
    fires: list[Fire] = []
    runs: list[RunView] = []
    for _ in range(2 * 3600 // 5):  # two hours of a 5-second schedule
        d = decide(
            pol,
            now,
            name="s",
            created=T0,
            status={},
            runs=runs[-1:],
            decided_through=decided,
            reported_through=None,
        )
        fires += d.fire
        runs += [RunView(execution_name("s", f.instant), f.instant, "Succeeded") for f in d.fire]
        decided = now
        assert d.wake_at is not None
        slept = 0.0
        while True:  # sleep in chunks, each recomputed from the absolute wake-up time
            chunk = sleep_seconds(now + timedelta(seconds=slept), d.wake_at)
            assert chunk is not None
            if chunk <= 0:
                break
            slept += chunk
        now = now + timedelta(seconds=slept + rng.uniform(0.001, 0.8))
    assert len(fires) == 2 * 3600 // 5 - 1
    assert [f.instant for f in fires] == [at(5 * i) for i in range(1, len(fires) + 1)]
    assert not any(f.catch_up for f in fires)


# --------------------------------------------------------------------------- spec


def test_invalid_schedule_and_time_zone_have_their_own_reasons() -> None:
    with pytest.raises(InvalidSpec) as err:
        Policy.from_spec({"schedule": "61 * * * *"})
    assert err.value.reason == "InvalidSchedule"
    assert "minute field: 61 is out of range" in err.value.message
    with pytest.raises(InvalidSpec) as err:
        Policy.from_spec({"schedule": "@daily", "timeZone": "Europe/Atlantis"})
    assert err.value.reason == "InvalidTimeZone"
    status = invalid_status(err.value, T0, {}, 3)
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == (
        "Ready",
        "False",
        "InvalidTimeZone",
    )
    assert ready["observedGeneration"] == 3 and status["nextScheduleTimes"] is None


def test_spec_defaults_match_the_crd() -> None:
    pol = Policy.from_spec({"schedule": "@hourly"})
    assert (pol.concurrency, pol.catch_up, pol.max_catch_up) == ("Allow", "Latest", 10)
    assert (pol.successful_history_limit, pol.failed_history_limit) == (3, 1)
    assert pol.cron.zone.key == "UTC" and pol.starting_deadline_seconds is None


# --------------------------------------------------------------------------- on time


def test_a_new_schedule_waits_for_its_first_instant() -> None:
    d = decision(policy(), 0.4)
    assert d.fire == () and d.wake_at == at(5)
    assert d.next_times == (at(5), at(10), at(15))
    assert d.status["nextScheduleTimes"] == [
        "2024-01-01T00:00:05Z",
        "2024-01-01T00:00:10Z",
        "2024-01-01T00:00:15Z",
    ]
    assert d.status["nextScheduleTime"] == "2024-01-01T00:00:05Z"
    ready = d.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "Scheduled")


def test_the_instant_the_timer_woke_for_starts_on_time() -> None:
    d = decision(policy(), 5.02, decided=0.4)
    assert fired(d) == [(5, False)]
    assert d.status["lastScheduleTime"] == "2024-01-01T00:00:05Z"
    assert d.status["active"] == [{"name": "s-1704067205"}]
    assert d.wake_at == at(10)


def test_an_instant_with_an_execution_never_starts_twice() -> None:
    # The status was not updated yet (crash after create, or another process created it).
    d = decision(policy(), 5.3, decided=0.4, runs=[run(5)])
    assert d.fire == ()
    assert d.status["lastScheduleTime"] == "2024-01-01T00:00:05Z"
    # Or the status says so while the Execution is already gone (history pruning).
    assert decision(policy(), 5.3, decided=0.4, last=5).fire == ()


def test_allow_overlaps_runs() -> None:
    d = decision(policy(concurrency="Allow"), 10.01, last=5, decided=5.5, runs=[run(5)])
    assert fired(d) == [(10, False)]
    assert [a["name"] for a in d.status["active"]] == ["s-1704067205", "s-1704067210"]


# --------------------------------------------------------------------------- concurrency


def test_forbid_holds_the_run_back_while_one_is_active() -> None:
    d = decision(policy(concurrency="Forbid"), 10.01, last=5, decided=5.5, runs=[run(5)])
    assert d.fire == () and d.blocked_by == "s-1704067205"
    assert [(s.reason, s.count, s.first) for s in d.skips] == [("Blocked", 1, at(10))]
    assert "concurrencyPolicy Forbid" in d.skips[0].why
    assert d.status["lastScheduleTime"] == "2024-01-01T00:00:05Z"


def test_forbid_with_catch_up_none_skips_for_good() -> None:
    pol = policy(concurrency="Forbid", catch_up="None")
    d = decision(pol, 10.01, last=5, decided=5.5, runs=[run(5)])
    assert d.fire == ()
    assert [(s.reason, s.count, s.first, s.last) for s in d.skips] == [
        ("Skipped", 1, at(10), at(10))
    ]
    assert "Execution s-1704067205 was still running" in d.skips[0].why
    # When the active run ends, nothing is caught up; the next instant runs on time.
    after = decision(
        pol, 12, last=5, decided=10.01, reported=d_reported(d), runs=[run(5, "Succeeded")]
    )
    assert after.fire == () and after.skips == ()
    assert fired(decision(pol, 15.01, last=5, decided=12, runs=[run(5, "Succeeded")])) == [
        (15, False)
    ]


def d_reported(d: Decision) -> float | None:
    return (d.reported_through - T0).total_seconds() if d.reported_through else None


def test_forbid_with_latest_starts_the_newest_held_back_run_when_the_active_one_ends() -> None:
    pol = policy(concurrency="Forbid", catch_up="Latest")
    first = decision(pol, 10.01, last=5, decided=5.5, runs=[run(5)])
    second = decision(pol, 15.01, last=5, decided=10.01, reported=d_reported(first), runs=[run(5)])
    # 10 is superseded by 15 (reported as skipped), 15 waits.
    assert [(s.reason, s.first, s.last) for s in second.skips] == [
        ("Skipped", at(10), at(10)),
        ("Blocked", at(15), at(15)),
    ]
    ended = decision(
        pol, 17, last=5, decided=15.01, reported=d_reported(second), runs=[run(5, "Succeeded")]
    )
    assert fired(ended) == [(15, True)]  # late: a catch-up of a held-back run
    assert ended.skips == ()


def test_forbid_with_all_runs_held_back_instants_one_at_a_time() -> None:
    pol = policy(concurrency="Forbid", catch_up="All", max_catch_up=5)
    d = decision(pol, 17, last=5, decided=15.01, runs=[run(5, "Succeeded")])
    assert fired(d) == [(10, True)]  # the oldest first; 15 waits for it
    d2 = decision(pol, 19, last=10, decided=17, runs=[run(5, "Succeeded"), run(10)])
    assert d2.fire == ()
    d3 = decision(pol, 19.5, last=10, decided=19, runs=[run(10, "Succeeded")])
    assert fired(d3) == [(15, True)]


def test_replace_cancels_the_active_run_and_starts_the_new_one() -> None:
    pol = policy(concurrency="Replace")
    runs = [run(5), run(0, desired_state="Cancelled")]
    d = decision(pol, 10.01, last=5, decided=5.5, runs=runs)
    assert fired(d) == [(10, False)]
    assert d.cancel == ("s-1704067205",)  # the one already cancelled is left alone


def test_replace_after_downtime_starts_only_the_newest() -> None:
    pol = policy(concurrency="Replace", catch_up="All", max_catch_up=3)
    d = decision(pol, 31, last=5, runs=[run(5)])
    assert fired(d) == [(30, True)]
    assert d.cancel == ("s-1704067205",)
    skipped = [s for s in d.skips if s.reason == "Skipped"]
    assert skipped[0].count == 4 and "Replace starts only the newest" in skipped[0].why


# --------------------------------------------------------------------------- catch-up


@pytest.mark.parametrize(
    ("catch_up", "expected", "skipped"),
    [
        ("None", [], 12),
        ("Latest", [(60, True)], 11),
        ("All", [(50, True), (55, True), (60, True)], 9),
    ],
)
def test_catch_up_after_downtime(
    catch_up: str, expected: list[tuple[float, bool]], skipped: int
) -> None:
    # The operator was down from 0 to 62: 12 instants (5..60) were missed.
    d = decision(policy(catch_up=catch_up, max_catch_up=3), 62, last=0.0001)
    assert fired(d) == expected
    skips = [s for s in d.skips if s.reason == "Skipped"]
    assert sum(s.count for s in skips) == skipped
    assert skips[0].first == at(5)
    assert catch_up in skips[0].why


def test_catch_up_never_bursts_beyond_max_catch_up_even_after_a_year() -> None:
    pol = policy("* * * * * *", catch_up="All", max_catch_up=5)
    now = 366 * 86400.0
    d = decision(pol, now, last=1)
    assert fired(d) == [(now - 4 + i, True) for i in range(5)]
    assert d.skips[0].count == COUNT_CAP  # "1000 or more"


def test_starting_deadline_skips_runs_that_are_too_late() -> None:
    pol = policy(catch_up="All", max_catch_up=10, starting_deadline_seconds=7)
    assert fired(decision(pol, 62, last=1)) == [(55, True), (60, True)]
    latest = policy(catch_up="Latest", starting_deadline_seconds=3)
    d = decision(latest, 64, last=1)
    assert d.fire == ()
    assert "startingDeadlineSeconds 3" in d.skips[0].why
    # A late wake-up of the timer is skipped just the same.
    assert decision(latest, 9, last=5, decided=4.9).fire == ()


def test_a_current_instant_is_not_counted_as_missed() -> None:
    d = decision(policy(catch_up="None"), 65.2, last=55, decided=60.1)
    # 60 was missed (the previous round saw no 60? it ran at 60.1 but the status says 55)
    assert fired(d) == [(65, False)]
    assert [s.first for s in d.skips] == [at(60)]


def test_skips_are_reported_once() -> None:
    pol = policy(catch_up="None")
    first = decision(pol, 62, last=1)
    assert first.skips and first.reported_through == at(60)
    again = decision(pol, 62.5, last=1, decided=62, reported=60)
    assert again.skips == ()


# --------------------------------------------------------------------------- suspend


def test_suspend_starts_nothing_and_resume_catches_up() -> None:
    suspended = decision(policy(suspend=True), 12, last=5, decided=5.5)
    assert suspended.fire == () and suspended.skips == () and suspended.wake_at is None
    assert suspended.status["nextScheduleTimes"] is None
    assert suspended.status["conditions"][0]["reason"] == "Suspended"
    # On resume (a spec change: no instant is current) catchUp decides.
    assert fired(decision(policy(catch_up="Latest"), 31, last=5)) == [(30, True)]
    assert decision(policy(catch_up="None"), 31, last=5).fire == ()


# --------------------------------------------------------------------------- history, status


def test_history_limits_prune_the_oldest_finished_runs() -> None:
    runs = [run(i * 5, "Succeeded") for i in range(1, 6)]
    runs += [run(30, "Failed"), run(35, "Cancelled"), run(40, "Failed"), run(45)]
    pol = policy(successful_history_limit=2, failed_history_limit=1)
    d = decision(pol, 46, last=45, decided=45.5, runs=runs)
    assert d.prune == tuple(execution_name("s", at(t)) for t in (5, 10, 15, 30, 35))


def test_last_successful_time_comes_from_the_newest_succeeded_run() -> None:
    runs = [run(5, "Succeeded", end_time=at(7)), run(10, "Failed", end_time=at(12))]
    d = decision(policy(), 13, last=10, decided=12, runs=runs)
    assert d.status["lastSuccessfulTime"] == "2024-01-01T00:00:07Z"
    assert d.status["active"] is None


def test_run_view_reads_the_instant_from_the_label() -> None:
    body = {
        "metadata": {"name": "s-1704067205", "labels": {LABEL_SCHEDULED_TIME: "1704067205"}},
        "spec": {"desiredState": "Cancelled"},
        "status": {"phase": "Running", "endTime": None},
    }
    view = RunView.from_dict(body)
    assert (view.instant, view.active, view.desired_state) == (at(5), True, "Cancelled")
    assert RunView.from_dict({"metadata": {"name": "x"}}).instant is None


def test_execution_manifest_is_owned_labelled_and_templated() -> None:
    schedule = {
        "metadata": {"name": "nightly", "namespace": "ops", "uid": "u-1"},
        "spec": {
            "flowRef": {"name": "report"},
            "inputs": {"k": 1},
            "mode": "development",
            "executionTemplate": {"timeoutSeconds": 60, "retry": {"limit": 2}},
        },
    }
    m = execution_manifest(schedule, Fire(at(5), catch_up=True))
    meta = m["metadata"]
    assert meta["name"] == "nightly-1704067205" and meta["namespace"] == "ops"
    assert meta["labels"][LABEL_SCHEDULE] == "nightly"
    assert meta["labels"][LABEL_SCHEDULED_TIME] == "1704067205"
    assert meta["annotations"][ANNOTATION_CATCH_UP] == "true"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kumulus.dev/v1alpha1",
            "kind": "Schedule",
            "name": "nightly",
            "uid": "u-1",
            "controller": True,
        }
    ]
    assert m["spec"] == {
        "type": "FLOW",
        "flowRef": {"name": "report"},
        "mode": "development",
        "inputs": {"k": 1},
        "timeoutSeconds": 60,
        "retry": {"limit": 2},
    }
    on_time = execution_manifest(schedule, Fire(at(5)))
    assert ANNOTATION_CATCH_UP not in on_time["metadata"]["annotations"]


def test_schedules_in_a_dst_zone_decide_in_utc() -> None:
    # 02:30 Vienna does not exist on 2024-03-31: the run is due at 03:00 local = 01:00Z.
    pol = policy("30 2 * * *", "Europe/Vienna")
    gap = datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    d = decide(
        pol,
        gap + timedelta(milliseconds=20),
        name="s",
        created=gap - timedelta(days=1),
        status={"lastScheduleTime": "2024-03-30T01:30:00Z"},
        runs=[],
        decided_through=gap - timedelta(seconds=30),
        reported_through=None,
    )
    assert [f.instant for f in d.fire] == [gap]
    assert d.wake_at == datetime(2024, 4, 1, 0, 30, tzinfo=UTC)


# --------------------------------------------------------------------------- taken run names


def test_only_an_execution_controlled_by_the_schedule_uid_is_its_run() -> None:
    def ex(**ref: object) -> dict[str, object]:
        owner = {"kind": "Schedule", "name": "s", "uid": "u1", "controller": True, **ref}
        return {"metadata": {"name": "s-1", "ownerReferences": [owner]}}

    assert sch.owns_run(ex(), "u1")
    assert not sch.owns_run(ex(uid="other"), "u1")  # the Schedule's name, another uid
    assert not sch.owns_run(ex(controller=False), "u1")
    assert not sch.owns_run(ex(kind="Execution"), "u1")
    assert not sch.owns_run({"metadata": {"name": "s-1"}}, "u1")
    assert not sch.owns_run(ex(uid=""), "")


def test_fire_results_drop_taken_runs_and_set_run_started() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    status = {
        "active": [{"name": "s-1"}, {"name": "s-2"}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Scheduled"}],
        "lastScheduleTime": "2024-01-01T00:00:02Z",
    }
    taken = sch.with_fire_results(
        status, started=0, taken=[("s-2", "name taken")], now=now, generation=3
    )
    assert taken["active"] == [{"name": "s-1"}]
    assert taken["lastScheduleTime"] == "2024-01-01T00:00:02Z"  # decided, not tried again
    cond = {c["type"]: c for c in taken["conditions"]}
    assert cond["Ready"]["status"] == "True"
    assert (cond["RunStarted"]["status"], cond["RunStarted"]["reason"]) == (
        "False",
        "RunNameTaken",
    )
    assert cond["RunStarted"]["message"] == "name taken"
    assert cond["RunStarted"]["observedGeneration"] == 3
    # Only a taken run: nothing active is left.
    only = sch.with_fire_results(
        {"active": [{"name": "s-2"}]}, started=0, taken=[("s-2", "x")], now=now, generation=1
    )
    assert only["active"] is None
    # A later round that starts a run sets it back; a round that fires nothing keeps it.
    fixed = sch.with_fire_results(taken, started=1, taken=[], now=now, generation=3)
    assert {c["type"]: c["status"] for c in fixed["conditions"]}["RunStarted"] == "True"
    assert sch.with_fire_results(taken, started=0, taken=[], now=now, generation=3) == taken
    message = sch.run_name_taken_message("s", "s-1704067205", now)
    assert "s-1704067205" in message and "2024-01-01T00:00:00Z" in message
