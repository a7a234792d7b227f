"""Unit tests of the node agent's Pod status mapping (phase, conditions, container states)."""

from __future__ import annotations

import pytest

from kumulus.devcluster.nodeagent.status import (
    ContainerRecord,
    Running,
    Terminated,
    Waiting,
    build_pod_status,
    compute_conditions,
    compute_phase,
    state_from_dict,
    state_to_dict,
)

pytestmark = pytest.mark.unit

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"


def rec(
    name: str, state: Waiting | Running | Terminated, last: Terminated | None = None
) -> ContainerRecord:
    return ContainerRecord(name=name, image="img", state=state, last_state=last)


def done(code: int) -> Terminated:
    return Terminated(exit_code=code, reason="Completed" if code == 0 else "Error", finished_at=T1)


@pytest.mark.parametrize(
    ("policy", "states", "phase"),
    [
        ("Never", [Waiting("ContainerCreating")], "Pending"),
        ("Never", [Running(T0)], "Running"),
        ("Never", [Running(T0), done(1)], "Running"),
        ("Never", [done(0), done(0)], "Succeeded"),
        ("Never", [done(0), done(2)], "Failed"),
        ("OnFailure", [done(0)], "Succeeded"),
        ("Always", [done(0)], "Running"),
        ("Never", [Waiting("ErrImagePull")], "Pending"),
    ],
)
def test_phase_from_containers(
    policy: str, states: list[Waiting | Running | Terminated], phase: str
) -> None:
    records = [rec(f"c{i}", s) for i, s in enumerate(states)]
    assert compute_phase(policy, [], records) == phase


def test_crash_loop_counts_as_stopped_not_pending() -> None:
    looping = rec("c", Waiting("CrashLoopBackOff"), last=done(1))
    assert compute_phase("Always", [], [looping]) == "Running"
    assert compute_phase("OnFailure", [], [looping]) == "Running"


def test_init_containers_gate_the_phase() -> None:
    main = rec("main", Waiting("PodInitializing"))
    assert compute_phase("Never", [rec("init", Running(T0))], [main]) == "Pending"
    assert compute_phase("Never", [rec("init", done(1))], [main]) == "Failed"
    assert compute_phase("OnFailure", [rec("init", done(1))], [main]) == "Pending"
    assert compute_phase("Never", [rec("init", done(0))], [rec("main", Running(T0))]) == "Running"


def test_conditions_running_pod_is_ready() -> None:
    conditions = compute_conditions("Running", [], [rec("c", Running(T0))], {}, T1)
    by_type = {c["type"]: c for c in conditions}
    assert [c["type"] for c in conditions] == [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    ]
    assert all(c["status"] == "True" for c in conditions)
    assert by_type["Ready"]["lastTransitionTime"] == T1


def test_conditions_keep_transition_time_while_unchanged() -> None:
    previous = {"Ready": {"type": "Ready", "status": "True", "lastTransitionTime": T0}}
    conditions = compute_conditions("Running", [], [rec("c", Running(T0))], previous, T1)
    assert {c["type"]: c for c in conditions}["Ready"]["lastTransitionTime"] == T0


def test_conditions_name_unready_and_uninitialized_containers() -> None:
    conditions = compute_conditions(
        "Pending",
        [rec("i1", Running(T0))],
        [rec("a", Waiting("PodInitializing")), rec("b", Waiting("PodInitializing"))],
        {},
        T1,
    )
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Initialized"]["status"] == "False"
    assert by_type["Initialized"]["message"] == "containers with incomplete status: [i1]"
    assert by_type["Ready"]["reason"] == "ContainersNotReady"
    assert by_type["Ready"]["message"] == "containers with unready status: [a b]"


def test_completed_pod_is_not_ready_with_reason_pod_completed() -> None:
    conditions = compute_conditions("Succeeded", [], [rec("c", done(0))], {}, T1)
    ready = {c["type"]: c for c in conditions}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")


def test_build_pod_status_shape() -> None:
    record = rec(
        "c", Terminated(137, "OOMKilled", T1, started_at=T0, signal=9, container_id="kumulus://42")
    )
    record.restart_count = 2
    record.container_id = "kumulus://42"
    status = build_pod_status(
        restart_policy="Never",
        init_containers=[],
        containers=[record],
        start_time=T0,
        previous_conditions={},
        now=T1,
    )
    assert status["phase"] == "Failed"
    assert status["podIP"] == status["hostIP"] == "127.0.0.1"
    assert status["startTime"] == T0
    assert "initContainerStatuses" not in status
    (cs,) = status["containerStatuses"]
    assert cs["name"] == "c"
    assert cs["restartCount"] == 2
    assert cs["containerID"] == "kumulus://42"
    assert cs["ready"] is False
    assert cs["state"]["terminated"] == {
        "exitCode": 137,
        "reason": "OOMKilled",
        "finishedAt": T1,
        "startedAt": T0,
        "signal": 9,
        "containerID": "kumulus://42",
    }


def test_phase_override_and_reason() -> None:
    status = build_pod_status(
        restart_policy="Never",
        init_containers=[],
        containers=[rec("c", done(143))],
        start_time=T0,
        previous_conditions={},
        now=T1,
        phase_override="Failed",
        reason="DeadlineExceeded",
        message="Pod was active on the node longer than the specified deadline",
    )
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")


@pytest.mark.parametrize(
    "state",
    [
        Waiting("ErrImagePull", "no command"),
        Running(T0),
        Terminated(1, "Error", T1, T0, "boom", None, "kumulus://9"),
    ],
)
def test_state_round_trip(state: Waiting | Running | Terminated) -> None:
    assert state_from_dict(state_to_dict(state)) == state
