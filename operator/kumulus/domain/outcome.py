"""Mapping of a runner Pod's state (plus ``status.runner``) to an Execution outcome.

Only the operator decides an Execution's phase; this module is that decision for one attempt
Pod. Exit codes follow ``runner-image/README.md``; everything the runner cannot report itself
(deadline, eviction, OOM, a missing command, a deleted Pod, a Pod that never starts) is mapped
here with a clear reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kumulus.domain.podspec import controller_uid
from kumulus.domain.timeutil import parse_time

EXIT_SUCCESS = 0
EXIT_FLOW_ERROR = 1
EXIT_RUNNER_ERROR = 2
EXIT_CANCELLED = 3


@dataclasses.dataclass(frozen=True)
class PodView:
    """What the lifecycle needs to know about one attempt Pod."""

    name: str
    phase: str = "Pending"
    reason: str = ""
    message: str = ""
    created: datetime | None = None
    deleting: bool = False
    waiting_reason: str = ""
    waiting_message: str = ""
    running: bool = False
    exit_code: int | None = None
    terminated_reason: str = ""
    terminated_message: str = ""
    signal: int | None = None
    unschedulable_message: str = ""
    owner_uid: str = ""
    """The uid of the Execution that controls the Pod (its ownerReferences; "" if none)."""

    @classmethod
    def from_dict(cls, pod: Mapping[str, Any]) -> PodView:
        """Build the view from a Pod object as returned by the API (a plain dict)."""
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        view: dict[str, Any] = {
            "name": meta.get("name", ""),
            "phase": status.get("phase") or "Pending",
            "reason": status.get("reason") or "",
            "message": status.get("message") or "",
            "created": parse_time(meta.get("creationTimestamp")),
            "deleting": bool(meta.get("deletionTimestamp")),
            "owner_uid": controller_uid(pod),
        }
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                view["unschedulable_message"] = cond.get("message") or cond.get("reason") or ""
        statuses = status.get("containerStatuses") or []
        if statuses:
            state = statuses[0].get("state") or {}
            if "waiting" in state:
                view["waiting_reason"] = state["waiting"].get("reason") or ""
                view["waiting_message"] = state["waiting"].get("message") or ""
            if "running" in state:
                view["running"] = True
            if "terminated" in state:
                term = state["terminated"]
                view["exit_code"] = term.get("exitCode")
                view["terminated_reason"] = term.get("reason") or ""
                view["terminated_message"] = term.get("message") or ""
                view["signal"] = term.get("signal")
        return cls(**view)

    @property
    def finished(self) -> bool:
        """True once the Pod's phase is final."""
        return self.phase in ("Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the Execution phase it leads to, a reason and a message."""

    phase: str
    reason: str
    message: str

    @property
    def retryable(self) -> bool:
        """Whether a retry may follow (failures the flow may overcome; not start errors)."""
        return self.phase == "Failed" and self.reason not in _PERMANENT


_PERMANENT = frozenset({"RunnerError", "OutputTooLarge", "StartError", "CodeChanged"})

RUNNER_REASONS = frozenset({"CodeChanged"})
"""Reasons the runner may give for not starting (``status.runner.result.reason``, exit code 2)
that the operator takes as the Execution's reason; any other exit 2 is ``RunnerError``."""


def _runner_reason(runner: Mapping[str, Any] | None) -> str:
    reason = str(((runner or {}).get("result") or {}).get("reason") or "")
    return reason if reason in RUNNER_REASONS else "RunnerError"


def _result_message(runner: Mapping[str, Any] | None, default: str) -> str:
    result = (runner or {}).get("result") or {}
    message = str(result.get("message") or "").strip()
    traceback = str(result.get("traceback") or "").strip()
    if message and traceback and message not in traceback:
        return f"{message}\n{traceback}"
    return message or traceback or default


def pod_outcome(
    pod: PodView, runner: Mapping[str, Any] | None, timeout_seconds: int | None
) -> Outcome | None:
    """The outcome of a finished attempt Pod, or ``None`` while it has not ended.

    ``runner`` is ``status.runner`` when it belongs to this attempt (else ``None``).
    """
    if not pod.finished:
        return None
    if pod.phase == "Succeeded":
        return Outcome(
            "Succeeded", "Succeeded", _result_message(runner, "Flow ended successfully.")
        )
    if pod.reason == "DeadlineExceeded":
        limit = f" of {timeout_seconds}s" if timeout_seconds else ""
        return Outcome(
            "Failed", "DeadlineExceeded", f"Execution exceeded its timeout{limit}; Pod was stopped."
        )
    if pod.reason == "Evicted":
        return Outcome("Failed", "Evicted", f"Pod {pod.name} was evicted: {pod.message}".strip())
    if pod.terminated_reason == "OOMKilled":
        return Outcome("Failed", "OOMKilled", f"Pod {pod.name} ran out of memory (OOMKilled).")
    if pod.terminated_reason == "StartError":
        detail = pod.terminated_message or "the runner command could not be started"
        return Outcome("Failed", "StartError", f"Pod {pod.name} could not start: {detail}")
    code = pod.exit_code
    if code == EXIT_FLOW_ERROR:
        return Outcome("Failed", "FlowError", _result_message(runner, "Flow ended with an error."))
    if code == EXIT_RUNNER_ERROR:
        return Outcome(
            "Failed",
            _runner_reason(runner),
            _result_message(runner, "Runner could not start the flow."),
        )
    if code == EXIT_CANCELLED:
        return Outcome("Cancelled", "EndedCancelled", _result_message(runner, "Flow cancelled."))
    if code == EXIT_SUCCESS:
        # A Pod phase Failed with exit 0 only happens when the Pod itself failed.
        return Outcome("Failed", pod.reason or "PodFailed", pod.message or "Pod failed.")
    detail = f"exit code {code}" if code is not None else "no exit code"
    if pod.signal:
        detail += f", signal {pod.signal}"
    if pod.terminated_reason:
        detail += f", {pod.terminated_reason}"
    return Outcome("Failed", "PodFailed", f"Runner Pod {pod.name} failed ({detail}).")


def start_problem(pod: PodView) -> str:
    """Why a Pod has not started yet (waiting reason or scheduling message), for messages."""
    parts = [p for p in (pod.waiting_reason, pod.waiting_message) if p]
    if not parts and pod.unschedulable_message:
        parts = ["Unschedulable", pod.unschedulable_message]
    return ": ".join(parts) if parts else "Pod did not start"
