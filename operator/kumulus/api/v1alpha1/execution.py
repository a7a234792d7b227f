"""The ``Execution`` kind: one run of a flow, a script or a connection call.

An Execution is the unit Cloudomation shows in its execution list. FLOW and SCRIPT
executions run as one runner Pod per attempt; CONNECTION (old name TASK) executions are
carried out by Kumulus itself so credentials never enter a flow's Pod. The operator alone
decides ``status.phase``; the runner reports through ``status.runner`` (see
runner-image/README.md).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from kumulus.api.v1alpha1.common import (
    Condition,
    CrdInfo,
    FreeForm,
    Int32,
    Int64,
    KumulusModel,
    KumulusResource,
    LocalObjectReference,
    Mode,
    PodTemplate,
    PrinterColumn,
    RetryPolicy,
    conditions_field,
    observed_generation_field,
)

__all__ = [
    "TERMINAL_PHASES",
    "ChildReference",
    "ConnectionCall",
    "DesiredState",
    "EndStatus",
    "Execution",
    "ExecutionPhase",
    "ExecutionSpec",
    "ExecutionStatus",
    "ExecutionType",
    "ExecutorClaim",
    "RunnerReport",
    "RunnerResult",
    "RunnerState",
    "WebhookResponse",
]


class ExecutionType(enum.StrEnum):
    """What an execution runs. TASK is the old name of CONNECTION."""

    FLOW = "FLOW"
    SCRIPT = "SCRIPT"
    CONNECTION = "CONNECTION"
    TASK = "TASK"


class DesiredState(enum.StrEnum):
    """What the user (or a parent flow) wants the execution to do."""

    RUNNING = "Running"
    PAUSED = "Paused"
    CANCELLED = "Cancelled"


class ExecutionPhase(enum.StrEnum):
    """Where an execution is in its life; decided by the operator only."""

    PENDING = "Pending"
    RUNNING = "Running"
    WAITING = "Waiting"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES: frozenset[ExecutionPhase] = frozenset(
    {ExecutionPhase.SUCCEEDED, ExecutionPhase.FAILED, ExecutionPhase.CANCELLED}
)
"""Phases an execution never leaves."""


class RunnerState(enum.StrEnum):
    """The runner's own state of the current attempt."""

    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    ENDED = "ended"


class EndStatus(enum.StrEnum):
    """How a flow ended, in Cloudomation's words."""

    ENDED_SUCCESS = "ENDED_SUCCESS"
    ENDED_ERROR = "ENDED_ERROR"
    ENDED_CANCELLED = "ENDED_CANCELLED"


class ConnectionCall(KumulusModel):
    """The connection a CONNECTION (or TASK) execution calls."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.name) || has(self.type)",
                    "message": "spec.connection needs name (a Connection) or type (ad hoc)",
                }
            ]
        }
    )

    name: str | None = Field(
        None,
        description="Name of a Connection in the same namespace whose values are used.",
        min_length=1,
        max_length=253,
    )
    type: str | None = Field(
        None,
        description="Connector type (e.g. REST, SQLPG) for an ad-hoc call without a Connection.",
        max_length=63,
        pattern=r"^[A-Z][A-Z0-9_]*$",
    )
    inputs: FreeForm | None = Field(
        None, description="Values merged over the Connection's values for this call."
    )


class ExecutionSpec(KumulusModel):
    """What to run, with which inputs, and how."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type != 'FLOW' || has(self.flowRef)",
                    "message": "spec.flowRef is required when spec.type is FLOW",
                },
                {
                    "rule": "self.type != 'FLOW' || (!has(self.script) && !has(self.connection))",
                    "message": "spec.script and spec.connection are not allowed when spec.type "
                    "is FLOW",
                },
                {
                    "rule": "self.type != 'SCRIPT' || has(self.script)",
                    "message": "spec.script is required when spec.type is SCRIPT",
                },
                {
                    "rule": "self.type != 'SCRIPT' || (!has(self.flowRef) && "
                    "!has(self.connection))",
                    "message": "spec.flowRef and spec.connection are not allowed when "
                    "spec.type is SCRIPT",
                },
                {
                    "rule": "!(self.type in ['CONNECTION', 'TASK']) || has(self.connection)",
                    "message": "spec.connection is required when spec.type is CONNECTION or TASK",
                },
                {
                    "rule": "!(self.type in ['CONNECTION', 'TASK']) || "
                    "(!has(self.flowRef) && !has(self.script))",
                    "message": "spec.flowRef and spec.script are not allowed when spec.type is "
                    "CONNECTION or TASK",
                },
                {
                    "rule": "self.type == oldSelf.type",
                    "message": "spec.type is immutable",
                },
                {
                    "rule": "!has(oldSelf.flowRef) || "
                    "(has(self.flowRef) && self.flowRef == oldSelf.flowRef)",
                    "message": "spec.flowRef is immutable once set",
                },
                {
                    "rule": "!has(oldSelf.script) || "
                    "(has(self.script) && self.script == oldSelf.script)",
                    "message": "spec.script is immutable once set",
                },
                {
                    "rule": "!has(oldSelf.inputs) || "
                    "(has(self.inputs) && self.inputs == oldSelf.inputs)",
                    "message": "spec.inputs is immutable once set",
                },
                {
                    "rule": "!has(oldSelf.connection) || "
                    "(has(self.connection) && self.connection == oldSelf.connection)",
                    "message": "spec.connection is immutable once set",
                },
                {
                    "rule": "oldSelf.desiredState != 'Cancelled' || "
                    "self.desiredState == 'Cancelled'",
                    "message": "spec.desiredState cannot change once it is Cancelled",
                },
            ]
        }
    )

    type: ExecutionType = Field(
        ExecutionType.FLOW,
        description="What runs: FLOW (a Flow), SCRIPT (inline code), CONNECTION or TASK (one "
        "connector call). Immutable.",
    )
    flow_ref: LocalObjectReference | None = Field(
        None, description="The Flow to run (type FLOW). Immutable."
    )
    script: str | None = Field(
        None,
        description="Inline Python source with a handler function (type SCRIPT). Immutable.",
        max_length=1048576,
    )
    connection: ConnectionCall | None = Field(
        None, description="The connector call (type CONNECTION or TASK). Immutable."
    )
    inputs: FreeForm | None = Field(
        None,
        description="Input values given to the handler (this.get('input_value')). Immutable.",
    )
    mode: Mode = Field(
        Mode.PRODUCTIVE, description="productive (a real run) or development (a trial run)."
    )
    run: bool = Field(
        True, description="Start the execution; false creates it without starting (run=False)."
    )
    desired_state: DesiredState = Field(
        DesiredState.RUNNING,
        description="Running, Paused or Cancelled; Cancelled is final.",
    )
    timeout_seconds: Int64 | None = Field(
        None,
        ge=1,
        description="Deadline of each attempt in seconds (default: the Flow's timeoutSeconds).",
    )
    retry: RetryPolicy | None = Field(None, description="Retry policy for failed attempts.")
    ttl_seconds_after_finished: Int64 | None = Field(
        None, ge=0, description="Delete the execution this many seconds after it finished."
    )
    pod_template: PodTemplate | None = Field(None, description="Runner Pod tuning.")

    @model_validator(mode="after")
    def _type_matches_fields(self) -> ExecutionSpec:
        t = self.type
        if t is ExecutionType.FLOW:
            if self.flow_ref is None:
                raise ValueError("spec.flowRef is required when spec.type is FLOW")
            if self.script is not None or self.connection is not None:
                raise ValueError(
                    "spec.script and spec.connection are not allowed when spec.type is FLOW"
                )
        elif t is ExecutionType.SCRIPT:
            if self.script is None:
                raise ValueError("spec.script is required when spec.type is SCRIPT")
            if self.flow_ref is not None or self.connection is not None:
                raise ValueError(
                    "spec.flowRef and spec.connection are not allowed when spec.type is SCRIPT"
                )
        else:
            if self.connection is None:
                raise ValueError("spec.connection is required when spec.type is CONNECTION or TASK")
            if self.connection.name is None and self.connection.type is None:
                raise ValueError("spec.connection needs name (a Connection) or type (ad hoc)")
            if self.flow_ref is not None or self.script is not None:
                raise ValueError(
                    "spec.flowRef and spec.script are not allowed when spec.type is "
                    "CONNECTION or TASK"
                )
        return self


class ChildReference(KumulusModel):
    """A child execution started by this one (a reference, not a copy)."""

    name: str = Field(description="Name of the child Execution.", max_length=253)
    type: ExecutionType | None = Field(None, description="The child's spec.type.")
    phase: ExecutionPhase | None = Field(None, description="The child's last seen phase.")


class RunnerResult(KumulusModel):
    """How the flow ended, as reported by the runner."""

    status: EndStatus = Field(description="ENDED_SUCCESS, ENDED_ERROR or ENDED_CANCELLED.")
    message: str | None = Field(None, description="The flow's end message.", max_length=65536)
    traceback: str | None = Field(
        None,
        description="Traceback of an unhandled exception (never secrets).",
        max_length=65536,
    )
    reason: str | None = Field(
        None,
        description=(
            "Why the runner did not start the flow, when the operator names it: CodeChanged "
            "(the Flow's code is not the code the operator checked)."
        ),
        max_length=64,
    )


class WebhookResponse(KumulusModel):
    """HTML the flow hands back to a synchronous webhook caller."""

    html: str = Field(description="The HTML body.", max_length=262144)
    status_code: Int32 | None = Field(
        None, ge=100, le=599, description="HTTP status code (default 200)."
    )


class RunnerReport(KumulusModel):
    """What the runner of the current attempt reports; read by the operator."""

    attempt: Int32 = Field(ge=1, description="The attempt this report belongs to.")
    state: RunnerState = Field(description="running, waiting (on children), paused or ended.")
    result: RunnerResult | None = Field(None, description="Set when the flow ended.")
    webhook_response: WebhookResponse | None = Field(
        None, description="Set by this.webhook_html_response(html)."
    )


class ExecutorClaim(KumulusModel):
    """Which connection executor runs a CONNECTION execution (exactly once, see docs)."""

    id: str = Field(
        description="The executor process that claimed the call: <host>/<process id>.",
        max_length=253,
    )
    deadline: datetime = Field(
        description="When the call must have ended; after it, another executor fails the "
        "execution with reason ExecutorLost."
    )


class ExecutionStatus(KumulusModel):
    """The observed state of an Execution. Only the operator sets phase and times."""

    phase: ExecutionPhase | None = Field(
        None,
        description="Pending, Running, Waiting, Paused, Succeeded, Failed or Cancelled.",
    )
    message: str | None = Field(
        None, description="The flow's status line (this.save(message=...)).", max_length=65536
    )
    status_message: str | None = Field(
        None,
        description="Why the execution failed or was cancelled: the traceback or reason.",
        max_length=65536,
    )
    display_name: str | None = Field(
        None, description="Display name (this.save(name=...)).", max_length=1024
    )
    outputs: FreeForm | None = Field(
        None, description="Output values (this.save(output_value=...), this.set_output)."
    )
    start_time: datetime | None = Field(None, description="When the first attempt started.")
    end_time: datetime | None = Field(None, description="When the execution ended.")
    duration: str | None = Field(
        None,
        description="Human-readable run time (e.g. 1m20s), written by the operator.",
        max_length=64,
    )
    pod_name: str | None = Field(
        None, description="Runner Pod of the current or last attempt.", max_length=253
    )
    attempts: Int32 | None = Field(None, ge=0, description="Attempts started so far.")
    children: list[ChildReference] | None = Field(
        None,
        description="Child executions started by this one.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    conditions: list[Condition] | None = conditions_field()
    observed_generation: Int64 | None = observed_generation_field()
    executor: ExecutorClaim | None = Field(
        None, description="CONNECTION executions: the connection executor running the call."
    )
    runner: RunnerReport | None = Field(
        None, description="Written by the runner of the current attempt; read by the operator."
    )
    next_retry_time: datetime | None = Field(
        None, description="When the next attempt starts after a failed one."
    )


class Execution(KumulusResource):
    """One run of a flow, a script or a connection call."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="Execution",
        plural="executions",
        singular="execution",
        short_names=("kex", "kexec"),
        printer_columns=(
            PrinterColumn("Type", ".spec.type", description="What runs."),
            PrinterColumn("Flow", ".spec.flowRef.name", description="The Flow run."),
            PrinterColumn("Phase", ".status.phase", description="Where the execution is."),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
            PrinterColumn("Duration", ".status.duration", description="Run time."),
            PrinterColumn("Message", ".status.message", description="The flow's status line."),
        ),
    )

    kind: Literal["Execution"] = Field("Execution", description="Always Execution.")
    spec: ExecutionSpec = Field(description="What to run and how.")
    status: ExecutionStatus | None = Field(None, description="Written by the operator.")
