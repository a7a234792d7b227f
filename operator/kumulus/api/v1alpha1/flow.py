"""The ``Flow`` kind: a stored piece of Python automation with a ``handler``.

A Flow is what Cloudomation calls a flow script: code (inline, or a ConfigMap key) whose
``handler(system, this[, inputs])`` an Execution of type FLOW runs in a runner Pod.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from kumulus.api.v1alpha1.common import (
    Condition,
    ConfigMapKeyRef,
    CrdInfo,
    FreeForm,
    Int64,
    KumulusModel,
    KumulusResource,
    PrinterColumn,
    ResourceRequirements,
    conditions_field,
    observed_generation_field,
)

__all__ = ["CodeFrom", "Flow", "FlowSpec", "FlowStatus"]

MAX_CODE_BYTES = 1048576
"""Upper bound of inline code (etcd keeps objects below 1.5 MiB)."""


class CodeFrom(KumulusModel):
    """Where the flow's code is read from when it is not inline."""

    config_map_key_ref: ConfigMapKeyRef = Field(
        description="The ConfigMap key holding the flow's Python source."
    )


class FlowSpec(KumulusModel):
    """The desired state of a Flow: its code and how it runs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.code) != has(self.codeFrom)",
                    "message": "exactly one of spec.code or spec.codeFrom must be set",
                }
            ]
        }
    )

    code: str | None = Field(
        None,
        description="Inline Python source defining the handler function.",
        max_length=MAX_CODE_BYTES,
    )
    code_from: CodeFrom | None = Field(
        None, description="Read the Python source from a ConfigMap key instead of spec.code."
    )
    handler: str = Field(
        "handler",
        description="Name of the function to call as handler(system, this[, inputs]).",
        max_length=255,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    description: str | None = Field(
        None, description="Human-readable description of what the flow does.", max_length=4096
    )
    input_schema: FreeForm | None = Field(
        None, description="JSON Schema the execution inputs are validated against."
    )
    timeout_seconds: Int64 | None = Field(
        None, ge=1, description="Default deadline of each attempt in seconds."
    )
    image: str | None = Field(
        None,
        description=(
            "Runner image override for this flow; only the runner image or one the operator "
            "allows (KUMULUS_ALLOWED_IMAGES), else Executions fail with ImageNotAllowed."
        ),
        max_length=1024,
    )
    service_account_name: str | None = Field(
        None,
        description="ServiceAccount of the flow's runner Pods (default kumulus-runner).",
        max_length=253,
    )
    resources: ResourceRequirements | None = Field(
        None,
        description=(
            "Compute resources of the runner container, over the operator's defaults per resource."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> FlowSpec:
        if (self.code is None) == (self.code_from is None):
            raise ValueError("exactly one of spec.code or spec.codeFrom must be set")
        return self


class FlowStatus(KumulusModel):
    """The observed state of a Flow, written by the operator."""

    conditions: list[Condition] | None = conditions_field()
    observed_generation: Int64 | None = observed_generation_field()
    code_hash: str | None = Field(
        None,
        description=(
            "sha256 of the code the operator last checked (sha256:<hex>); runner Pods run only "
            "this code and refuse any other with reason CodeChanged."
        ),
        max_length=128,
    )


class Flow(KumulusResource):
    """A stored Python flow whose handler Executions of type FLOW run."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="Flow",
        plural="flows",
        singular="flow",
        short_names=("kflow", "kfl"),
        printer_columns=(
            PrinterColumn(
                "Ready",
                '.status.conditions[?(@.type=="Ready")].status',
                description="Whether the flow's code compiles.",
            ),
            PrinterColumn("Description", ".spec.description", description="What the flow does."),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
        ),
    )

    kind: Literal["Flow"] = Field("Flow", description="Always Flow.")
    spec: FlowSpec = Field(description="The flow's code and how it runs.")
    status: FlowStatus | None = Field(None, description="Written by the operator.")
