"""Pure mapping from the agent's view of a Pod's containers to a Kubernetes PodStatus.

A kubelet derives the Pod phase, its conditions and the container statuses from what its
runtime reports; this module does the same from the agent's in-memory records, without I/O,
so the rules (phase per restartPolicy, condition reasons) are unit tested. Readiness probes are
not run: a running container counts as ready.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

NODE_IP = "127.0.0.1"


def now_iso() -> str:
    """The current time as a Kubernetes ``Time`` (RFC 3339, seconds, UTC)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Waiting:
    """The container is not running yet (or waits to be restarted)."""

    reason: str
    message: str = ""


@dataclass
class Running:
    """The container's process is alive."""

    started_at: str


@dataclass
class Terminated:
    """The container's process ended (or never started: StartError)."""

    exit_code: int
    reason: str
    finished_at: str
    started_at: str | None = None
    message: str = ""
    signal: int | None = None
    container_id: str | None = None


State = Waiting | Running | Terminated


def state_to_dict(state: State) -> JsonDict:
    """A container state in the API's shape."""
    if isinstance(state, Waiting):
        waiting: JsonDict = {"reason": state.reason}
        if state.message:
            waiting["message"] = state.message
        return {"waiting": waiting}
    if isinstance(state, Running):
        return {"running": {"startedAt": state.started_at}}
    terminated: JsonDict = {
        "exitCode": state.exit_code,
        "reason": state.reason,
        "finishedAt": state.finished_at,
        "startedAt": state.started_at or state.finished_at,
    }
    if state.message:
        terminated["message"] = state.message
    if state.signal is not None:
        terminated["signal"] = state.signal
    if state.container_id:
        terminated["containerID"] = state.container_id
    return {"terminated": terminated}


def state_from_dict(data: Mapping[str, Any] | None) -> State | None:
    """The inverse of :func:`state_to_dict` (used to adopt Pods after an agent restart)."""
    if not data:
        return None
    if data.get("running") is not None:
        return Running(started_at=data["running"].get("startedAt") or now_iso())
    if data.get("terminated") is not None:
        term = data["terminated"]
        return Terminated(
            exit_code=int(term.get("exitCode", 0)),
            reason=term.get("reason") or "",
            finished_at=term.get("finishedAt") or now_iso(),
            started_at=term.get("startedAt"),
            message=term.get("message") or "",
            signal=term.get("signal"),
            container_id=term.get("containerID"),
        )
    if data.get("waiting") is not None:
        return Waiting(data["waiting"].get("reason") or "", data["waiting"].get("message") or "")
    return None


@dataclass
class ContainerRecord:
    """The agent's record of one container of a Pod."""

    name: str
    image: str
    state: State = field(default_factory=lambda: Waiting("ContainerCreating"))
    last_state: Terminated | None = None
    restart_count: int = 0
    container_id: str | None = None
    started: bool = False  # the container ran at least once (for phase computation)

    @property
    def ready(self) -> bool:
        """Readiness probes are not run: running means ready."""
        return isinstance(self.state, Running)

    def to_status(self) -> JsonDict:
        """The container's entry in ``containerStatuses``."""
        status: JsonDict = {
            "name": self.name,
            "image": self.image,
            "imageID": f"kumulus://{self.image}",
            "ready": self.ready,
            "started": isinstance(self.state, Running),
            "restartCount": self.restart_count,
            "state": state_to_dict(self.state),
            "lastState": state_to_dict(self.last_state) if self.last_state else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def _succeeded(record: ContainerRecord) -> bool:
    return isinstance(record.state, Terminated) and record.state.exit_code == 0


def _stopped(record: ContainerRecord) -> bool:
    """Terminated, or waiting to be restarted after a termination."""
    return isinstance(record.state, Terminated) or (
        isinstance(record.state, Waiting) and record.last_state is not None
    )


def _failed(record: ContainerRecord) -> bool:
    state = record.state if isinstance(record.state, Terminated) else record.last_state
    return state is not None and state.exit_code != 0


def compute_phase(
    restart_policy: str,
    init_containers: Iterable[ContainerRecord],
    containers: Iterable[ContainerRecord],
) -> str:
    """The Pod phase from its containers, following the kubelet's rules."""
    inits = list(init_containers)
    mains = list(containers)
    for init in inits:
        if _succeeded(init):
            continue
        if restart_policy == "Never" and isinstance(init.state, Terminated):
            return "Failed"
        return "Pending"
    if any(not _stopped(c) and not isinstance(c.state, Running) for c in mains):
        return "Pending"
    if any(isinstance(c.state, Running) for c in mains):
        return "Running"
    # Every container has stopped.
    if restart_policy == "Always":
        return "Running"
    if restart_policy == "OnFailure":
        return "Succeeded" if all(_succeeded(c) for c in mains) else "Running"
    return "Failed" if any(_failed(c) for c in mains) else "Succeeded"


def _names(records: Iterable[ContainerRecord]) -> str:
    return "[" + " ".join(r.name for r in records) + "]"


def compute_conditions(
    phase: str,
    init_containers: Iterable[ContainerRecord],
    containers: Iterable[ContainerRecord],
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> list[JsonDict]:
    """PodScheduled, Initialized, ContainersReady and Ready.

    ``previous`` maps a condition type to its last reported entry so ``lastTransitionTime``
    only moves when the status changes.
    """
    inits = list(init_containers)
    mains = list(containers)
    pending_inits = [i for i in inits if not _succeeded(i)]
    unready = [c for c in mains if not c.ready]
    entries: list[tuple[str, bool, str, str]] = [("PodScheduled", True, "", "")]
    if pending_inits:
        entries.append(
            (
                "Initialized",
                False,
                "ContainersNotInitialized",
                f"containers with incomplete status: {_names(pending_inits)}",
            )
        )
    else:
        entries.append(("Initialized", True, "", ""))
    if phase in ("Succeeded", "Failed"):
        reason, message = "PodCompleted", ""
        ready = False
    elif unready:
        reason, message = "ContainersNotReady", f"containers with unready status: {_names(unready)}"
        ready = False
    else:
        reason, message, ready = "", "", True
    entries.append(("ContainersReady", ready, reason, message))
    entries.append(("Ready", ready, reason, message))
    conditions: list[JsonDict] = []
    for ctype, ok, reason, message in entries:
        status = "True" if ok else "False"
        before = previous.get(ctype) or {}
        transition = before.get("lastTransitionTime") if before.get("status") == status else None
        condition: JsonDict = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": transition or now,
        }
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        conditions.append(condition)
    return conditions


def build_pod_status(
    *,
    restart_policy: str,
    init_containers: list[ContainerRecord],
    containers: list[ContainerRecord],
    start_time: str,
    previous_conditions: Mapping[str, Mapping[str, Any]],
    now: str,
    phase_override: str | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> JsonDict:
    """The full ``status`` of a Pod, ready for a merge patch of ``pods/status``."""
    phase = phase_override or compute_phase(restart_policy, init_containers, containers)
    status: JsonDict = {
        "phase": phase,
        "conditions": compute_conditions(
            phase, init_containers, containers, previous_conditions, now
        ),
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
        "startTime": start_time,
        "containerStatuses": [c.to_status() for c in containers],
        "reason": reason,
        "message": message,
    }
    if init_containers:
        status["initContainerStatuses"] = [c.to_status() for c in init_containers]
    return status
