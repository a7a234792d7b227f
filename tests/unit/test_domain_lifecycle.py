"""The Execution state machine: every row of the transition table and the bad endings."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kumulus.domain import lifecycle as lc
from kumulus.domain.outcome import PodView
from kumulus.domain.settings import Settings

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = Settings(pod_start_deadline_seconds=120)
FLOW = {
    "metadata": {"name": "f", "generation": 1},
    "spec": {"code": "def handler(s, t): pass"},
    "status": {"observedGeneration": 1, "codeHash": "sha256:" + "0" * 64},
}
UNCHECKED_FLOW = {"metadata": {"name": "f", "generation": 2}, "spec": FLOW["spec"]}
BUSYBOX_FLOW = {**FLOW, "spec": {**FLOW["spec"], "image": "busybox:latest"}}


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def exe(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    base_spec: dict[str, Any] = {"type": "FLOW", "flowRef": {"name": "f"}}
    base_spec.update(spec)
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": "ex", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": base_spec,
        "status": status or {},
    }


def sa_waited(seconds: float) -> dict[str, Any]:
    """An unstarted Execution's status after waiting ``seconds`` for a missing ServiceAccount."""
    return {
        "phase": "Pending",
        "conditions": [
            {
                "type": "Started",
                "status": "False",
                "reason": "ServiceAccountNotFound",
                "message": "Waiting for ServiceAccount nope to exist.",
                "lastTransitionTime": ts(seconds),
            }
        ],
    }


def flow_checked_waited(seconds: float) -> dict[str, Any]:
    """An unstarted Execution's status after waiting ``seconds`` for its Flow's code check."""
    return {
        "phase": "Pending",
        "conditions": [
            {
                "type": "Started",
                "status": "False",
                "reason": "FlowNotChecked",
                "message": "Waiting for the operator to check the code of Flow f.",
                "lastTransitionTime": ts(seconds),
            }
        ],
    }


def started(phase: str = "Pending", attempts: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "attempts": attempts,
        "podName": f"ex-a{attempts}",
        "startTime": ts(60),
        **extra,
    }


def pod(phase: str = "Running", attempt: int = 1, **kw: Any) -> PodView:
    kw.setdefault("owner_uid", "u")  # controlled by exe()
    return PodView(name=f"ex-a{attempt}", phase=phase, created=NOW - timedelta(seconds=5), **kw)


def decide(
    execution: dict[str, Any],
    p: PodView | None = None,
    children: list[lc.ChildView] | None = None,
    flow: dict[str, Any] | None = FLOW,
    settings: Settings = SETTINGS,
    missing_service_account: str | None = None,
) -> list[lc.Action]:
    return lc.decide(
        execution,
        p,
        children or [],
        NOW,
        flow=flow,
        settings=settings,
        missing_service_account=missing_service_account,
    )


def rule(
    execution: dict[str, Any],
    p: PodView | None = None,
    children: list[lc.ChildView] | None = None,
    flow: dict[str, Any] | None = FLOW,
    missing_service_account: str | None = None,
) -> str | None:
    ctx = lc.Ctx(execution, p, children or [], flow, NOW, SETTINGS, missing_service_account)
    t = lc.select(ctx)
    return t.name if t else None


def status_patch(actions: list[lc.Action]) -> dict[str, Any]:
    patches = [a for a in actions if isinstance(a, lc.PatchStatus)]
    assert len(patches) == 1, actions
    return patches[0].patch


def cond(patch: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in patch["conditions"] if c["type"] == type_)


def of(actions: list[lc.Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


# ---------------------------------------------------------------- start / hold


def test_start_creates_pod_and_one_status_patch() -> None:
    actions = decide(exe())
    [create] = of(actions, lc.CreatePod)
    assert create.manifest["metadata"]["name"] == "ex-a1"
    patch = status_patch(actions)
    assert patch["phase"] == "Pending"
    assert patch["attempts"] == 1
    assert patch["podName"] == "ex-a1"
    assert patch["startTime"] == "2025-01-01T12:00:00Z"
    assert cond(patch, "Started")["status"] == "True"
    assert [e.reason for e in of(actions, lc.EmitEvent)] == ["CreatedPod"]
    assert of(actions, lc.Requeue) == [lc.Requeue(120.0)]
    assert isinstance(actions[0], lc.CreatePod)  # Pod first: a crash leaves an adoptable Pod


def test_run_false_holds_pending_without_pod() -> None:
    actions = decide(exe(run=False))
    assert not of(actions, lc.CreatePod)
    patch = status_patch(actions)
    assert patch["phase"] == "Pending"
    assert cond(patch, "Started") | {"status": "False", "reason": "NotStarted"} == cond(
        patch, "Started"
    )


def test_hold_is_not_repeated() -> None:
    held = exe(run=False)
    patch = status_patch(decide(held))
    held["status"] = patch
    assert decide(held) == []


def test_run_true_after_hold_starts() -> None:
    held = exe(run=False)
    held["status"] = status_patch(decide(held))
    held["spec"]["run"] = True
    assert rule(held) == "start"


def test_paused_before_start_holds_with_reason_paused() -> None:
    held = exe(run=False)
    held["status"] = status_patch(decide(held))
    held["spec"]["run"] = True
    held["spec"]["desiredState"] = "Paused"
    assert rule(held) == "hold"
    assert cond(status_patch(decide(held)), "Started")["reason"] == "Paused"


def test_script_needs_no_flow() -> None:
    actions = decide(exe(type="SCRIPT", flowRef=None, script="print(1)"), flow=None)
    assert of(actions, lc.CreatePod)


def test_connection_is_left_to_its_executor() -> None:
    assert decide(exe(type="TASK", flowRef=None, connection={"type": "REST"}), flow=None) == []


# ---------------------------------------------------------------- pre-start failures


def test_invalid_inputs_fail_without_pod() -> None:
    flow = {**FLOW, "spec": {"inputSchema": {"type": "object", "required": ["n"]}}}
    actions = decide(exe(inputs={}), flow=flow)
    assert not of(actions, lc.CreatePod)
    patch = status_patch(actions)
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "InvalidInputs"
    assert "'n' is a required property" in patch["statusMessage"]


def test_valid_inputs_start() -> None:
    flow = {**FLOW, "spec": {"inputSchema": {"type": "object", "required": ["n"]}}}
    assert rule(exe(inputs={"n": 1}), flow=flow) == "start"


def old_exe(seconds_ago: float, **spec: Any) -> dict[str, Any]:
    execution = exe(**spec)
    execution["metadata"]["creationTimestamp"] = ts(seconds_ago)
    return execution


def test_missing_flow_waits_then_fails() -> None:
    # A young Execution waits for its Flow (kubectl apply -f dir/ creates them in any order).
    actions = decide(old_exe(5), flow=None)
    patch = status_patch(actions)
    assert patch["phase"] == "Pending"
    assert cond(patch, "Started")["reason"] == "FlowNotFound"
    assert any(isinstance(a, lc.Requeue) and a.after <= 1.0 for a in actions)
    assert not any(isinstance(a, lc.CreatePod) for a in actions)
    # Once it waits already, a repeated decision does not write status again, only requeues.
    waiting = old_exe(6)
    waiting["status"] = {"phase": "Pending", "conditions": patch["conditions"]}
    again = decide(waiting, flow=None)
    assert [type(a) for a in again] == [lc.Requeue]
    # After flow_wait_seconds it fails with a clear reason.
    failed = status_patch(decide(old_exe(SETTINGS.flow_wait_seconds + 1), flow=None))
    assert failed["phase"] == "Failed"
    assert cond(failed, "Finished")["reason"] == "FlowNotFound"
    assert "waited 60s" in failed["statusMessage"]


def test_flow_not_ready_fails() -> None:
    flow = {
        "metadata": {"generation": 2},
        "spec": {},
        "status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "False", "message": "Line 3: bad"}],
        },
    }
    patch = status_patch(decide(exe(), flow=flow))
    assert cond(patch, "Finished")["reason"] == "FlowNotReady"
    assert "Line 3" in patch["statusMessage"]


# ---------------------------------------------------------------- running


def test_pod_pending_requeues_until_the_start_deadline() -> None:
    actions = decide(exe(started()), pod("Pending"))
    assert actions == [lc.Requeue(115.0)]


@pytest.mark.parametrize(
    ("state", "phase"), [(None, "Running"), ("running", "Running"), ("waiting", "Waiting")]
)
def test_pod_running_maps_runner_state(state: str | None, phase: str) -> None:
    status = started()
    if state:
        status["runner"] = {"attempt": 1, "state": state}
    actions = decide(exe(status), pod("Running", running=True))
    assert status_patch(actions)["phase"] == phase
    # One Event per phase passed: a late look at a waiting runner is Started, then Waiting.
    expected = ["Started", "Waiting"] if phase == "Waiting" else ["Started"]
    assert [e.reason for e in of(actions, lc.EmitEvent)] == expected


def test_runner_state_paused_and_resumed() -> None:
    status = started("Running", runner={"attempt": 1, "state": "paused"})
    actions = decide(exe(status), pod("Running"))
    assert status_patch(actions)["phase"] == "Paused"
    status = started("Paused", runner={"attempt": 1, "state": "running"})
    actions = decide(exe(status), pod("Running"))
    assert status_patch(actions)["phase"] == "Running"
    assert [e.reason for e in of(actions, lc.EmitEvent)] == ["Resumed"]


def test_runner_report_of_an_older_attempt_is_ignored() -> None:
    status = started("Running", attempts=2, runner={"attempt": 1, "state": "waiting"})
    assert decide(exe(status), pod("Running", attempt=2)) == []


def test_steady_running_does_nothing() -> None:
    status = started("Running", runner={"attempt": 1, "state": "running"})
    assert decide(exe(status), pod("Running")) == []


# ---------------------------------------------------------------- endings


def test_exit_0_succeeds() -> None:
    status = started(
        "Running", runner={"attempt": 1, "state": "ended", "result": {"message": "done"}}
    )
    actions = decide(exe(status), pod("Succeeded", exit_code=0))
    patch = status_patch(actions)
    assert patch["phase"] == "Succeeded"
    assert patch["statusMessage"] == "done"
    assert patch["endTime"] == "2025-01-01T12:00:00Z"
    assert patch["duration"] == "1m0s"
    assert cond(patch, "Finished")["status"] == "True"
    assert [e.reason for e in of(actions, lc.EmitEvent)] == ["Succeeded"]


def test_exit_1_fails_with_runner_message() -> None:
    runner = {"attempt": 1, "state": "ended", "result": {"message": "boom", "traceback": "TB"}}
    patch = status_patch(decide(exe(started("Running", runner=runner)), pod("Failed", exit_code=1)))
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "FlowError"
    assert "boom" in patch["statusMessage"] and "TB" in patch["statusMessage"]


def test_exit_2_is_a_runner_error() -> None:
    patch = status_patch(decide(exe(started("Running")), pod("Failed", exit_code=2)))
    assert cond(patch, "Finished")["reason"] == "RunnerError"


def test_exit_3_is_cancelled() -> None:
    patch = status_patch(decide(exe(started("Running")), pod("Failed", exit_code=3)))
    assert patch["phase"] == "Cancelled"


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"reason": "DeadlineExceeded", "exit_code": 137}, "DeadlineExceeded"),
        ({"reason": "Evicted", "message": "low memory"}, "Evicted"),
        ({"exit_code": 137, "terminated_reason": "OOMKilled"}, "OOMKilled"),
        ({"exit_code": 128, "terminated_reason": "StartError"}, "StartError"),
        ({"exit_code": 143, "signal": 15}, "PodFailed"),
    ],
)
def test_bad_endings(kw: dict[str, Any], reason: str) -> None:
    patch = status_patch(decide(exe(started("Running"), timeoutSeconds=5), pod("Failed", **kw)))
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == reason
    assert patch["statusMessage"]


def test_deadline_message_names_the_timeout() -> None:
    p = pod("Failed", reason="DeadlineExceeded")
    patch = status_patch(decide(exe(started("Running"), timeoutSeconds=5), p))
    assert "5s" in patch["statusMessage"]


def test_pod_deleted_under_running_execution() -> None:
    patch = status_patch(decide(exe(started("Running")), None))
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "PodDeleted"


def test_pod_being_deleted_under_running_execution() -> None:
    patch = status_patch(decide(exe(started("Running")), pod("Running", deleting=True)))
    assert cond(patch, "Finished")["reason"] == "PodDeleted"


def test_pod_start_timeout_includes_waiting_reason_and_deletes_pod() -> None:
    p = PodView(
        name="ex-a1",
        owner_uid="u",
        phase="Pending",
        created=NOW - timedelta(seconds=121),
        waiting_reason="ErrImagePull",
        waiting_message="no command",
    )
    actions = decide(exe(started()), p)
    assert of(actions, lc.DeletePod) == [lc.DeletePod("ex-a1", 0)]
    patch = status_patch(actions)
    assert cond(patch, "Finished")["reason"] == "PodStartTimeout"
    assert "ErrImagePull" in patch["statusMessage"]


def test_outputs_over_the_limit_fail() -> None:
    status = started("Running", outputs={"x": "y" * 300})
    settings = Settings(output_limit_bytes=100)
    patch = status_patch(decide(exe(status), pod("Succeeded", exit_code=0), settings=settings))
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "OutputTooLarge"


def test_finished_execution_is_left_alone() -> None:
    status = started("Succeeded", endTime=ts(1))
    assert decide(exe(status), pod("Succeeded", exit_code=0)) == []


# ---------------------------------------------------------------- retries


def retrying(limit: int = 2) -> dict[str, Any]:
    return exe(started("Running"), retry={"limit": limit, "backoffSeconds": 4, "factor": 3})


def test_failed_attempt_schedules_retry() -> None:
    actions = decide(retrying(), pod("Failed", exit_code=1))
    patch = status_patch(actions)
    assert patch["phase"] == "Pending"
    assert patch["nextRetryTime"] == "2025-01-01T12:00:04Z"
    assert of(actions, lc.Requeue) == [lc.Requeue(4.0)]
    assert [e.reason for e in of(actions, lc.EmitEvent)] == ["Retrying"]
    assert not of(actions, lc.CreatePod)


def test_second_retry_backs_off_by_factor() -> None:
    ex = retrying()
    ex["status"] = started("Running", attempts=2)
    patch = status_patch(decide(ex, pod("Failed", attempt=2, exit_code=1)))
    assert patch["nextRetryTime"] == "2025-01-01T12:00:12Z"


def test_retry_waits_then_starts_next_attempt() -> None:
    ex = retrying()
    ex["status"] = started("Pending", nextRetryTime=ts(-3))
    assert decide(ex, pod("Failed", exit_code=1)) == [lc.Requeue(3.0)]
    ex["status"]["nextRetryTime"] = ts(0)
    actions = decide(ex, pod("Failed", exit_code=1))
    [create] = of(actions, lc.CreatePod)
    assert create.manifest["metadata"]["name"] == "ex-a2"
    patch = status_patch(actions)
    assert patch["attempts"] == 2
    assert patch["nextRetryTime"] is None
    assert "startTime" not in patch


def test_last_attempt_failure_is_final() -> None:
    ex = retrying(limit=2)
    ex["status"] = started("Running", attempts=3)
    patch = status_patch(decide(ex, pod("Failed", attempt=3, exit_code=1)))
    assert patch["phase"] == "Failed"


def test_runner_errors_are_not_retried() -> None:
    patch = status_patch(decide(retrying(), pod("Failed", exit_code=2)))
    assert patch["phase"] == "Failed"


def test_deleted_pod_is_retried_when_retries_are_left() -> None:
    assert rule(retrying(), None) == "retry-scheduled"


# ---------------------------------------------------------------- cancel


def test_cancel_before_start() -> None:
    actions = decide(exe(desiredState="Cancelled"))
    assert not of(actions, lc.CreatePod)
    assert status_patch(actions)["phase"] == "Cancelled"


def test_cancel_during_retry_backoff() -> None:
    ex = retrying()
    ex["status"] = started("Pending", nextRetryTime=ts(-30))
    ex["spec"]["desiredState"] = "Cancelled"
    assert rule(ex, pod("Failed", exit_code=1)) == "cancel-unstarted"


def test_cancel_running_deletes_pod_and_cancels_children() -> None:
    children = [
        lc.ChildView("c1", "FLOW", "Running", "Running", "u"),
        lc.ChildView("c2", "FLOW", "Succeeded", "Running", "u"),
        lc.ChildView("c3", "SCRIPT", "Pending", "Cancelled", "u"),
    ]
    ex = exe(started("Running"), desiredState="Cancelled")
    actions = decide(ex, pod("Running"), children)
    assert of(actions, lc.DeletePod) == [lc.DeletePod("ex-a1", 10)]
    assert of(actions, lc.PatchChild) == [lc.PatchChild("c1", {"desiredState": "Cancelled"})]


def test_cancelled_once_pod_terminates() -> None:
    ex = exe(started("Running"), desiredState="Cancelled")
    patch = status_patch(decide(ex, pod("Running", deleting=True)))
    assert patch["phase"] == "Cancelled"
    patch = status_patch(decide(ex, None))
    assert patch["phase"] == "Cancelled"


def test_success_racing_cancel_keeps_success() -> None:
    ex = exe(started("Running"), desiredState="Cancelled")
    assert status_patch(decide(ex, pod("Succeeded", exit_code=0)))["phase"] == "Succeeded"


# ---------------------------------------------------------------- children + ttl


def test_children_summary_is_patched_when_it_changes() -> None:
    status = started("Running", runner={"attempt": 1, "state": "waiting"})
    status["phase"] = "Waiting"
    children = [
        lc.ChildView("b", "SCRIPT", "Running", "Running", "u"),
        lc.ChildView("a", "FLOW", "Pending", "Running", "u"),
    ]
    actions = decide(exe(status), pod("Running"), children)
    assert status_patch(actions) == {
        "children": [
            {"name": "a", "type": "FLOW", "phase": "Pending"},
            {"name": "b", "type": "SCRIPT", "phase": "Running"},
        ]
    }
    status["children"] = status_patch(actions)["children"]
    assert decide(exe(status), pod("Running"), children) == []


def test_children_summary_rides_along_a_transition() -> None:
    children = [lc.ChildView("a", "FLOW", "Succeeded", "Running", "u")]
    actions = decide(exe(started("Running")), pod("Succeeded", exit_code=0), children)
    patch = status_patch(actions)
    assert patch["phase"] == "Succeeded"
    assert patch["children"] == [{"name": "a", "type": "FLOW", "phase": "Succeeded"}]


def test_children_the_execution_does_not_control_are_ignored() -> None:
    # Anyone who may create Executions can name one like a child and label it as one; only an
    # ownerReference to the parent's uid as controller makes it a child.
    ours = lc.ChildView.from_dict(
        {
            "metadata": {
                "name": "ex-1-1",
                "ownerReferences": [{"kind": "Execution", "uid": "u", "controller": True}],
            },
            "status": {"phase": "Running"},
        }
    )
    squatter = lc.ChildView.from_dict(
        {"metadata": {"name": "ex-1-2", "labels": {"kumulus.dev/parent": "ex"}}}
    )
    claims_name_only = lc.ChildView.from_dict(
        {
            "metadata": {
                "name": "ex-1-3",
                "ownerReferences": [
                    {"kind": "Execution", "name": "ex", "uid": "other", "controller": True}
                ],
            }
        }
    )
    not_controller = lc.ChildView.from_dict(
        {"metadata": {"name": "ex-1-4", "ownerReferences": [{"kind": "Execution", "uid": "u"}]}}
    )
    assert ours.owner_uid == "u" and squatter.owner_uid == ""
    children = [ours, squatter, claims_name_only, not_controller]
    assert lc.owned_children(exe(), children) == [ours]
    # Cancelling the parent cancels only its own children ...
    ex = exe(started("Running"), desiredState="Cancelled")
    assert of(decide(ex, pod("Running"), children), lc.PatchChild) == [
        lc.PatchChild("ex-1-1", {"desiredState": "Cancelled"})
    ]
    # ... and only they appear in status.children.
    status = started("Running", runner={"attempt": 1, "state": "running"})
    status["phase"] = "Running"
    patch = status_patch(decide(exe(status), pod("Running"), children))
    assert patch == {"children": [{"name": "ex-1-1", "type": "FLOW", "phase": "Running"}]}
    # An Execution without a uid controls nothing.
    no_uid = exe()
    del no_uid["metadata"]["uid"]
    assert lc.owned_children(no_uid, [lc.ChildView("x", "FLOW", "Running", "Running", "")]) == []


def test_ttl_waits_then_deletes() -> None:
    ex = exe(started("Succeeded", endTime=ts(10)), ttlSecondsAfterFinished=30)
    assert rule(ex) == "ttl-wait"
    assert decide(ex) == [lc.Requeue(20.0)]
    ex["status"]["endTime"] = ts(31)
    assert decide(ex) == [lc.DeleteExecution()]


def test_default_ttl_from_settings() -> None:
    ex = exe(started("Failed", endTime=ts(100)))
    actions = lc.decide(ex, None, [], NOW, flow=FLOW, settings=Settings(default_ttl_seconds=60))
    assert actions == [lc.DeleteExecution()]


def test_finishing_requeues_for_ttl() -> None:
    ex = exe(started("Running"), ttlSecondsAfterFinished=30)
    assert lc.Requeue(30.0) in decide(ex, pod("Succeeded", exit_code=0))


def _scenarios() -> dict[str, tuple[dict[str, Any], PodView | None, dict[str, Any] | None]]:
    retry = {"limit": 2, "backoffSeconds": 4}
    schema_flow = {**FLOW, "spec": {"inputSchema": {"type": "object", "required": ["n"]}}}
    bad_flow = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "False", "message": "Line 1: x"}],
        },
    }
    return {
        "ttl-expired": (
            exe(started("Failed", endTime=ts(9)), ttlSecondsAfterFinished=5),
            None,
            FLOW,
        ),
        "ttl-wait": (exe(started("Failed", endTime=ts(1)), ttlSecondsAfterFinished=5), None, FLOW),
        "connection-skip": (exe(type="CONNECTION", connection={"type": "REST"}), None, None),
        "cancel-unstarted": (exe(desiredState="Cancelled"), None, FLOW),
        "cancel-running": (exe(started("Running"), desiredState="Cancelled"), pod(), FLOW),
        "cancelled": (exe(started("Running"), desiredState="Cancelled"), None, FLOW),
        "retry-scheduled": (exe(started("Running"), retry=retry), pod("Failed", exit_code=1), FLOW),
        "failed": (exe(started("Running")), pod("Failed", exit_code=1), FLOW),
        "succeeded": (exe(started("Running")), pod("Succeeded", exit_code=0), FLOW),
        "ended-cancelled": (exe(started("Running")), pod("Failed", exit_code=3), FLOW),
        "retry-wait": (
            exe(started(nextRetryTime=ts(-5)), retry=retry),
            pod("Failed", exit_code=1),
            FLOW,
        ),
        "pod-not-owned": (exe(started("Running")), PodView(name="app", phase="Running"), FLOW),
        "image-not-allowed": (exe(), None, BUSYBOX_FLOW),
        "service-account-wait": (exe(), None, FLOW),
        "service-account-not-found": (exe(sa_waited(61)), None, FLOW),
        "invalid-inputs": (exe(inputs={}), None, schema_flow),
        "flow-wait": (old_exe(1), None, None),
        "flow-not-found": (old_exe(61), None, None),
        "flow-not-ready": (exe(), None, bad_flow),
        "flow-check-wait": (exe(), None, UNCHECKED_FLOW),
        "flow-not-checked": (exe(flow_checked_waited(61)), None, UNCHECKED_FLOW),
        "start": (exe(), None, FLOW),
        "hold": (exe(run=False), None, FLOW),
        "pod-pending": (exe(started()), pod("Pending"), FLOW),
        "pod-running": (exe(started()), pod("Running"), FLOW),
    }


def test_scenarios_cover_the_whole_table() -> None:
    assert set(_scenarios()) == {t.name for t in lc.TRANSITIONS}


#: Scenarios decided right after the API server refused the Pod for a missing ServiceAccount.
MISSING_SA = {"service-account-wait": "nope", "service-account-not-found": "nope"}


@pytest.mark.parametrize("name", [t.name for t in lc.TRANSITIONS])
def test_each_transition_fires_on_its_scenario(name: str) -> None:
    execution, p, flow = _scenarios()[name]
    missing = MISSING_SA.get(name)
    assert rule(execution, p, flow=flow, missing_service_account=missing) == name
    before = copy.deepcopy((execution, flow))
    actions = decide(execution, p, flow=flow, missing_service_account=missing)
    # Deciding is pure: it reads the Execution and the Flow, never changes them ...
    assert (execution, flow) == before
    # ... and a row that moves the phase does it in exactly one status patch, to a listed phase.
    row = next(t for t in lc.TRANSITIONS if t.name == name)
    moves = [a for a in of(actions, lc.PatchStatus) if "phase" in a.patch]
    assert len(moves) == (1 if row.targets else 0), actions
    assert lc.written_phases(actions) <= row.targets


# ---------------------------------------------------------------- the table is the law


def _grid() -> Iterator[
    tuple[dict[str, Any], PodView | None, dict[str, Any] | None, Settings, str | None]
]:
    """Executions in every phase against every Pod, runner report and request (a few thousand).

    Not built from the table: phases, requests, attempts, runner states and Pods are crossed
    blindly, then a few profiles vary the Flow, the type, the TTL and the outputs.
    """
    schema_flow = {**FLOW, "spec": {"inputSchema": {"type": "object", "required": ["n"]}}}
    bad_flow = {
        "metadata": {"name": "f", "generation": 1},
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False"}]},
    }
    attempts: list[dict[str, Any]] = [
        {},
        {"attempts": 1, "podName": "ex-a1", "startTime": ts(60)},
        {"attempts": 1, "podName": "ex-a1", "nextRetryTime": ts(5)},
        {"attempts": 1, "podName": "ex-a1", "nextRetryTime": ts(-5)},
    ]
    pods: list[PodView | None] = [
        None,
        pod("Pending"),
        PodView(name="ex-a1", phase="Pending", created=NOW - timedelta(seconds=600), owner_uid="u"),
        PodView(name="app", phase="Running", running=True),  # not controlled by the Execution
        pod("Running", running=True),
        pod("Running", running=True, deleting=True),
        pod("Succeeded", exit_code=0),
        pod("Failed", exit_code=1),
        pod("Failed", exit_code=2),
        pod("Failed", exit_code=3),
        pod("Failed", exit_code=137, signal=9),
    ]
    Profile = tuple[
        dict[str, Any], dict[str, Any] | None, dict[str, Any], Settings, float, str | None
    ]
    profiles: list[Profile] = [
        # (spec, flow, extra status, settings, seconds since the Execution was created,
        #  the ServiceAccount the last Pod create was refused for)
        ({}, FLOW, {}, SETTINGS, 5, None),
        ({}, BUSYBOX_FLOW, {}, SETTINGS, 5, None),
        ({}, FLOW, {}, SETTINGS, 5, "nope"),
        ({}, FLOW, sa_waited(61), SETTINGS, 5, "nope"),
        ({"retry": {"limit": 2}}, FLOW, {}, SETTINGS, 5, None),
        ({"run": False}, FLOW, {}, SETTINGS, 5, None),
        ({"inputs": {}}, schema_flow, {}, SETTINGS, 5, None),
        ({}, bad_flow, {}, SETTINGS, 5, None),
        ({}, UNCHECKED_FLOW, {}, SETTINGS, 5, None),
        ({}, UNCHECKED_FLOW, flow_checked_waited(61), SETTINGS, 5, None),
        ({}, None, {}, SETTINGS, 5, None),
        ({}, None, {}, SETTINGS, 600, None),
        ({"type": "SCRIPT", "flowRef": None, "script": "x"}, None, {}, SETTINGS, 5, None),
        ({"type": "CONNECTION", "connection": {"type": "REST"}}, None, {}, SETTINGS, 5, None),
        ({"ttlSecondsAfterFinished": 5}, FLOW, {"endTime": ts(9)}, SETTINGS, 5, None),
        ({"ttlSecondsAfterFinished": 5}, FLOW, {"endTime": ts(1)}, SETTINGS, 5, None),
        ({}, FLOW, {"outputs": {"x": "y" * 200}}, Settings(output_limit_bytes=100), 5, None),
    ]
    phases = ["", "Pending", "Running", "Waiting", "Paused", "Succeeded", "Failed", "Cancelled"]
    for spec, flow, extra, settings, created_ago, missing in profiles:
        for phase, desired, attempt, state, p in itertools.product(
            phases,
            ["Running", "Paused", "Cancelled"],
            attempts,
            [None, "running", "waiting", "paused", "ended"],
            pods,
        ):
            status: dict[str, Any] = {**attempt, **extra}
            if phase:
                status["phase"] = phase
            if state is not None and attempt:
                status["runner"] = {"attempt": 1, "state": state}
            execution = exe(status, desiredState=desired, **spec)
            execution["metadata"]["creationTimestamp"] = ts(created_ago)
            yield execution, p if attempt else None, flow, settings, missing


def test_every_row_writes_only_the_phases_its_targets_list() -> None:
    written: dict[str, set[str]] = {t.name: set() for t in lc.TRANSITIONS}
    unlisted: dict[str, set[str]] = {}
    for execution, p, flow, settings, missing in _grid():
        ctx = lc.Ctx(execution, p, [], flow, NOW, settings, missing)
        row = lc.select(ctx)
        if row is None:
            decided = lc.decide(
                execution, p, [], NOW, flow=flow, settings=settings, missing_service_account=missing
            )
            assert lc.written_phases(decided) == set(), execution
            continue
        # The row's own effect, not decide(): decide() refuses what this test looks for.
        phases = lc.written_phases(row.effect(ctx))
        written[row.name] |= phases
        if phases - row.targets:
            unlisted.setdefault(row.name, set()).update(phases - row.targets)
    assert unlisted == {}, "rows writing phases their targets do not list"
    # Every row fired, and every phase a row lists is one it really writes: the column is exact.
    assert written == {t.name: set(t.targets) for t in lc.TRANSITIONS}


def test_a_cancel_that_loses_the_race_with_the_end_of_the_flow_ends_succeeded() -> None:
    # Cancel requested, but the Pod had already exited 0: the flow's work is done.
    ex = exe(started("Running", outputs={"n": 1}), desiredState="Cancelled")
    assert rule(ex, pod("Succeeded", exit_code=0)) == "cancelled"
    patch = status_patch(decide(ex, pod("Succeeded", exit_code=0)))
    assert patch["phase"] == "Succeeded"
    assert "outputs" not in patch  # kept
    # A Pod that ended any other way while cancelling ends Cancelled.
    for ended in (pod("Failed", exit_code=143), pod("Failed", exit_code=1), None):
        assert status_patch(decide(ex, ended))["phase"] == "Cancelled"


def test_a_decision_the_table_does_not_list_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    start = next(t for t in lc.TRANSITIONS if t.name == "start")

    def start_and_claim_success(ctx: lc.Ctx) -> list[lc.Action]:
        return [*start.effect(ctx), lc.PatchStatus({"phase": "Succeeded"})]

    broken = dataclasses.replace(start, effect=start_and_claim_success)
    table = tuple(broken if t is start else t for t in lc.TRANSITIONS)
    monkeypatch.setattr(lc, "TRANSITIONS", table)
    with pytest.raises(lc.IllegalTransition, match=r"'start'.*from 'new' to Succeeded.*Pending"):
        decide(exe())
    # A row that only acts may not write a phase either.
    with pytest.raises(lc.IllegalTransition, match=r"'ttl-wait'.*lists only no phase"):
        lc.check_transition(
            "Failed",
            next(t for t in lc.TRANSITIONS if t.name == "ttl-wait"),
            [lc.PatchStatus({"phase": "Pending"})],
        )
    # No row fired: nothing may be written, though the children summary may.
    lc.check_transition("Running", None, [lc.PatchStatus({"children": []})])
    with pytest.raises(lc.IllegalTransition, match="No row of the lifecycle table fired"):
        lc.check_transition("Running", None, [lc.PatchStatus({"phase": "Failed"})])


# ---------------------------------------------------------------- images, accounts, owned Pods


def test_a_flow_image_that_is_not_allowed_fails_before_any_pod() -> None:
    actions = decide(exe(), flow=BUSYBOX_FLOW)
    assert of(actions, lc.CreatePod) == []
    patch = status_patch(actions)
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "ImageNotAllowed"
    assert "busybox:latest" in patch["statusMessage"]
    [event] = of(actions, lc.EmitEvent)
    assert event.type == "Warning" and "ImageNotAllowed" in event.message
    # Also at a retry: the settings may have changed between attempts.
    retrying = exe(started(nextRetryTime=ts(1)), retry={"limit": 2})
    assert rule(retrying, pod("Failed", exit_code=1), flow=BUSYBOX_FLOW) == "image-not-allowed"


def test_an_allowed_flow_image_starts() -> None:
    settings = Settings(allowed_images=("busybox:*",))
    [create] = of(decide(exe(), flow=BUSYBOX_FLOW, settings=settings), lc.CreatePod)
    assert create.manifest["spec"]["containers"][0]["image"] == "busybox:latest"
    assert rule(exe(type="SCRIPT", script="x", flowRef=None), flow=None) == "start"


def test_a_missing_service_account_waits_in_pending_then_fails() -> None:
    first = decide(exe(), missing_service_account="nope")
    assert of(first, lc.CreatePod) == []
    patch = status_patch(first)
    assert patch["phase"] == "Pending"
    started_cond = cond(patch, "Started")
    assert (started_cond["status"], started_cond["reason"]) == ("False", "ServiceAccountNotFound")
    assert "nope" in started_cond["message"]
    assert started_cond["lastTransitionTime"] == ts(0)
    [event] = of(first, lc.EmitEvent)
    assert (event.type, event.reason) == ("Warning", "ServiceAccountNotFound")
    [requeue] = of(first, lc.Requeue)
    assert 0 < requeue.after <= lc.SERVICE_ACCOUNT_RETRY_SECONDS
    # While waiting: no new write, just another try soon.
    waiting = exe(sa_waited(30))
    assert of(decide(waiting, missing_service_account="nope"), lc.PatchStatus) == []
    # Between tries the Pod create is attempted again (the account may exist now).
    assert rule(waiting) == "start"
    # Over the wait: Failed with the reason.
    over = decide(exe(sa_waited(61)), missing_service_account="nope")
    patch = status_patch(over)
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "ServiceAccountNotFound"
    assert "nope" in patch["statusMessage"] and "60s" in patch["statusMessage"]


def test_the_service_account_wait_starts_when_it_is_first_seen() -> None:
    # Held long ago (run: false), then started: the old Started=False time does not count.
    held = exe(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "Started",
                    "status": "False",
                    "reason": "NotStarted",
                    "lastTransitionTime": ts(3600),
                }
            ],
        }
    )
    patch = status_patch(decide(held, missing_service_account="nope"))
    assert patch["phase"] == "Pending"
    assert cond(patch, "Started")["lastTransitionTime"] == ts(0)


def test_no_service_account_wait_fails_at_once() -> None:
    settings = Settings(service_account_wait_seconds=0)
    patch = status_patch(decide(exe(), settings=settings, missing_service_account="nope"))
    assert patch["phase"] == "Failed"


def test_a_cancel_while_waiting_for_the_service_account_ends_cancelled() -> None:
    ex = exe(sa_waited(5), desiredState="Cancelled")
    assert rule(ex, missing_service_account="nope") == "cancel-unstarted"


APP_POD = PodView(name="app", phase="Running", running=True, owner_uid="")


def test_a_forged_pod_name_is_never_deleted_on_cancel() -> None:
    ex = exe(started("Running", podName="app"), desiredState="Cancelled")
    actions = decide(ex, APP_POD)
    deletes = of(actions, lc.DeletePod)
    assert "app" not in [d.name for d in deletes]
    # The attempt's own Pod is asked for instead (the engine checks it is owned, too).
    assert deletes == [lc.DeletePod("ex-a1", 0)]
    patch = status_patch(actions)
    assert patch["phase"] == "Cancelled"
    assert cond(patch, "Finished")["reason"] == "PodNotOwned"
    [event] = of(actions, lc.EmitEvent)
    assert event.type == "Warning" and "app" in event.message


def test_a_forged_pod_name_fails_the_execution_and_is_not_its_outcome() -> None:
    # The foreign Pod succeeded: that is not this Execution's success.
    done = PodView(name="app", phase="Succeeded", exit_code=0, owner_uid="other")
    actions = decide(exe(started("Running", podName="app")), done)
    patch = status_patch(actions)
    assert patch["phase"] == "Failed"
    assert cond(patch, "Finished")["reason"] == "PodNotOwned"
    assert [d.name for d in of(actions, lc.DeletePod)] == ["ex-a1"]
    # Running with a retry policy: still no delete of the foreign Pod, no retry either.
    retrying = decide(exe(started("Running", podName="app"), retry={"limit": 3}), APP_POD)
    assert "app" not in [d.name for d in of(retrying, lc.DeletePod)]
    assert status_patch(retrying)["phase"] == "Failed"


def test_a_pod_with_the_attempt_name_but_another_owner_is_left_alone() -> None:
    impostor = pod("Running", running=True, owner_uid="someone-else")
    actions = decide(exe(started("Running"), desiredState="Cancelled"), impostor)
    assert of(actions, lc.DeletePod) == []
    assert status_patch(actions)["phase"] == "Cancelled"


def test_an_owned_pod_is_still_deleted_on_cancel() -> None:
    actions = decide(exe(started("Running"), desiredState="Cancelled"), pod("Running"))
    assert of(actions, lc.DeletePod) == [lc.DeletePod("ex-a1", SETTINGS.cancel_grace_seconds)]
