"""The scheduler: one asyncio task per Schedule that sleeps until its next instant and acts.

Each task (a :class:`ScheduleLoop`) runs a *round* when its next instant comes, when the
Schedule's spec changes, or when one of its Executions changes phase: it reads the Schedule
and lists its Executions fresh from the API server, asks :func:`kumulus.domain.schedule.decide`
what to do, then creates Executions (deterministic names: ``AlreadyExists`` means another
operator process fired the instant, which is fine), cancels (``Replace``), prunes history,
writes the status guarded by ``resourceVersion`` and reports skipped runs as Events.

Timing: the next wake-up is an absolute wall-clock instant; every sleep is computed from it
afresh (:func:`kumulus.domain.schedule.sleep_seconds`, at most 30 s at a time so a stepped
clock is noticed), so the timer does not drift however long it runs. Deleting a Schedule
cancels its task; no finalizer is involved, so deletion never waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kumulus.domain.schedule import (
    COUNT_CAP,
    RUN_NAME_TAKEN,
    Decision,
    InvalidSpec,
    Policy,
    RunView,
    Skip,
    decide,
    execution_manifest,
    invalid_status,
    owns_run,
    run_name_taken_message,
    schedule_label_value,
    sleep_seconds,
    with_fire_results,
)
from kumulus.domain.settings import Settings
from kumulus.domain.timeutil import format_time, parse_time
from kumulus.k8s import events, schedules
from kumulus.k8s.keeper import ready_condition
from kumulus.k8s.resources import Key, object_key
from kumulus.observability import metrics

__all__ = ["EVENT_WINDOW", "ScheduleLoop", "Scheduler"]

log = logging.getLogger("kumulus.schedule")

Clock = Callable[[], datetime]

_TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
EVENT_WINDOW = timedelta(seconds=30)
"""At most one Skipped (and one Blocked) Event per Schedule in this window; counts add up."""


def _now() -> datetime:
    return datetime.now(UTC)


def _owner(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the Schedule controlling an Execution."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Schedule" and ref.get("controller"):
            return str(ref.get("name")), str(ref.get("uid"))
    return None


def _differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether merge-patching ``desired`` (``None`` = remove) would change ``current``."""
    for key, value in desired.items():
        if value is None:
            if current.get(key) is not None:
                return True
        elif current.get(key) != value:
            return True
    return False


def _plural(count: int) -> str:
    text = f"{count}+" if count >= COUNT_CAP else str(count)
    return f"{text} run" if count == 1 else f"{text} runs"


@dataclasses.dataclass
class _Batch:
    count: int
    first: datetime
    last: datetime
    why: str


class _EventBatcher:
    """Rate-limits skip reports: at most one Event per reason per window, counts merged."""

    def __init__(self) -> None:
        self.sent: dict[str, datetime] = {}
        self.pending: dict[str, _Batch] = {}

    def add(self, skip: Skip) -> None:
        batch = self.pending.get(skip.reason)
        if batch is None:
            self.pending[skip.reason] = _Batch(skip.count, skip.first, skip.last, skip.why)
        else:
            batch.count += skip.count
            batch.first, batch.last = min(batch.first, skip.first), max(batch.last, skip.last)
            batch.why = skip.why

    def ready(self, now: datetime) -> list[tuple[str, _Batch]]:
        out = []
        for reason in list(self.pending):
            sent = self.sent.get(reason)
            if sent is None or now - sent >= EVENT_WINDOW:
                out.append((reason, self.pending.pop(reason)))
                self.sent[reason] = now
        return out

    def due_at(self) -> datetime | None:
        times = [self.sent[r] + EVENT_WINDOW for r in self.pending if r in self.sent]
        return min(times) if times else None


class ScheduleLoop:
    """The task of one Schedule: rounds at its instants and on changes."""

    def __init__(self, key: Key, body: Mapping[str, Any], clock: Clock) -> None:
        self.key = key
        self.uid = str((body.get("metadata") or {}).get("uid") or "")
        self.generation = (body.get("metadata") or {}).get("generation")
        self.clock = clock
        self.decided_through: datetime | None = None
        self.decided_generation: object = None
        self.reported_through: datetime | None = None
        self.wake = asyncio.Event()
        self.batcher = _EventBatcher()
        self.body: dict[str, Any] = copy.deepcopy(dict(body))
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def update(self, body: Mapping[str, Any]) -> None:
        """A watch event of the Schedule: a spec change (or deletion start) runs a round now."""
        meta = body.get("metadata") or {}
        if meta.get("generation") != self.generation or meta.get("deletionTimestamp"):
            self.generation = meta.get("generation")
            self.poke()
        self.body = copy.deepcopy(dict(body))

    def poke(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                wake_at = await self.round()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "Failed a round of Schedule %s/%s; retrying in %.0f s.", *self.key, backoff
                )
                wake_at = self.clock() + timedelta(seconds=backoff)
                backoff = min(backoff * 2, 60.0)
            await self.sleep_until(wake_at)

    async def sleep_until(self, wake_at: datetime | None) -> None:
        """Sleep until ``wake_at`` (wall clock), a poke, or a pending Event is due."""
        while True:
            if self.wake.is_set():
                self.wake.clear()
                return
            targets = [t for t in (wake_at, self.batcher.due_at()) if t is not None]
            delay = sleep_seconds(self.clock(), min(targets) if targets else None)
            if delay is not None and delay <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)

    # ------------------------------------------------------------------ one round

    async def round(self) -> datetime | None:
        namespace, name = self.key
        fresh, listed = await asyncio.gather(
            schedules.get_schedule(namespace, name),
            schedules.list_runs(namespace, schedule_label_value(name)),
        )
        if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
            return None
        meta = fresh.get("metadata") or {}
        if str(meta.get("uid") or "") != self.uid:
            return None  # a new Schedule of the same name; its own loop takes over
        self.body = fresh
        generation = meta.get("generation")
        status = fresh.get("status") or {}
        try:
            policy = Policy.from_spec(fresh.get("spec") or {})
        except InvalidSpec as err:
            await self._invalid(fresh, err)
            self.decided_through, self.decided_generation = self.clock(), generation
            return None
        runs = [RunView.from_dict(r) for r in listed if _owner(r) == (name, self.uid)]
        now = self.clock()
        # After a spec change nothing is "current": instants of the new spec that came due
        # before it was seen count as missed and follow catchUp.
        since = self.decided_through if generation == self.decided_generation else None
        decision = decide(
            policy,
            now,
            name=name,
            created=parse_time(meta.get("creationTimestamp")),
            status=status,
            runs=runs,
            decided_through=since,
            reported_through=self.reported_through,
            generation=int(generation) if generation is not None else None,
        )
        try:
            await self._act(fresh, policy, decision)
        except schedules.NamespaceTerminating:
            log.info("Stopped Schedule %s/%s: its namespace is being deleted.", namespace, name)
            return None
        self.decided_through, self.decided_generation = now, generation
        self.reported_through = decision.reported_through
        return decision.wake_at

    async def _act(self, body: dict[str, Any], policy: Policy, decision: Decision) -> None:
        namespace, name = self.key
        for old in decision.cancel:
            await schedules.cancel_execution(namespace, old)
            log.info(
                "Cancelled Execution %s/%s of Schedule %s (concurrencyPolicy Replace).",
                namespace,
                old,
                name,
            )
            await events.post_event(
                body, "Normal", "Replaced", f"Cancelled Execution {old} to start a newer run."
            )
        started = 0
        taken: list[tuple[str, str]] = []
        for fire in decision.fire:
            manifest = execution_manifest(body, fire)
            ex_name = manifest["metadata"]["name"]
            created = await schedules.create_execution(manifest)
            if not created:
                existing = await schedules.get_execution(namespace, ex_name)
                if existing is not None and not owns_run(existing, self.uid):
                    message = run_name_taken_message(name, ex_name, fire.instant)
                    taken.append((ex_name, message))
                    log.warning("%s (Schedule %s/%s)", message, namespace, name)
                    await events.post_event(body, "Warning", RUN_NAME_TAKEN, message)
                    continue
            started += 1
            lag = (self.clock() - fire.instant).total_seconds()
            when = format_time(fire.instant)
            late = "catch-up of a missed run, " if fire.catch_up else ""
            if created:
                metrics.schedule_fired(lag, fire.catch_up)
                log.info(
                    "Created Execution %s/%s for Schedule %s at %s (%s%.3f s after its time).",
                    namespace,
                    ex_name,
                    name,
                    when,
                    late,
                    lag,
                )
                await events.post_event(
                    body,
                    "Normal",
                    "Started",
                    f"Started Execution {ex_name} for {when} ({late}{lag:.3f} s after its time).",
                )
            else:
                log.info(
                    "Found Execution %s/%s for %s already created; did not start it twice.",
                    namespace,
                    ex_name,
                    when,
                )
        status = body.get("status") or {}
        generation = (body.get("metadata") or {}).get("generation")
        desired = with_fire_results(
            decision.status,
            started=started,
            taken=taken,
            now=self.clock(),
            generation=int(generation) if generation is not None else None,
        )
        if _differs(status, desired):
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                await schedules.patch_schedule_status(namespace, name, rv, desired)
            except schedules.Conflict:
                log.info("Re-read Schedule %s/%s after a conflicting update.", namespace, name)
                self.poke()
        for old in decision.prune:
            await schedules.delete_execution(namespace, old)
            log.info(
                "Deleted Execution %s/%s of Schedule %s (beyond the history limits).",
                namespace,
                old,
                name,
            )
        for skip in decision.skips:
            self.batcher.add(skip)
        await self._flush(body)

    async def _flush(self, body: Mapping[str, Any]) -> None:
        namespace, name = self.key
        for reason, batch in self.batcher.ready(self.clock()):
            span = format_time(batch.first)
            if batch.last != batch.first:
                span += f" .. {format_time(batch.last)}"
            if reason == "Blocked":
                text = f"Held back {_plural(batch.count)} due {span}: {batch.why}."
            else:
                text = f"Skipped {_plural(batch.count)} due {span}: {batch.why}."
            log.info("%s (Schedule %s/%s)", text, namespace, name)
            await events.post_event(body, "Warning", reason, text)

    async def _invalid(self, body: dict[str, Any], err: InvalidSpec) -> None:
        """Ready=False with the reason, and one Event per change, never a retry loop."""
        namespace, name = self.key
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        generation = meta.get("generation")
        gen = int(generation) if generation is not None else None
        ready: Mapping[str, Any] = ready_condition(body) or {}
        reported = (
            ready.get("status") == "False"
            and ready.get("reason") == err.reason
            and ready.get("message") == err.message
            and ready.get("observedGeneration") == gen
        )
        desired = invalid_status(err, self.clock(), status, gen)
        if _differs(status, desired):
            with contextlib.suppress(schedules.Conflict):
                await schedules.patch_schedule_status(
                    namespace, name, meta.get("resourceVersion"), desired
                )
        if not reported:
            log.warning("Marked Schedule %s/%s not Ready: %s", namespace, name, err.message)
            await events.post_event(body, "Warning", err.reason, err.message)


class Scheduler:
    """All Schedule loops of this operator process, fed by kopf watch events."""

    def __init__(self, settings: Settings, clock: Clock = _now) -> None:
        self.settings = settings
        self.clock = clock
        self.loops: dict[Key, ScheduleLoop] = {}
        self._phases: dict[Key, str] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def watched(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def on_schedule(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a Schedule (``None`` type = initial listing)."""
        key = object_key(body)
        if not self.watched(key[0]):
            return
        loop = self.loops.get(key)
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if event_type == "DELETED" or (loop is not None and loop.uid != uid):
            if loop is not None:
                del self.loops[key]
                self._stop(loop)
                log.info("Stopped scheduling Schedule %s/%s (deleted).", *key)
            if event_type == "DELETED":
                return
            loop = None
        if loop is None:
            loop = ScheduleLoop(key, body, self.clock)
            self.loops[key] = loop
            loop.start()
            log.info("Started scheduling Schedule %s/%s.", *key)
        else:
            loop.update(body)

    def on_execution(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an Execution a Schedule started: phase changes run a round."""
        owner = _owner(body)
        if owner is None:
            return
        namespace, ex_name = object_key(body)
        ekey = (namespace, ex_name)
        loop = self.loops.get((namespace, owner[0]))
        if event_type == "DELETED":
            before = self._phases.pop(ekey, None)
            if loop is not None and before is not None and before not in _TERMINAL:
                loop.poke()
            return
        if loop is None or loop.uid != owner[1]:
            return
        phase = str((body.get("status") or {}).get("phase") or "")
        before = self._phases.get(ekey)
        self._phases[ekey] = phase
        if before != phase:
            loop.poke()

    def _stop(self, loop: ScheduleLoop) -> None:
        task = asyncio.get_running_loop().create_task(loop.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def shutdown(self) -> None:
        loops = list(self.loops.values())
        self.loops.clear()
        for loop in loops:
            await loop.stop()
