"""What a Schedule does now: pure decisions with an injected clock.

:func:`decide` takes the Schedule's policy, the time, what the operator process remembers of
its previous decision and the Executions that exist for the Schedule (listed by label: the
source of truth for which instants already ran), and returns which instants to start, which
running Executions to cancel (``Replace``), which finished ones to prune, what to report, the
status to write and when to wake up next. It does no I/O, so every timing rule is unit-tested
with a fake clock, and the handler layer may call it after a restart or from several operator
processes at once.

Exactly once: the Execution of an instant has a deterministic name (:func:`execution_name`),
so a second create of the same instant (a restart, a second operator process, a retry) gets
``AlreadyExists`` instead of a duplicate.

Which instants are due: all instants of the expression in ``(lower, now]`` where ``lower`` is
the newest of ``status.lastScheduleTime``, the newest instant with an Execution and the
Schedule's creation time. Of those, the *current* instant is the newest one that came due
since this process's previous decision (the instant the timer woke up for); every other due
instant is *missed*: it came due while the operator was down, the Schedule was suspended or
``Forbid`` blocked it. ``catchUp`` picks what runs:

* ``None``: only the current instant; missed ones are skipped.
* ``Latest`` (default, like CronJob): the newest due instant, current or missed.
* ``All``: each missed instant, oldest first, but only the newest ``maxCatchUp`` of them,
  then the current one.

``startingDeadlineSeconds`` skips any instant older than that. Concurrency then applies as in
CronJob: ``Allow`` starts them all; ``Forbid`` starts nothing while an Execution of the
Schedule is active (and then one at a time, oldest first); ``Replace`` cancels the active ones
(``desiredState: Cancelled``) and starts only the newest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kumulus import API_VERSION
from kumulus.domain import naming
from kumulus.domain.cron import CronError, CronSchedule, TimeZoneError
from kumulus.domain.lifecycle import set_condition
from kumulus.domain.timeutil import format_time, parse_time

__all__ = [
    "ANNOTATION_CATCH_UP",
    "ANNOTATION_SCHEDULED_TIME",
    "LABEL_SCHEDULE",
    "LABEL_SCHEDULED_TIME",
    "NEXT_TIMES",
    "RUN_NAME_TAKEN",
    "RUN_STARTED",
    "Decision",
    "Fire",
    "InvalidSpec",
    "Policy",
    "RunView",
    "Skip",
    "decide",
    "execution_manifest",
    "execution_name",
    "invalid_status",
    "owns_run",
    "run_name_taken_message",
    "schedule_label_value",
    "sleep_seconds",
    "with_fire_results",
]

LABEL_SCHEDULE = "kumulus.dev/schedule"
"""Label on every Execution a Schedule started: the Schedule's name (shortened to 63)."""

LABEL_SCHEDULED_TIME = "kumulus.dev/scheduled-time"
"""Label on every Execution a Schedule started: its instant in Unix seconds."""

ANNOTATION_SCHEDULED_TIME = "kumulus.dev/scheduled-time"
"""Annotation with the instant in RFC 3339 (UTC), for people."""

ANNOTATION_CATCH_UP = "kumulus.dev/catch-up"
"""Annotation ``"true"`` on an Execution started late for a missed instant (catch-up)."""

RUN_STARTED = "RunStarted"
"""Condition type: whether the runs the Schedule fired last were started (``True``/``Started``)
or one's name was taken by an Execution the Schedule does not own (``False``/RunNameTaken)."""

RUN_NAME_TAKEN = "RunNameTaken"
"""Reason of the ``RunStarted=False`` condition and of the Warning Event naming the taken run."""

NEXT_TIMES = 3
"""How many upcoming instants ``status.nextScheduleTimes`` lists."""

MAX_SLEEP_SECONDS = 30.0
"""Longest single sleep: the wall clock is re-read at least this often (clock steps)."""

COUNT_CAP = 1000
"""Skipped instants are counted up to this number ("1000 or more")."""

_TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})


def schedule_label_value(schedule: str) -> str:
    """Value of the ``kumulus.dev/schedule`` label (the name, or its shortened form)."""
    return naming.shorten(schedule, naming.MAX_NAME)


def execution_name(schedule: str, instant: datetime) -> str:
    """``<schedule>-<unix seconds>``, hash-shortened to 63 characters; one name per instant."""
    return naming.shorten(schedule, naming.MAX_NAME, f"-{int(instant.timestamp())}")


def sleep_seconds(now: datetime, wake_at: datetime | None) -> float | None:
    """How long to sleep before re-checking, from the absolute ``wake_at`` (no drift).

    ``None`` means "until something changes". Sleeps are capped at :data:`MAX_SLEEP_SECONDS`
    so a stepped wall clock is noticed; each sleep is recomputed from the absolute instant,
    never from the previous sleep, so errors do not add up over hours.
    """
    if wake_at is None:
        return None
    return max(0.0, min((wake_at - now).total_seconds(), MAX_SLEEP_SECONDS))


# --------------------------------------------------------------------------- inputs


class InvalidSpec(ValueError):
    """The Schedule's spec cannot be scheduled; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Policy:
    """A Schedule's spec, validated."""

    cron: CronSchedule
    concurrency: str = "Allow"
    suspend: bool = False
    starting_deadline_seconds: int | None = None
    catch_up: str = "Latest"
    max_catch_up: int = 10
    successful_history_limit: int = 3
    failed_history_limit: int = 1

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Policy:
        """Validate ``spec`` (camelCase, as stored); raises :class:`InvalidSpec`."""
        try:
            cron = CronSchedule.of(
                str(spec.get("schedule") or ""), str(spec.get("timeZone") or "UTC")
            )
        except CronError as err:
            raise InvalidSpec("InvalidSchedule", str(err)) from err
        except TimeZoneError as err:
            raise InvalidSpec("InvalidTimeZone", str(err)) from err
        deadline = spec.get("startingDeadlineSeconds")
        return cls(
            cron=cron,
            concurrency=str(spec.get("concurrencyPolicy") or "Allow"),
            suspend=bool(spec.get("suspend", False)),
            starting_deadline_seconds=int(deadline) if deadline is not None else None,
            catch_up=str(spec.get("catchUp") or "Latest"),
            max_catch_up=max(1, int(spec.get("maxCatchUp", 10))),
            successful_history_limit=max(0, int(spec.get("successfulHistoryLimit", 3))),
            failed_history_limit=max(0, int(spec.get("failedHistoryLimit", 1))),
        )


@dataclasses.dataclass(frozen=True)
class RunView:
    """An Execution of the Schedule as the decision sees it."""

    name: str
    instant: datetime | None
    phase: str = ""
    desired_state: str = "Running"
    end_time: datetime | None = None

    @property
    def active(self) -> bool:
        return self.phase not in _TERMINAL

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> RunView:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        instant: datetime | None = None
        raw = labels.get(LABEL_SCHEDULED_TIME)
        if raw is not None and str(raw).isdigit():
            instant = datetime.fromtimestamp(int(raw), UTC)
        status = body.get("status") or {}
        return cls(
            name=str(meta.get("name", "")),
            instant=instant,
            phase=str(status.get("phase") or ""),
            desired_state=str((body.get("spec") or {}).get("desiredState") or "Running"),
            end_time=parse_time(status.get("endTime")),
        )


# --------------------------------------------------------------------------- outputs


@dataclasses.dataclass(frozen=True)
class Fire:
    """Start the Execution of ``instant``."""

    instant: datetime
    catch_up: bool = False
    """A missed instant started late (annotated ``kumulus.dev/catch-up``)."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """Instants that will never run, reported once as one Event."""

    reason: str
    """Event reason: ``Skipped`` (catch-up policy, deadline, Replace) or ``Blocked``."""
    count: int
    """How many (at most :data:`COUNT_CAP`)."""
    first: datetime
    last: datetime
    why: str
    """Human-readable cause, e.g. ``catchUp None``."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Everything one decision asks for."""

    fire: tuple[Fire, ...] = ()
    cancel: tuple[str, ...] = ()
    prune: tuple[str, ...] = ()
    skips: tuple[Skip, ...] = ()
    blocked_by: str | None = None
    """The active Execution that kept due instants from starting (Forbid)."""
    next_times: tuple[datetime, ...] = ()
    wake_at: datetime | None = None
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The complete status to write (camelCase)."""
    reported_through: datetime | None = None
    """The newest instant whose fate (started or skipped) has now been reported."""


# --------------------------------------------------------------------------- decision


def _newest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _prune(policy: Policy, runs: Sequence[RunView]) -> tuple[str, ...]:
    """Finished Executions beyond the history limits, oldest first."""
    oldest = datetime.min.replace(tzinfo=UTC)
    finished = sorted(
        (r for r in runs if not r.active), key=lambda r: (r.instant or oldest, r.name), reverse=True
    )
    succeeded = [r for r in finished if r.phase == "Succeeded"]
    failed = [r for r in finished if r.phase != "Succeeded"]
    doomed = succeeded[policy.successful_history_limit :] + failed[policy.failed_history_limit :]
    doomed.sort(key=lambda r: (r.instant or oldest, r.name))
    return tuple(r.name for r in doomed)


@dataclasses.dataclass(frozen=True)
class _Pick:
    """Which due instants start now, wait, or are skipped for good."""

    chosen: list[datetime]
    pending: list[datetime]
    cancel: list[str]
    why: str
    blocked_by: str | None


def _pick(
    policy: Policy,
    due: list[datetime],
    current: datetime | None,
    floor: datetime | None,
    active: Sequence[RunView],
) -> _Pick:
    def alive(instant: datetime) -> bool:
        return floor is None or instant >= floor

    missed = [i for i in due if i != current]
    if policy.catch_up == "None":
        chosen = [current] if current is not None and alive(current) else []
        why = "catchUp None"
    elif policy.catch_up == "All":
        chosen = [i for i in missed if alive(i)][-policy.max_catch_up :]
        if current is not None and alive(current):
            chosen.append(current)
        why = f"catchUp All with maxCatchUp {policy.max_catch_up}"
    else:
        chosen = [due[-1]] if due and alive(due[-1]) else []
        why = "catchUp Latest"
    if floor is not None and due and not alive(due[0]):
        why += f", startingDeadlineSeconds {policy.starting_deadline_seconds}"

    pending: list[datetime] = []
    cancel: list[str] = []
    blocked_by: str | None = None
    if policy.concurrency == "Forbid":
        if active:
            blocked_by = active[0].name
            if policy.catch_up == "None":
                if chosen:
                    why += f"; concurrencyPolicy Forbid: Execution {blocked_by} was still running"
            else:
                pending = chosen
            chosen = []
        else:
            # One at a time: the oldest starts, the others wait for it to end.
            chosen, pending = chosen[:1], chosen[1:]
    elif policy.concurrency == "Replace" and chosen:
        if len(chosen) > 1:
            why += "; concurrencyPolicy Replace starts only the newest"
        chosen = chosen[-1:]
        cancel = [r.name for r in active if r.desired_state != "Cancelled"]
    return _Pick(chosen, pending, cancel, why, blocked_by)


def decide(
    policy: Policy,
    now: datetime,
    *,
    name: str,
    created: datetime | None,
    status: Mapping[str, Any],
    runs: Sequence[RunView],
    decided_through: datetime | None,
    reported_through: datetime | None,
    generation: int | None = None,
) -> Decision:
    """Decide what Schedule ``name`` does at ``now``.

    ``created`` is the Schedule's creationTimestamp, ``status`` its current status and
    ``runs`` its Executions (listed by label). ``decided_through`` is the ``now`` of this
    process's previous decision (``None`` on its first): due instants after it are *current*,
    older ones *missed*. ``reported_through`` is the newest instant whose fate (started or
    skipped) this process already reported.
    """
    cron = policy.cron
    last_schedule = parse_time(status.get("lastScheduleTime"))
    newest_run = _newest(*(r.instant for r in runs))
    lower = _newest(created, last_schedule, newest_run) or now
    active = [r for r in runs if r.active]

    pick = _Pick([], [], [], "", None)
    skips: list[Skip] = []
    dropped_last: datetime | None = None
    current: datetime | None = None
    if not policy.suspend:
        # One more than can ever be kept, so the newest skipped instant is in the window.
        window = policy.max_catch_up + 2 if policy.catch_up == "All" else 2
        due = cron.latest(lower, now, window)
        if due and decided_through is not None and due[-1] > decided_through:
            current = due[-1]
        floor = None
        if policy.starting_deadline_seconds is not None:
            floor = now - timedelta(seconds=policy.starting_deadline_seconds)
        pick = _pick(policy, due, current, floor, active)

        # Skipped for good: every due instant older than the oldest one kept (a prefix).
        kept = pick.chosen + pick.pending
        oldest_kept = min(kept) if kept else None
        older = [i for i in due if oldest_kept is None or i < oldest_kept]
        dropped_last = older[-1] if older else None
        since = _newest(lower, reported_through) or lower
        if dropped_last is not None and dropped_last > since:
            first = cron.next_after(since) or dropped_last
            count = cron.count_between(since, dropped_last, COUNT_CAP)
            skips.append(Skip("Skipped", count, first, dropped_last, pick.why))
        if pick.pending and pick.blocked_by is not None:
            fresh = [i for i in pick.pending if i > (decided_through or lower)]
            if fresh:
                skips.append(
                    Skip(
                        "Blocked",
                        len(fresh),
                        fresh[0],
                        fresh[-1],
                        f"Execution {pick.blocked_by} is still running (concurrencyPolicy "
                        f"Forbid); {pick.why} decides what runs when it ends",
                    )
                )

    fires = tuple(Fire(i, catch_up=i != current) for i in pick.chosen)
    next_times = () if policy.suspend else tuple(cron.upcoming(now, NEXT_TIMES))
    new_last = _newest(last_schedule, newest_run, *(f.instant for f in fires))
    active_names = [r.name for r in sorted(active, key=lambda r: (r.instant or now, r.name))]
    active_names += [execution_name(name, f.instant) for f in fires]
    new_status = _status(
        policy,
        now,
        status,
        runs,
        last_schedule=new_last,
        next_times=next_times,
        active=list(dict.fromkeys(active_names)),
        generation=generation,
    )
    return Decision(
        fire=fires,
        cancel=tuple(pick.cancel),
        prune=_prune(policy, runs),
        skips=tuple(skips),
        blocked_by=pick.blocked_by,
        next_times=next_times,
        wake_at=next_times[0] if next_times else None,
        status=new_status,
        reported_through=_newest(reported_through, dropped_last, *(f.instant for f in fires)),
    )


def _status(
    policy: Policy,
    now: datetime,
    status: Mapping[str, Any],
    runs: Sequence[RunView],
    *,
    last_schedule: datetime | None,
    next_times: Sequence[datetime],
    active: list[str],
    generation: int | None,
) -> dict[str, Any]:
    """The whole status after this decision (``None`` values remove keys)."""
    succeeded = [r.end_time or r.instant for r in runs if r.phase == "Succeeded"]
    last_success = _newest(parse_time(status.get("lastSuccessfulTime")), *succeeded)
    where = f"schedule {policy.cron.expr.source!r} in {policy.cron.zone.key}"
    if policy.suspend:
        reason, message = "Suspended", f"Suspended: {where} starts no runs."
    else:
        reason, message = "Scheduled", f"Scheduled: {where}."
    conditions = set_condition(
        status.get("conditions") or [], "Ready", True, reason, message, generation, now
    )
    return {
        "lastScheduleTime": format_time(last_schedule) if last_schedule else None,
        "nextScheduleTimes": [format_time(t) for t in next_times] or None,
        "nextScheduleTime": format_time(next_times[0]) if next_times else None,
        "active": [{"name": n} for n in active] or None,
        "lastSuccessfulTime": format_time(last_success) if last_success else None,
        "conditions": conditions,
        "observedGeneration": generation,
    }


def invalid_status(
    error: InvalidSpec, now: datetime, status: Mapping[str, Any], generation: int | None
) -> dict[str, Any]:
    """The status of a Schedule whose spec cannot be scheduled: Ready=False, no next times."""
    conditions = set_condition(
        status.get("conditions") or [], "Ready", False, error.reason, error.message, generation, now
    )
    return {
        "nextScheduleTimes": None,
        "nextScheduleTime": None,
        "conditions": conditions,
        "observedGeneration": generation,
    }


def owns_run(body: Mapping[str, Any], schedule_uid: str) -> bool:
    """Whether the Execution ``body`` is a run of the Schedule with ``schedule_uid``.

    A run's name (``<schedule>-<unix seconds>``) and labels are predictable and anyone who may
    create Executions can take them first; only an ownerReference to the Schedule's uid as its
    controller (as :func:`execution_manifest` writes it) makes an Execution the Schedule's run.
    """
    if not schedule_uid:
        return False
    return any(
        ref.get("kind") == "Schedule" and ref.get("uid") == schedule_uid and ref.get("controller")
        for ref in (body.get("metadata") or {}).get("ownerReferences") or []
    )


def run_name_taken_message(schedule: str, run: str, instant: datetime) -> str:
    """Message of the RunNameTaken Event and condition."""
    return (
        f"The run of {format_time(instant)} did not start: its name {run} is taken by an "
        f"Execution that Schedule {schedule} does not own; it is not counted as a run."
    )


def with_fire_results(
    status: Mapping[str, Any],
    *,
    started: int,
    taken: Sequence[tuple[str, str]],
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """The status to write once the fired runs were created: ``taken`` (name, message) runs
    leave ``active`` and set ``RunStarted=False``/RunNameTaken; otherwise runs that ``started``
    set ``RunStarted=True``. A round that fired nothing keeps the condition as it was.

    ``lastScheduleTime`` still counts a taken instant: it was decided (and reported), and its
    name stays taken, so it is not tried again.
    """
    out = dict(status)
    if not taken and not started:
        return out
    names = {name for name, _ in taken}
    active = [a for a in status.get("active") or [] if a.get("name") not in names]
    out["active"] = active or None
    if taken:
        cond = (False, RUN_NAME_TAKEN, " ".join(message for _, message in taken))
    else:
        cond = (True, "Started", f"Started {started} run{'s' if started != 1 else ''}.")
    out["conditions"] = set_condition(
        status.get("conditions") or [], RUN_STARTED, cond[0], cond[1], cond[2], generation, now
    )
    return out


def execution_manifest(schedule: Mapping[str, Any], fire: Fire) -> dict[str, Any]:
    """The Execution of ``fire.instant``: owned by and labelled with the Schedule."""
    meta = schedule.get("metadata") or {}
    spec = schedule.get("spec") or {}
    name = str(meta.get("name"))
    ex_spec: dict[str, Any] = {
        "type": "FLOW",
        "flowRef": {"name": str((spec.get("flowRef") or {}).get("name", ""))},
        "mode": str(spec.get("mode") or "productive"),
    }
    if spec.get("inputs") is not None:
        ex_spec["inputs"] = spec["inputs"]
    template = spec.get("executionTemplate") or {}
    for key in ("timeoutSeconds", "retry", "ttlSecondsAfterFinished", "podTemplate"):
        if template.get(key) is not None:
            ex_spec[key] = template[key]
    annotations = {ANNOTATION_SCHEDULED_TIME: format_time(fire.instant)}
    if fire.catch_up:
        annotations[ANNOTATION_CATCH_UP] = "true"
    return {
        "apiVersion": API_VERSION,
        "kind": "Execution",
        "metadata": {
            "name": execution_name(name, fire.instant),
            "namespace": str(meta.get("namespace") or "default"),
            "labels": {
                LABEL_SCHEDULE: schedule_label_value(name),
                LABEL_SCHEDULED_TIME: str(int(fire.instant.timestamp())),
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
            },
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Schedule",
                    "name": name,
                    "uid": str(meta.get("uid", "")),
                    "controller": True,
                }
            ],
        },
        "spec": ex_spec,
    }
