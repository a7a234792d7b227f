"""Kubernetes Events: every phase transition of the lifecycle table records exactly one.

Drives :func:`kumulus.domain.lifecycle.decide` through each row that moves the phase and checks
the Event's reason, so a new transition without an Event fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kumulus.domain import lifecycle as lc
from kumulus.domain.outcome import PodView
from kumulus.domain.settings import Settings

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
FLOW = {
    "metadata": {"name": "f", "generation": 1},
    "spec": {"code": "def handler(s, t): pass"},
    "status": {"observedGeneration": 1, "codeHash": "sha256:" + "0" * 64},
}
UNCHECKED_FLOW = {"metadata": {"name": "f", "generation": 2}, "spec": FLOW["spec"]}


def exe(status: dict[str, Any] | None = None, created_ago: float = 5, **spec: Any) -> dict:
    return {
        "metadata": {
            "name": "ex",
            "namespace": "ns",
            "uid": "u",
            "generation": 1,
            "creationTimestamp": (NOW - timedelta(seconds=created_ago)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        },
        "spec": {"type": "FLOW", "flowRef": {"name": "f"}, **spec},
        "status": status or {},
    }


def active(phase: str, state: str | None = None, attempts: int = 1) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "attempts": attempts, "podName": "ex-a1"}
    if state:
        status["runner"] = {"attempt": attempts, "state": state}
    return status


def pod(phase: str = "Running", **kw: Any) -> PodView:
    kw.setdefault("owner_uid", "u")  # controlled by exe()
    return PodView(name="ex-a1", phase=phase, created=NOW - timedelta(seconds=5), **kw)


CASES: list[tuple[str, dict[str, Any], PodView | None, dict[str, Any] | None, str, str]] = [
    # (case, execution, pod, flow, transition row, Event reason)
    ("start", exe(), None, FLOW, "start", "CreatedPod"),
    ("run false", exe(run=False), None, FLOW, "hold", "NotStarted"),
    ("paused first", exe(desiredState="Paused"), None, FLOW, "hold", "Paused"),
    ("no flow yet", exe(), None, None, "flow-wait", "FlowNotFound"),
    ("no flow", exe(created_ago=600), None, None, "flow-not-found", "Failed"),
    ("pod runs", exe(active("Pending")), pod(), FLOW, "pod-running", "Started"),
    ("waits", exe(active("Running", "waiting")), pod(), FLOW, "pod-running", "Waiting"),
    ("runs again", exe(active("Waiting", "running")), pod(), FLOW, "pod-running", "Running"),
    ("pauses", exe(active("Running", "paused")), pod(), FLOW, "pod-running", "Paused"),
    ("resumes", exe(active("Paused", "running")), pod(), FLOW, "pod-running", "Resumed"),
    (
        "succeeds",
        exe(active("Running")),
        pod("Succeeded", exit_code=0),
        FLOW,
        "succeeded",
        "Succeeded",
    ),
    ("fails", exe(active("Running")), pod("Failed", exit_code=1), FLOW, "failed", "Failed"),
    (
        "retries",
        exe(active("Running"), retry={"limit": 2}),
        pod("Failed", exit_code=1),
        FLOW,
        "retry-scheduled",
        "Retrying",
    ),
    (
        "cancelled early",
        exe(desiredState="Cancelled"),
        None,
        FLOW,
        "cancel-unstarted",
        "Cancelled",
    ),
    (
        "cancelled running",
        exe(active("Running"), desiredState="Cancelled"),
        pod("Failed", exit_code=143),
        FLOW,
        "cancelled",
        "Cancelled",
    ),
    (
        "image not allowed",
        exe(),
        None,
        {**FLOW, "spec": {**FLOW["spec"], "image": "busybox:latest"}},
        "image-not-allowed",
        "Failed",
    ),
    (
        "service account missing",
        exe(),
        None,
        FLOW,
        "service-account-wait",
        "ServiceAccountNotFound",
    ),
    (
        "service account still missing",
        exe(
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "Started",
                        "status": "False",
                        "reason": "ServiceAccountNotFound",
                        "lastTransitionTime": "2025-01-01T11:50:00Z",
                    }
                ],
            }
        ),
        None,
        FLOW,
        "service-account-not-found",
        "Failed",
    ),
    (
        "flow not checked yet",
        exe(),
        None,
        UNCHECKED_FLOW,
        "flow-check-wait",
        "FlowNotChecked",
    ),
    (
        "flow never checked",
        exe(
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "Started",
                        "status": "False",
                        "reason": "FlowNotChecked",
                        "lastTransitionTime": "2025-01-01T11:50:00Z",
                    }
                ],
            }
        ),
        None,
        UNCHECKED_FLOW,
        "flow-not-checked",
        "Failed",
    ),
    (
        "forged pod name",
        exe({**active("Running"), "podName": "app"}),
        PodView(name="app", phase="Running", running=True),
        FLOW,
        "pod-not-owned",
        "Failed",
    ),
    (
        "invalid inputs",
        exe(inputs={"n": "not a number"}),
        None,
        {
            **FLOW,
            "spec": {
                **FLOW["spec"],
                "inputSchema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        },
        "invalid-inputs",
        "Failed",
    ),
    (
        "flow not ready",
        exe(),
        None,
        {
            **FLOW,
            "status": {
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "False", "message": "SyntaxError"}],
            },
        },
        "flow-not-ready",
        "Failed",
    ),
    (
        "flow ends itself cancelled",
        exe(
            {
                **active("Running", "ended"),
                "runner": {
                    "attempt": 1,
                    "state": "ended",
                    "result": {"status": "ENDED_CANCELLED", "message": "stopped"},
                },
            }
        ),
        pod("Failed", exit_code=3),
        FLOW,
        "ended-cancelled",
        "Cancelled",
    ),
]

#: Cases decided right after a Pod create was refused for a missing ServiceAccount.
MISSING_SA = {"service account missing": "nope", "service account still missing": "nope"}


@pytest.mark.parametrize(
    ("case", "execution", "pod_view", "flow", "row", "reason"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_each_phase_transition_records_its_event(
    case: str,
    execution: dict[str, Any],
    pod_view: PodView | None,
    flow: dict[str, Any] | None,
    row: str,
    reason: str,
) -> None:
    missing = MISSING_SA.get(case)
    ctx = lc.Ctx(execution, pod_view, [], flow, NOW, Settings(), missing)
    selected = lc.select(ctx)
    assert selected is not None and selected.name == row
    actions = lc.decide(
        execution,
        pod_view,
        [],
        NOW,
        flow=flow,
        settings=Settings(),
        missing_service_account=missing,
    )
    patches = [a for a in actions if isinstance(a, lc.PatchStatus) and "phase" in a.patch]
    events = [a for a in actions if isinstance(a, lc.EmitEvent)]
    assert len(patches) == 1
    assert [e.reason for e in events] == [reason]
    assert "ex" in events[0].message
    if reason in ("Failed", "Cancelled", "Retrying", "FlowNotFound", "ServiceAccountNotFound"):
        assert events[0].type == "Warning"


def test_every_row_that_moves_the_phase_is_covered() -> None:
    moving = {t.name for t in lc.TRANSITIONS if t.targets}
    covered = {case[4] for case in CASES}
    assert moving - covered == set()


def test_a_start_seen_late_records_each_phase_passed() -> None:
    # The runner already waits (or is paused) when the operator first sees its Pod running.
    for state, reasons in (("waiting", ["Started", "Waiting"]), ("paused", ["Started", "Paused"])):
        execution = exe(active("Pending", state))
        actions = lc.decide(execution, pod(), [], NOW, flow=FLOW, settings=Settings())
        assert [a.reason for a in actions if isinstance(a, lc.EmitEvent)] == reasons
