"""The ``Schedule`` kind: start a Flow periodically, in the shape of a CronJob.

Cloudomation ties a flow to a scheduler script; Kumulus puts the timing on the resource
itself (cron expression, IANA time zone, concurrency policy, history limits) and makes
the catch-up of runs missed while the operator was down an explicit policy.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from kumulus.api.v1alpha1.common import (
    Condition,
    CrdInfo,
    ExecutionTemplate,
    FreeForm,
    Int32,
    Int64,
    KumulusModel,
    KumulusResource,
    LocalObjectReference,
    Mode,
    PrinterColumn,
    conditions_field,
    observed_generation_field,
)

__all__ = [
    "CatchUpPolicy",
    "ConcurrencyPolicy",
    "Schedule",
    "ScheduleSpec",
    "ScheduleStatus",
]


class ConcurrencyPolicy(enum.StrEnum):
    """What to do when a run is due while the previous one still runs."""

    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class CatchUpPolicy(enum.StrEnum):
    """What to do with runs missed while the operator was down or the Schedule suspended."""

    NONE = "None"
    LATEST = "Latest"
    ALL = "All"


class ScheduleSpec(KumulusModel):
    """When to start which Flow with which inputs."""

    flow_ref: LocalObjectReference = Field(description="The Flow to start.")
    inputs: FreeForm | None = Field(None, description="Inputs of every started execution.")
    schedule: str = Field(
        description="Cron expression: 5 fields (minute hour day-of-month month day-of-week), "
        "6 fields (seconds first), or a macro: @yearly (= @annually), @monthly, @weekly, "
        "@daily (= @midnight), @hourly.",
        min_length=1,
        max_length=256,
    )
    time_zone: str = Field(
        "UTC",
        description="IANA time zone the cron expression is read in, e.g. Europe/Vienna.",
        min_length=1,
        max_length=64,
    )
    concurrency_policy: ConcurrencyPolicy = Field(
        ConcurrencyPolicy.ALLOW,
        description="Allow (runs overlap), Forbid (skip while one runs) or Replace (cancel "
        "the running one).",
    )
    suspend: bool = Field(False, description="Start no new runs while true.")
    starting_deadline_seconds: Int64 | None = Field(
        None,
        ge=0,
        description="A run not started within this many seconds of its time is skipped.",
    )
    catch_up: CatchUpPolicy = Field(
        CatchUpPolicy.LATEST,
        description="Runs missed while the operator was down, the Schedule suspended or "
        "held back by Forbid: None (skip them), Latest (start the newest one, like a CronJob) "
        "or All (start each, oldest first, at most the newest maxCatchUp).",
    )
    max_catch_up: Int32 = Field(
        10, ge=1, le=1000, description="At most this many missed runs are started (catchUp All)."
    )
    successful_history_limit: Int32 = Field(
        3, ge=0, le=1000, description="Succeeded executions to keep."
    )
    failed_history_limit: Int32 = Field(
        1, ge=0, le=1000, description="Failed or cancelled executions to keep."
    )
    mode: Mode = Field(Mode.PRODUCTIVE, description="Mode of the started executions.")
    execution_template: ExecutionTemplate | None = Field(
        None, description="Settings copied into each started execution."
    )


class ScheduleStatus(KumulusModel):
    """The observed state of a Schedule, written by the operator."""

    last_schedule_time: datetime | None = Field(
        None, description="The scheduled time of the newest execution started."
    )
    next_schedule_times: list[datetime] | None = Field(
        None,
        description="The next few times a run is due.",
        json_schema_extra={"maxItems": 16, "x-kubernetes-list-type": "atomic"},
    )
    next_schedule_time: datetime | None = Field(
        None, description="The next time a run is due (the first of nextScheduleTimes)."
    )
    active: list[LocalObjectReference] | None = Field(
        None,
        description="Executions started by this Schedule that have not ended.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    last_successful_time: datetime | None = Field(
        None, description="When a started execution last succeeded."
    )
    conditions: list[Condition] | None = conditions_field()
    observed_generation: Int64 | None = observed_generation_field()


class Schedule(KumulusResource):
    """Starts a Flow periodically."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="Schedule",
        plural="schedules",
        singular="schedule",
        short_names=("ksched",),
        printer_columns=(
            PrinterColumn("Schedule", ".spec.schedule", description="Cron expression."),
            PrinterColumn("TimeZone", ".spec.timeZone", description="IANA time zone."),
            PrinterColumn("Suspend", ".spec.suspend", type="boolean", description="Suspended."),
            PrinterColumn(
                "Ready",
                '.status.conditions[?(@.type=="Ready")].status',
                description="Whether the schedule and time zone are valid.",
            ),
            PrinterColumn(
                "Next",
                ".status.nextScheduleTimes",
                description="The next few times a run is due (UTC).",
            ),
            PrinterColumn("Last", ".status.lastScheduleTime", type="date", description="Last."),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
        ),
    )

    kind: Literal["Schedule"] = Field("Schedule", description="Always Schedule.")
    spec: ScheduleSpec = Field(description="When to start which Flow.")
    status: ScheduleStatus | None = Field(None, description="Written by the operator.")
