"""The Execution lifecycle as an explicit transition table.

:func:`decide` is the whole engine: given an Execution, the Pod of its current attempt, its
children, its Flow and the time, it returns the actions to take. It is level-triggered and
idempotent (deciding twice on the same inputs asks for the same actions; applying them and
deciding again asks for nothing), so the handler layer may call it on any event, after a
restart, or from several operator processes at once.

:data:`TRANSITIONS` lists every rule in the order they are tried; the first rule whose source
phases contain the current phase and whose guard holds fires. A rule either moves the phase to
one of its ``targets`` with exactly one status patch, or only acts (no targets: create/delete a
Pod, requeue, delete the Execution). The table is the law: :func:`decide` refuses
(:class:`IllegalTransition`) a decision that writes a phase its rule does not list, so the
table always says every phase change the engine can make. Independently of the rule, the
parent's ``status.children`` summary is kept in step with its children (merged into the same
status patch when one fires).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import jsonschema

from kumulus.domain import backoff, flowcode, naming, outputs, podspec
from kumulus.domain.outcome import Outcome, PodView, pod_outcome, start_problem
from kumulus.domain.settings import Settings
from kumulus.domain.timeutil import format_time, parse_time

NEW = ""
PENDING = "Pending"
RUNNING = "Running"
WAITING = "Waiting"
PAUSED = "Paused"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELLED = "Cancelled"

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({RUNNING, WAITING, PAUSED})
UNSTARTED = frozenset({NEW, PENDING})
LIVE = UNSTARTED | ACTIVE

RUNNER_STATE_PHASE = {"running": RUNNING, "waiting": WAITING, "paused": PAUSED}


# --------------------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True)
class CreatePod:
    """Create the attempt Pod (idempotent: AlreadyExists means adopt it)."""

    manifest: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DeletePod:
    """Delete a Pod gracefully (404 is fine)."""

    name: str
    grace_seconds: int


@dataclasses.dataclass(frozen=True)
class PatchStatus:
    """Merge-patch the Execution's status (``None`` values delete keys)."""

    patch: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EmitEvent:
    """Record a Kubernetes Event on the Execution."""

    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class PatchChild:
    """Merge-patch the spec of a child Execution (e.g. to cancel it)."""

    name: str
    spec: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Requeue:
    """Decide again after ``after`` seconds even if nothing changes."""

    after: float


@dataclasses.dataclass(frozen=True)
class DeleteExecution:
    """Delete the Execution (its Pods and children go by garbage collection)."""


@dataclasses.dataclass(frozen=True)
class ReleaseLocks:
    """Release the lock Leases the Execution still holds (its runner could not)."""


Action = (
    CreatePod
    | DeletePod
    | PatchStatus
    | EmitEvent
    | PatchChild
    | Requeue
    | DeleteExecution
    | ReleaseLocks
)

USES_LOCKS_ANNOTATION = "kumulus.dev/uses-locks"
"""Set by the runner before its first ``system.setting(...).acquire()``."""


# --------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class ChildView:
    """A child Execution as its parent sees it."""

    name: str
    type: str
    phase: str
    desired_state: str
    owner_uid: str = ""
    """The uid of the Execution that controls the child (its ownerReferences; "" if none)."""

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> ChildView:
        spec = body.get("spec") or {}
        return cls(
            name=str((body.get("metadata") or {}).get("name", "")),
            type=normalise_type(spec.get("type")),
            phase=str((body.get("status") or {}).get("phase") or PENDING),
            desired_state=str(spec.get("desiredState") or "Running"),
            owner_uid=podspec.controller_uid(body),
        )


def owned_children(execution: Mapping[str, Any], children: Sequence[ChildView]) -> list[ChildView]:
    """The children ``execution`` controls (ownerReference to its uid, ``controller: true``).

    Children are found by name prefix and the ``kumulus.dev/parent`` label, both of which anyone
    who may create Executions can forge: an Execution that only claims to be a child is left out
    of ``status.children`` and is never cancelled with the parent.
    """
    uid = str((execution.get("metadata") or {}).get("uid") or "")
    return [c for c in children if uid and c.owner_uid == uid]


def normalise_type(value: object) -> str:
    """Execution type with the old alias TASK mapped to CONNECTION."""
    text = str(value or "FLOW").upper()
    return "CONNECTION" if text == "TASK" else text


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Everything a guard or effect may look at, derived once per decision."""

    execution: Mapping[str, Any]
    pod: PodView | None
    children: Sequence[ChildView]
    flow: Mapping[str, Any] | None
    now: datetime
    settings: Settings
    missing_service_account: str | None = None
    """The ServiceAccount the last Pod create was refused for because it does not exist."""

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.execution.get("metadata") or {}

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.execution.get("spec") or {}

    @property
    def status(self) -> Mapping[str, Any]:
        return self.execution.get("status") or {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or NEW)

    @property
    def type(self) -> str:
        return normalise_type(self.spec.get("type"))

    @property
    def desired(self) -> str:
        return str(self.spec.get("desiredState") or "Running")

    @property
    def run(self) -> bool:
        return bool(self.spec.get("run", True))

    @property
    def attempts(self) -> int:
        return int(self.status.get("attempts") or 0)

    @property
    def next_retry(self) -> datetime | None:
        return parse_time(self.status.get("nextRetryTime"))

    @property
    def retry(self) -> Mapping[str, Any]:
        return self.spec.get("retry") or {}

    @property
    def ttl(self) -> int | None:
        value = self.spec.get("ttlSecondsAfterFinished")
        return int(value) if value is not None else self.settings.default_ttl_seconds

    @property
    def runner(self) -> Mapping[str, Any] | None:
        """``status.runner`` if it reports on the current attempt."""
        runner = self.status.get("runner")
        if not isinstance(runner, Mapping):
            return None
        if int(runner.get("attempt") or 0) != self.attempts:
            return None
        return runner

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid") or "")

    @property
    def foreign_pod(self) -> bool:
        """``status.podName`` names a Pod this Execution does not control (a forged status).

        Such a Pod is never deleted, and nothing about it is taken as this Execution's outcome.
        """
        return self.pod is not None and not (self.uid and self.pod.owner_uid == self.uid)

    @property
    def live_pod(self) -> bool:
        return (
            self.pod is not None
            and not self.pod.finished
            and not self.pod.deleting
            and not self.foreign_pod
        )

    @property
    def pod_gone(self) -> bool:
        """The current attempt's Pod was deleted (or is being deleted) before it ended."""
        if self.attempts == 0 or self.next_retry is not None:
            return False
        if self.pod is None:
            return True
        return self.pod.deleting and not self.pod.finished

    @property
    def start_overdue(self) -> bool:
        pod = self.pod
        if pod is None or pod.phase != "Pending" or pod.deleting or pod.created is None:
            return False
        deadline = timedelta(seconds=self.settings.pod_start_deadline_seconds)
        return self.now - pod.created >= deadline

    @property
    def outcome(self) -> Outcome | None:
        """How the current attempt ended, if it has (not while a retry is scheduled)."""
        if self.attempts == 0 or self.next_retry is not None:
            return None
        if self.pod is not None and self.pod.finished:
            return pod_outcome(
                self.pod, self.runner, podspec.timeout_seconds(self.execution, self.flow)
            )
        if self.pod_gone:
            name = naming.pod_name(self.name, self.attempts)
            return Outcome("Failed", "PodDeleted", f"Pod {name} was deleted while running.")
        if self.start_overdue and self.pod is not None:
            return Outcome(
                "Failed",
                "PodStartTimeout",
                f"Pod {self.pod.name} did not start within "
                f"{self.settings.pod_start_deadline_seconds}s ({start_problem(self.pod)}).",
            )
        return None

    @property
    def failure(self) -> Outcome | None:
        outcome = self.outcome
        if outcome is not None and outcome.phase == FAILED:
            return outcome
        if outcome is not None and outcome.phase == SUCCEEDED and self.output_too_large:
            return Outcome(
                FAILED,
                "OutputTooLarge",
                outputs.too_large(self.output_size, self.settings.output_limit_bytes),
            )
        return None

    @property
    def output_size(self) -> int:
        """Stored size of ``status.outputs`` (the runner measured it the same way)."""
        value = self.status.get("outputs")
        return 0 if value is None else outputs.stored_size(value)

    @property
    def output_too_large(self) -> bool:
        return self.output_size > self.settings.output_limit_bytes

    @property
    def retries_left(self) -> bool:
        return backoff.retries_left(self.attempts, self.retry.get("limit"))

    @property
    def retry_due(self) -> bool:
        retry = self.next_retry
        return retry is not None and self.now >= retry

    @property
    def wants_start(self) -> bool:
        """Run requested, not paused or cancelled, and no attempt running or waiting."""
        if not self.run or self.desired != "Running":
            return False
        return self.attempts == 0 or self.retry_due

    @property
    def input_error(self) -> str | None:
        if self.type != "FLOW" or self.flow is None or self.attempts > 0:
            return None
        schema = (self.flow.get("spec") or {}).get("inputSchema")
        if not schema:
            return None
        try:
            jsonschema.validate(self.spec.get("inputs") or {}, schema)
        except jsonschema.ValidationError as err:
            where = "/".join(str(p) for p in err.absolute_path)
            return f"{where}: {err.message}" if where else err.message
        except jsonschema.SchemaError as err:
            return f"Flow inputSchema is invalid: {err.message}"
        return None

    @property
    def flow_not_ready(self) -> str | None:
        if self.type != "FLOW" or self.flow is None:
            return None
        fmeta = self.flow.get("metadata") or {}
        fstatus = self.flow.get("status") or {}
        if fstatus.get("observedGeneration") != fmeta.get("generation"):
            return None
        for cond in fstatus.get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "False":
                return str(cond.get("message") or cond.get("reason") or "Flow is not ready.")
        return None

    @property
    def flow_unchecked(self) -> bool:
        """The Flow exists but its code has no checked hash for its current spec (yet).

        Its runner Pod gets the hash the operator recorded (``KUMULUS_CODE_HASH``) and runs
        only that code, so the Execution waits until the operator has checked the Flow.
        """
        return (
            self.type == "FLOW" and self.flow is not None and not flowcode.checked_hash(self.flow)
        )

    @property
    def flow_check_wait_left(self) -> float:
        """Seconds this Execution may still wait for its Flow to be checked (0 when over).

        The wait starts when the ``Started`` condition first says FlowNotChecked.
        """
        return self._pending_wait_left("FlowNotChecked", self.settings.flow_wait_seconds)

    def _pending_wait_left(self, reason: str, allowed: float) -> float:
        """Seconds left of a wait in Pending that began when ``Started`` first said ``reason``
        (see ``_wait_pending``); the whole ``allowed`` while it has not begun."""
        since = self.now
        for cond in self.status.get("conditions") or []:
            if cond.get("type") == "Started" and cond.get("reason") == reason:
                since = parse_time(cond.get("lastTransitionTime")) or self.now
        waited = (self.now - since).total_seconds()
        return max(allowed - waited, 0.0)

    @property
    def flow_wait_left(self) -> float:
        """Seconds this FLOW Execution may still wait for its missing Flow (0 when over)."""
        created = parse_time(self.meta.get("creationTimestamp")) or self.now
        waited = (self.now - created).total_seconds()
        return max(self.settings.flow_wait_seconds - waited, 0.0)

    @property
    def image_refusal(self) -> str | None:
        """Why the runner image this Execution would run is not allowed (``None``: it is)."""
        if self.type not in ("FLOW", "SCRIPT"):
            return None
        return podspec.image_refusal(self.flow if self.type == "FLOW" else None, self.settings)

    @property
    def service_account_wait_left(self) -> float:
        """Seconds this Execution may still wait for its missing ServiceAccount (0 when over).

        The wait starts when the ``Started`` condition first says ServiceAccountNotFound.
        """
        return self._pending_wait_left(
            "ServiceAccountNotFound", self.settings.service_account_wait_seconds
        )

    @property
    def hold_reason(self) -> tuple[str, str]:
        if not self.run:
            return "NotStarted", "Execution was created with run: false."
        if self.desired == "Paused":
            return "Paused", "Execution is paused before its start."
        return "Pending", "Execution is waiting to start."

    def unfinished_children(self) -> list[ChildView]:
        return [
            c for c in self.children if c.phase not in TERMINAL and c.desired_state != CANCELLED
        ]


# --------------------------------------------------------------------------- helpers


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set (Kubebuilder style; transition time kept if unchanged)."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        same = cond.get("status") == value
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": (
                    cond.get("lastTransitionTime") if same else format_time(now)
                ),
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": format_time(now),
            }
        )
    return out


def _conditions(ctx: Ctx, *updates: tuple[str, bool, str, str]) -> list[dict[str, Any]]:
    conds: list[dict[str, Any]] = list(ctx.status.get("conditions") or [])
    for type_, status, reason, message in updates:
        conds = set_condition(conds, type_, status, reason, message, _generation(ctx), ctx.now)
    return conds


def _generation(ctx: Ctx) -> int | None:
    gen = ctx.meta.get("generation")
    return int(gen) if gen is not None else None


def _cancel_children(ctx: Ctx) -> list[Action]:
    return [PatchChild(c.name, {"desiredState": CANCELLED}) for c in ctx.unfinished_children()]


def format_duration(seconds: float) -> str:
    """``status.duration``: e.g. ``0.5s``, ``12.25s``, ``3m4.5s``, ``1h2m3s``."""
    seconds = max(seconds, 0.0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes or hours:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return text


MAX_MESSAGE = 32000


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _finish(ctx: Ctx, phase: str, reason: str, message: str) -> list[Action]:
    """Status patch + Event of a terminal transition (+ TTL requeue)."""
    message = _clip(message)
    start = parse_time(ctx.status.get("startTime"))
    patch: dict[str, Any] = {
        "phase": phase,
        "statusMessage": message,
        "endTime": format_time(ctx.now),
        "nextRetryTime": None,
        "observedGeneration": _generation(ctx),
        "conditions": _conditions(ctx, ("Finished", True, reason, message)),
    }
    if start is not None:
        patch["duration"] = format_duration((ctx.now - start).total_seconds())
    event_type = "Normal" if phase == SUCCEEDED else "Warning"
    verb = {SUCCEEDED: "Succeeded", FAILED: "Failed", CANCELLED: "Cancelled"}[phase]
    text = f"Execution {ctx.name} {verb.lower()}"
    if phase != SUCCEEDED:
        text += f" ({reason}): {message}"
    else:
        text += "."
    actions: list[Action] = [PatchStatus(patch), EmitEvent(event_type, verb, text)]
    if (ctx.meta.get("annotations") or {}).get(USES_LOCKS_ANNOTATION) == "true":
        actions.append(ReleaseLocks())  # after the phase patch: a stale decision releases nothing
    if ctx.ttl is not None:
        actions.append(Requeue(float(ctx.ttl)))
    return actions


# --------------------------------------------------------------------------- effects


def _expire(ctx: Ctx) -> list[Action]:
    return [DeleteExecution()]


def _wait_ttl(ctx: Ctx) -> list[Action]:
    end = parse_time(ctx.status.get("endTime")) or ctx.now
    remaining = (end + timedelta(seconds=ctx.ttl or 0) - ctx.now).total_seconds()
    return [Requeue(max(remaining, 0.5))]


def _ttl_expired(ctx: Ctx) -> bool:
    if ctx.ttl is None:
        return False
    end = parse_time(ctx.status.get("endTime"))
    return end is None or ctx.now >= end + timedelta(seconds=ctx.ttl)


def _cancel_unstarted(ctx: Ctx) -> list[Action]:
    return [
        *_finish(ctx, CANCELLED, "Cancelled", "Execution was cancelled before it started."),
        *_cancel_children(ctx),
    ]


def _cancel_running(ctx: Ctx) -> list[Action]:
    assert ctx.pod is not None
    return [DeletePod(ctx.pod.name, ctx.settings.cancel_grace_seconds), *_cancel_children(ctx)]


def _cancelled(ctx: Ctx) -> list[Action]:
    outcome = ctx.outcome
    if outcome is not None and outcome.phase == SUCCEEDED and not ctx.output_too_large:
        return _finish(ctx, SUCCEEDED, "Succeeded", outcome.message)
    return [
        *_finish(ctx, CANCELLED, "Cancelled", "Execution was cancelled while running."),
        *_cancel_children(ctx),
    ]


def _retry_scheduled(ctx: Ctx) -> list[Action]:
    failure = ctx.failure
    assert failure is not None
    delay = backoff.retry_delay(
        ctx.attempts, ctx.retry.get("backoffSeconds"), ctx.retry.get("factor")
    )
    at = ctx.now + timedelta(seconds=delay)
    message = _clip(
        f"Attempt {ctx.attempts} failed ({failure.reason}): {failure.message} "
        f"Retrying at {format_time(at)}."
    )
    actions: list[Action] = [
        PatchStatus(
            {
                "phase": PENDING,
                "statusMessage": message,
                "nextRetryTime": format_time(at),
                "observedGeneration": _generation(ctx),
            }
        ),
        EmitEvent(
            "Warning",
            "Retrying",
            f"Execution {ctx.name} attempt {ctx.attempts} failed ({failure.reason}); "
            f"attempt {ctx.attempts + 1} starts in {delay:g}s.",
        ),
        Requeue(delay),
    ]
    if ctx.pod is not None and ctx.live_pod:
        actions.insert(0, DeletePod(ctx.pod.name, 0))
    return actions


def _failed(ctx: Ctx) -> list[Action]:
    failure = ctx.failure
    assert failure is not None
    actions = _finish(ctx, FAILED, failure.reason, failure.message)
    if ctx.pod is not None and ctx.live_pod:
        actions.insert(0, DeletePod(ctx.pod.name, 0))
    return actions


def _succeeded(ctx: Ctx) -> list[Action]:
    outcome = ctx.outcome
    assert outcome is not None
    return _finish(ctx, SUCCEEDED, "Succeeded", outcome.message)


def _ended_cancelled(ctx: Ctx) -> list[Action]:
    outcome = ctx.outcome
    assert outcome is not None
    return _finish(ctx, CANCELLED, outcome.reason, outcome.message)


def _retry_wait(ctx: Ctx) -> list[Action]:
    retry = ctx.next_retry
    assert retry is not None
    return [Requeue(max((retry - ctx.now).total_seconds(), 0.1))]


def _invalid_inputs(ctx: Ctx) -> list[Action]:
    return _finish(ctx, FAILED, "InvalidInputs", f"Invalid inputs: {ctx.input_error}")


def _flow_not_found(ctx: Ctx) -> list[Action]:
    flow = (ctx.spec.get("flowRef") or {}).get("name")
    return _finish(
        ctx,
        FAILED,
        "FlowNotFound",
        f"Flow {flow} does not exist (waited {ctx.settings.flow_wait_seconds}s).",
    )


def _flow_wait(ctx: Ctx) -> list[Action]:
    flow = (ctx.spec.get("flowRef") or {}).get("name")
    message = (
        f"Waiting for Flow {flow} to exist "
        f"(fails after {ctx.settings.flow_wait_seconds}s without it)."
    )
    actions: list[Action] = []
    if ctx.phase == NEW or _started_reason(ctx) != "FlowNotFound":
        actions.append(
            PatchStatus(
                {
                    "phase": PENDING,
                    "statusMessage": message,
                    "observedGeneration": _generation(ctx),
                    "conditions": _conditions(ctx, ("Started", False, "FlowNotFound", message)),
                }
            )
        )
        actions.append(EmitEvent("Warning", "FlowNotFound", f"Execution {ctx.name}: {message}"))
    actions.append(Requeue(min(1.0, max(ctx.flow_wait_left, 0.1))))
    return actions


def _flow_not_ready(ctx: Ctx) -> list[Action]:
    flow = (ctx.spec.get("flowRef") or {}).get("name")
    return _finish(ctx, FAILED, "FlowNotReady", f"Flow {flow} is not ready: {ctx.flow_not_ready}")


FLOW_CHECK_RETRY_SECONDS = 0.5
"""How often an Execution waiting for its Flow's check looks again."""


def _wait_pending(
    ctx: Ctx, reason: str, message: str, event_type: str, retry: float, left: float
) -> list[Action]:
    """Wait unstarted in Pending for ``reason``: the condition and one Event when the wait
    begins (its transition time is when it began), then look again after ``retry`` seconds or
    when the wait runs out (``left``)."""
    actions: list[Action] = []
    if _started_reason(ctx) != reason:
        conditions = _conditions(ctx, ("Started", False, reason, message))
        for cond in conditions:
            if cond["type"] == "Started":
                cond["lastTransitionTime"] = format_time(ctx.now)  # the wait starts now
        actions.append(
            PatchStatus(
                {
                    "phase": PENDING,
                    "statusMessage": message,
                    "observedGeneration": _generation(ctx),
                    "conditions": conditions,
                }
            )
        )
        actions.append(EmitEvent(event_type, reason, f"Execution {ctx.name}: {message}"))
    actions.append(Requeue(min(retry, max(left, 0.1))))
    return actions


def _flow_check_wait(ctx: Ctx) -> list[Action]:
    flow = (ctx.spec.get("flowRef") or {}).get("name")
    wait = ctx.settings.flow_wait_seconds
    message = (
        f"Waiting for the operator to check the code of Flow {flow} "
        f"(fails after {wait}s without a check)."
    )
    return _wait_pending(
        ctx, "FlowNotChecked", message, "Normal", FLOW_CHECK_RETRY_SECONDS, ctx.flow_check_wait_left
    )


def _flow_not_checked(ctx: Ctx) -> list[Action]:
    flow = (ctx.spec.get("flowRef") or {}).get("name")
    return _finish(
        ctx,
        FAILED,
        "FlowNotChecked",
        f"The operator did not check the code of Flow {flow} for its current spec "
        f"(no status.codeHash for its generation after {ctx.settings.flow_wait_seconds}s).",
    )


def _image_not_allowed(ctx: Ctx) -> list[Action]:
    return _finish(ctx, FAILED, "ImageNotAllowed", str(ctx.image_refusal))


SERVICE_ACCOUNT_RETRY_SECONDS = 2.0
"""How often the Pod create is tried again while the ServiceAccount is missing."""


def _service_account_wait(ctx: Ctx) -> list[Action]:
    account = ctx.missing_service_account
    wait = ctx.settings.service_account_wait_seconds
    message = f"Waiting for ServiceAccount {account} to exist (fails after {wait}s without it)."
    return _wait_pending(
        ctx,
        "ServiceAccountNotFound",
        message,
        "Warning",
        SERVICE_ACCOUNT_RETRY_SECONDS,
        ctx.service_account_wait_left,
    )


def _service_account_not_found(ctx: Ctx) -> list[Action]:
    return _finish(
        ctx,
        FAILED,
        "ServiceAccountNotFound",
        f"ServiceAccount {ctx.missing_service_account} does not exist "
        f"(waited {ctx.settings.service_account_wait_seconds}s).",
    )


def _pod_not_owned(ctx: Ctx) -> list[Action]:
    assert ctx.pod is not None
    foreign = ctx.pod.name
    message = (
        f"Pod {foreign} named by status.podName is not controlled by Execution {ctx.name}; "
        "the operator left it alone."
    )
    # One Event, as for every transition: the Warning of _finish, with the reason and the Pod.
    if ctx.desired == CANCELLED:
        actions = [
            *_finish(ctx, CANCELLED, "PodNotOwned", f"Execution was cancelled. {message}"),
            *_cancel_children(ctx),
        ]
    else:
        actions = _finish(ctx, FAILED, "PodNotOwned", message)
    own = naming.pod_name(ctx.name, ctx.attempts) if ctx.attempts else None
    if own is not None and own != foreign:
        # The attempt's own Pod (deleted only if it proves to be owned, see kumulus.k8s.pods).
        actions.insert(0, DeletePod(own, 0))
    return actions


def _start(ctx: Ctx) -> list[Action]:
    attempt = ctx.attempts + 1
    manifest = podspec.build_pod(ctx.execution, ctx.flow, attempt, ctx.settings)
    pod = manifest["metadata"]["name"]
    patch: dict[str, Any] = {
        "phase": PENDING,
        "attempts": attempt,
        "podName": pod,
        "nextRetryTime": None,
        "observedGeneration": _generation(ctx),
        "conditions": _conditions(
            ctx, ("Started", True, "PodCreated", f"Created Pod {pod} for attempt {attempt}.")
        ),
    }
    if attempt > 1:
        patch["statusMessage"] = f"Attempt {attempt} started."
    if not ctx.status.get("startTime"):
        patch["startTime"] = format_time(ctx.now)
    return [
        CreatePod(manifest),
        PatchStatus(patch),
        EmitEvent("Normal", "CreatedPod", f"Created Pod {pod} for Execution {ctx.name}."),
        Requeue(float(ctx.settings.pod_start_deadline_seconds)),
    ]


def _hold(ctx: Ctx) -> list[Action]:
    reason, message = ctx.hold_reason
    return [
        PatchStatus(
            {
                "phase": PENDING,
                "statusMessage": message,
                "observedGeneration": _generation(ctx),
                "conditions": _conditions(ctx, ("Started", False, reason, message)),
            }
        ),
        EmitEvent("Normal", reason, f"Execution {ctx.name} is held: {message}"),
    ]


def _started_reason(ctx: Ctx) -> str | None:
    """The reason of the current ``Started`` condition, if there is one."""
    for cond in ctx.status.get("conditions") or []:
        if cond.get("type") == "Started":
            return str(cond.get("reason"))
    return None


def _hold_changed(ctx: Ctx) -> bool:
    if ctx.phase == NEW:
        return True
    reason, _ = ctx.hold_reason
    return _started_reason(ctx) != reason


def _pod_pending(ctx: Ctx) -> list[Action]:
    assert ctx.pod is not None and ctx.pod.created is not None
    deadline = ctx.pod.created + timedelta(seconds=ctx.settings.pod_start_deadline_seconds)
    return [Requeue(max((deadline - ctx.now).total_seconds(), 0.5))]


def _running_phase(ctx: Ctx) -> str:
    state = str((ctx.runner or {}).get("state") or "running")
    return RUNNER_STATE_PHASE.get(state, ctx.phase if ctx.phase in ACTIVE else RUNNING)


def _to_running(ctx: Ctx) -> list[Action]:
    target = _running_phase(ctx)
    patch: dict[str, Any] = {"phase": target, "observedGeneration": _generation(ctx)}
    actions: list[Action] = [PatchStatus(patch)]
    # One Event per phase passed: a start seen late (the runner already waits) is Started and
    # Waiting, so `kubectl get events` tells the same story however fast the Pod was.
    if ctx.phase == PENDING:
        assert ctx.pod is not None
        actions.append(
            EmitEvent("Normal", "Started", f"Execution {ctx.name} started in Pod {ctx.pod.name}.")
        )
    if target == PAUSED:
        actions.append(EmitEvent("Normal", "Paused", f"Execution {ctx.name} paused."))
    elif ctx.phase == PAUSED:
        actions.append(EmitEvent("Normal", "Resumed", f"Execution {ctx.name} resumed."))
    elif target == WAITING:
        actions.append(
            EmitEvent("Normal", "Waiting", f"Execution {ctx.name} waits for child executions.")
        )
    elif ctx.phase == WAITING:
        actions.append(
            EmitEvent("Normal", "Running", f"Execution {ctx.name} runs again after waiting.")
        )
    return actions


# --------------------------------------------------------------------------- the table


Guard = Callable[[Ctx], bool]
Effect = Callable[[Ctx], list[Action]]


@dataclasses.dataclass(frozen=True)
class Transition:
    """One row of the lifecycle table: from ``sources``, when ``guard``, do ``effect``.

    ``targets`` are the phases the effect may write (empty: it never writes a phase).
    """

    name: str
    sources: frozenset[str]
    targets: frozenset[str]
    guard: Guard
    effect: Effect


def _t(
    name: str, sources: frozenset[str], targets: frozenset[str], guard: Guard, effect: Effect
) -> Transition:
    return Transition(name, sources, targets, guard, effect)


ACTS_ONLY: frozenset[str] = frozenset()
"""``targets`` of a row that never moves the phase."""


def _to(*phases: str) -> frozenset[str]:
    return frozenset(phases)


TRANSITIONS: tuple[Transition, ...] = (
    # Finished Executions: only the TTL matters.
    _t("ttl-expired", TERMINAL, ACTS_ONLY, _ttl_expired, _expire),
    _t("ttl-wait", TERMINAL, ACTS_ONLY, lambda c: c.ttl is not None, _wait_ttl),
    # CONNECTION Executions run in Kumulus itself, not in a Pod: another executor owns them.
    _t("connection-skip", LIVE, ACTS_ONLY, lambda c: c.type == "CONNECTION", lambda c: []),
    # status.podName names a Pod this Execution does not control (flow code can write its
    # status): that Pod is never deleted or read as the outcome; the Execution ends.
    _t("pod-not-owned", LIVE, _to(FAILED, CANCELLED), lambda c: c.foreign_pod, _pod_not_owned),
    # Cancellation.
    _t(
        "cancel-unstarted",
        UNSTARTED,
        _to(CANCELLED),
        lambda c: c.desired == CANCELLED and (c.attempts == 0 or c.next_retry is not None),
        _cancel_unstarted,
    ),
    _t(
        "cancel-running",
        LIVE,
        ACTS_ONLY,
        lambda c: c.desired == CANCELLED and c.live_pod,
        _cancel_running,
    ),
    # A cancel that lost the race with the end of the flow (its Pod exited 0 before the
    # SIGTERM took effect) ends Succeeded: the work was done and its outputs stand. Cancelled is
    # final once written; an attempt that already succeeded is not rewritten as cancelled.
    _t(
        "cancelled",
        LIVE,
        _to(CANCELLED, SUCCEEDED),
        lambda c: c.desired == CANCELLED,
        _cancelled,
    ),
    # An attempt ended (or was lost).
    _t(
        "retry-scheduled",
        LIVE,
        _to(PENDING),
        lambda c: c.failure is not None and c.failure.retryable and c.retries_left,
        _retry_scheduled,
    ),
    _t("failed", LIVE, _to(FAILED), lambda c: c.failure is not None, _failed),
    _t(
        "succeeded",
        LIVE,
        _to(SUCCEEDED),
        lambda c: c.outcome is not None and c.outcome.phase == SUCCEEDED,
        _succeeded,
    ),
    _t(
        "ended-cancelled",
        LIVE,
        _to(CANCELLED),
        lambda c: c.outcome is not None and c.outcome.phase == CANCELLED,
        _ended_cancelled,
    ),
    # Before a (next) attempt.
    _t(
        "retry-wait",
        frozenset({PENDING}),
        ACTS_ONLY,
        lambda c: c.next_retry is not None and not c.retry_due,
        _retry_wait,
    ),
    _t(
        "image-not-allowed",
        UNSTARTED,
        _to(FAILED),
        lambda c: c.wants_start and c.image_refusal is not None,
        _image_not_allowed,
    ),
    _t(
        "invalid-inputs",
        UNSTARTED,
        _to(FAILED),
        lambda c: c.wants_start and c.input_error is not None,
        _invalid_inputs,
    ),
    _t(
        "flow-wait",
        UNSTARTED,
        _to(PENDING),
        lambda c: c.wants_start and c.type == "FLOW" and c.flow is None and c.flow_wait_left > 0,
        _flow_wait,
    ),
    _t(
        "flow-not-found",
        UNSTARTED,
        _to(FAILED),
        lambda c: c.wants_start and c.type == "FLOW" and c.flow is None,
        _flow_not_found,
    ),
    _t(
        "flow-not-ready",
        UNSTARTED,
        _to(FAILED),
        lambda c: c.wants_start and c.attempts == 0 and c.flow_not_ready is not None,
        _flow_not_ready,
    ),
    # The Pod runs only the code the operator checked (its hash): wait for the check.
    _t(
        "flow-check-wait",
        UNSTARTED,
        _to(PENDING),
        lambda c: c.wants_start and c.flow_unchecked and c.flow_check_wait_left > 0,
        _flow_check_wait,
    ),
    _t(
        "flow-not-checked",
        UNSTARTED,
        _to(FAILED),
        lambda c: c.wants_start and c.flow_unchecked,
        _flow_not_checked,
    ),
    # The last Pod create was refused: its ServiceAccount does not exist (yet).
    _t(
        "service-account-wait",
        UNSTARTED,
        _to(PENDING),
        lambda c: (
            c.wants_start
            and c.missing_service_account is not None
            and c.service_account_wait_left > 0
        ),
        _service_account_wait,
    ),
    _t(
        "service-account-not-found",
        UNSTARTED,
        _to(FAILED),
        lambda c: c.wants_start and c.missing_service_account is not None,
        _service_account_not_found,
    ),
    _t("start", UNSTARTED, _to(PENDING), lambda c: c.wants_start, _start),
    _t(
        "hold",
        UNSTARTED,
        _to(PENDING),
        lambda c: c.attempts == 0 and _hold_changed(c),
        _hold,
    ),
    # The attempt Pod is alive; the runner's report says whether it runs, waits on children or
    # is paused.
    _t(
        "pod-pending",
        frozenset({PENDING}),
        ACTS_ONLY,
        lambda c: c.live_pod and c.pod is not None and c.pod.phase == "Pending",
        _pod_pending,
    ),
    _t(
        "pod-running",
        LIVE,
        _to(RUNNING, WAITING, PAUSED),
        lambda c: (
            c.live_pod
            and c.pod is not None
            and c.pod.phase == "Running"
            and _running_phase(c) != c.phase
        ),
        _to_running,
    ),
)
"""The lifecycle, tried in order. A row's ``targets`` are the only phases it may write."""


class IllegalTransition(Exception):
    """A decision would write a phase its row of the table does not list (a bug to fix)."""


def written_phases(actions: Sequence[Action]) -> frozenset[str]:
    """The phases ``actions`` write (``status.phase`` of their status patches)."""
    return frozenset(
        str(a.patch["phase"]) for a in actions if isinstance(a, PatchStatus) and "phase" in a.patch
    )


def check_transition(phase: str, transition: Transition | None, actions: Sequence[Action]) -> None:
    """Raise :class:`IllegalTransition` unless ``actions`` write only phases ``transition`` lists.

    ``phase`` is the Execution's phase when it was decided; no transition writes nothing.
    """
    allowed = transition.targets if transition is not None else ACTS_ONLY
    unlisted = written_phases(actions) - allowed
    if not unlisted:
        return
    move = f"from {phase or 'new'!r} to {', '.join(sorted(unlisted))}"
    if transition is None:
        raise IllegalTransition(
            f"No row of the lifecycle table fired, yet a decision moves {move}."
        )
    listed = ", ".join(sorted(allowed)) or "no phase"
    raise IllegalTransition(
        f"Row {transition.name!r} of the lifecycle table moves {move}, but lists only {listed}."
    )


def select(ctx: Ctx) -> Transition | None:
    """The first transition whose source phase and guard match, if any."""
    for transition in TRANSITIONS:
        if ctx.phase in transition.sources and transition.guard(ctx):
            return transition
    return None


def children_summary(children: Sequence[ChildView]) -> list[dict[str, str]]:
    """``status.children``: references only, sorted by name."""
    return [
        {"name": c.name, "type": c.type, "phase": c.phase}
        for c in sorted(children, key=lambda c: c.name)
    ]


def decide(
    execution: Mapping[str, Any],
    pod: PodView | None,
    children: Sequence[ChildView],
    now: datetime,
    *,
    flow: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    missing_service_account: str | None = None,
) -> list[Action]:
    """The actions that move ``execution`` towards its desired state.

    ``pod`` is the Pod of the current attempt (``status.podName``), ``None`` if there is none
    (the caller must have confirmed a missing Pod with the API server, not only a cache).
    ``flow`` is the referenced Flow (``None`` if missing or not a FLOW). ``children`` may
    hold anything that claims to be a child; only those it controls count
    (:func:`owned_children`). ``missing_service_account`` names the ServiceAccount the API
    server just refused to create the attempt's Pod for because it does not exist (the engine
    tries the create again after each decision that waits, so the fact is always fresh). Raises
    :class:`IllegalTransition` (and asks for nothing) if the rule that fired would write a phase
    the table does not list for it.
    """
    children = owned_children(execution, children)
    ctx = Ctx(execution, pod, children, flow, now, settings or Settings(), missing_service_account)
    transition = select(ctx)
    actions = transition.effect(ctx) if transition is not None else []
    check_transition(ctx.phase, transition, actions)
    summary = children_summary(children)
    if children and summary != list(ctx.status.get("children") or []):
        for i, action in enumerate(actions):
            if isinstance(action, PatchStatus):
                actions[i] = PatchStatus({**action.patch, "children": summary})
                break
        else:
            actions.insert(0, PatchStatus({"children": summary}))
    return actions
