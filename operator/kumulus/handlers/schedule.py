"""kopf handlers of Schedules: feed watch events into the scheduler, nothing else.

Schedule events start, update (a spec change runs a round at once) and stop (deletion) the
per-Schedule loop of :class:`kumulus.k8s.scheduler.Scheduler`; events of Executions labelled
``kumulus.dev/schedule`` wake their Schedule when a phase changes (``Forbid`` waits for it,
``status.active`` and history follow it). Event handlers on purpose: no finalizer and no
progress annotations, so deleting a Schedule never waits for the operator, and several
operator processes may run at once (deterministic Execution names keep runs exactly once).
"""

from __future__ import annotations

from typing import Any

import kopf

from kumulus.domain.schedule import LABEL_SCHEDULE
from kumulus.domain.settings import Settings
from kumulus.k8s.scheduler import Scheduler

_scheduler: Scheduler | None = None


def scheduler() -> Scheduler:
    """The scheduler of this process, configured from ``KUMULUS_*`` environment variables."""
    global _scheduler
    if _scheduler is None:
        _scheduler = Scheduler(Settings.from_env())
    return _scheduler


@kopf.on.event("kumulus.dev", "v1alpha1", "schedules")
async def schedule_event(event: kopf.RawEvent, **_: Any) -> None:
    """Start, update or stop the Schedule's loop."""
    scheduler().on_schedule(event.get("type"), event["object"])


@kopf.on.event("kumulus.dev", "v1alpha1", "executions", labels={LABEL_SCHEDULE: kopf.PRESENT})
async def scheduled_execution_event(event: kopf.RawEvent, **_: Any) -> None:
    """Wake the Schedule whose Execution changed phase."""
    scheduler().on_execution(event.get("type"), event["object"])


@kopf.on.cleanup()
async def stop_schedules(**_: Any) -> None:
    """Cancel every Schedule loop."""
    await scheduler().shutdown()
