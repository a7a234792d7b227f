"""Types shared by all five kinds of ``kumulus.dev/v1alpha1``.

Kept in one place so each kind's module reads as its public API and so the CRD generator
sees one definition per concept (conditions, references, retry, Pod tuning). Schema hints
that only matter to the CRD (CEL rules, list types, integer formats, free-form JSON) ride
on the models through ``json_schema_extra`` and small ``Annotated`` markers, so the models
stay the single source of the schema.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from kumulus import API_VERSION, GROUP, VERSION

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "ConfigMapKeyRef",
    "CrdInfo",
    "EnvVar",
    "EnvVarSource",
    "ExecutionTemplate",
    "FreeForm",
    "Int32",
    "Int64",
    "IntOrString",
    "KumulusModel",
    "KumulusResource",
    "LocalObjectReference",
    "Mode",
    "ObjectMeta",
    "OwnerReference",
    "PodTemplate",
    "PrinterColumn",
    "ResourceRequirements",
    "RetryPolicy",
    "SecretKeySelector",
    "SecretRef",
    "TaintEffect",
    "Toleration",
    "TolerationOperator",
]

# --------------------------------------------------------------------------- schema markers


class _Format:
    """An ``Annotated`` marker adding an OpenAPI ``format`` (int32, int64) to a schema."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["format"] = self.fmt
        return schema

    def __repr__(self) -> str:
        return f"_Format({self.fmt!r})"


Int32 = Annotated[int, _Format("int32")]
"""An integer published as ``type: integer, format: int32``."""

Int64 = Annotated[int, _Format("int64")]
"""An integer published as ``type: integer, format: int64``."""

FREE_FORM_SCHEMA: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

FreeForm = Annotated[dict[str, Any], WithJsonSchema(FREE_FORM_SCHEMA)]
"""Free-form JSON (inputs, outputs, values, JSON Schemas): the apiserver keeps it as is."""

IntOrString = Annotated[int | str, WithJsonSchema({"x-kubernetes-int-or-string": True})]
"""A Kubernetes IntOrString (resource quantities such as ``500m`` or ``1``)."""

Name = Annotated[str, Field(min_length=1, max_length=253)]

# --------------------------------------------------------------------------- base classes


class KumulusModel(BaseModel):
    """Base of every Kumulus model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=False,
    )

    def to_k8s(self) -> dict[str, Any]:
        """Dump as the apiserver expects it: camelCase keys, JSON types, no unset nulls."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry of a CRD."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CrdInfo:
    """Class-level CRD facts of one kind: names and printer columns."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...] = ()
    categories: tuple[str, ...] = ("kumulus",)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


class OwnerReference(KumulusModel):
    """A reference to the object that owns this one (metav1.OwnerReference)."""

    api_version: str = Field(description="API version of the owner.")
    kind: str = Field(description="Kind of the owner.")
    name: str = Field(description="Name of the owner.")
    uid: str = Field(description="UID of the owner.")
    controller: bool | None = Field(None, description="True if the owner is the controller.")
    block_owner_deletion: bool | None = Field(
        None, description="True if the owner cannot be deleted before this object."
    )


class ObjectMeta(KumulusModel):
    """The subset of metav1.ObjectMeta Kumulus reads and writes; other keys are kept."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(None, description="Name of the object.")
    generate_name: str | None = Field(None, description="Prefix for a server-generated name.")
    namespace: str | None = Field(None, description="Namespace of the object.")
    uid: str | None = Field(None, description="UID set by the apiserver.")
    resource_version: str | None = Field(None, description="Opaque version for concurrency.")
    generation: int | None = Field(None, description="Sequence number of spec changes.")
    creation_timestamp: datetime | None = Field(None, description="When it was created.")
    deletion_timestamp: datetime | None = Field(None, description="When deletion was asked.")
    labels: dict[str, str] | None = Field(None, description="Labels.")
    annotations: dict[str, str] | None = Field(None, description="Annotations.")
    owner_references: list[OwnerReference] | None = Field(None, description="Owners.")
    finalizers: list[str] | None = Field(None, description="Finalizers.")


class KumulusResource(KumulusModel):
    """Base of the five top-level kinds: apiVersion, kind, metadata, spec, status."""

    crd: ClassVar[CrdInfo]

    api_version: str = Field(API_VERSION, description="Always kumulus.dev/v1alpha1.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")


# --------------------------------------------------------------------------- enums


class Mode(enum.StrEnum):
    """Execution mode: productive (a real run) or development (a trial run, "Try")."""

    PRODUCTIVE = "productive"
    DEVELOPMENT = "development"


class ConditionStatus(enum.StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# --------------------------------------------------------------------------- common types


class Condition(KumulusModel):
    """One aspect of the object's current state, in the shape of metav1.Condition."""

    type: str = Field(
        description="Type of the condition in CamelCase, e.g. Ready.",
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        description="Programmatic reason for the last transition, in CamelCase.",
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(
        "", description="Human-readable details about the last transition.", max_length=32768
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed from one status to another."
    )
    observed_generation: Int64 | None = Field(
        None, ge=0, description="The .metadata.generation the condition was set for."
    )


CONDITIONS_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "maxItems": 32,
}


def conditions_field() -> Any:
    """The standard ``conditions`` field of every status."""
    return Field(
        None,
        description="The object's current state, one entry per condition type (e.g. Ready).",
        json_schema_extra=CONDITIONS_EXTRA,
    )


def observed_generation_field() -> Any:
    """The standard ``observedGeneration`` field of every status."""
    return Field(None, ge=0, description="The .metadata.generation the operator last acted upon.")


class LocalObjectReference(KumulusModel):
    """A reference to an object by name in the same namespace."""

    name: Name = Field(description="Name of the object, in the same namespace.")


class SecretRef(KumulusModel):
    """A reference to a Secret in the same namespace."""

    name: Name = Field(description="Name of the Secret, in the same namespace.")


class ConfigMapKeyRef(KumulusModel):
    """A reference to one key of a ConfigMap in the same namespace."""

    name: Name = Field(description="Name of the ConfigMap, in the same namespace.")
    key: str = Field(
        description="Key in the ConfigMap's data.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class RetryPolicy(KumulusModel):
    """How often and how late a failed attempt is retried with a new attempt Pod."""

    limit: Int32 = Field(
        0, ge=0, le=100, description="Retries after the first attempt fails; 0 disables retries."
    )
    backoff_seconds: Int32 = Field(
        10, ge=0, le=86400, description="Delay before the first retry, in seconds."
    )
    factor: float = Field(
        2.0, ge=1.0, le=10.0, description="Multiplier applied to the delay after each retry."
    )


class ResourceRequirements(KumulusModel):
    """Compute resources of the runner container (as in a Pod's container resources)."""

    requests: dict[str, IntOrString] | None = Field(
        None,
        description="Minimum resources, e.g. {cpu: 100m, memory: 128Mi}.",
        json_schema_extra={"maxProperties": 16},
    )
    limits: dict[str, IntOrString] | None = Field(
        None,
        description="Maximum resources, e.g. {cpu: '1', memory: 512Mi}.",
        json_schema_extra={"maxProperties": 16},
    )


class TolerationOperator(enum.StrEnum):
    """How a toleration matches a taint."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(enum.StrEnum):
    """The taint effect a toleration matches; empty matches all effects."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(KumulusModel):
    """A Pod toleration (core/v1 Toleration)."""

    key: str | None = Field(None, description="Taint key; empty with Exists matches all taints.")
    operator: TolerationOperator | None = Field(
        None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(None, description="Taint value, for operator Equal.")
    effect: TaintEffect | None = Field(
        None, description="NoSchedule, PreferNoSchedule or NoExecute; empty matches all."
    )
    toleration_seconds: Int64 | None = Field(
        None, description="For NoExecute: how long the Pod stays bound after the taint appears."
    )


class SecretKeySelector(KumulusModel):
    """A Secret key selector. Only present in the schema so that it can be rejected."""

    name: str | None = Field(None, description="Name of the Secret.")
    key: str | None = Field(None, description="Key in the Secret.")


class EnvVarSource(KumulusModel):
    """Where an environment variable's value comes from: only ConfigMaps are allowed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.secretKeyRef)",
                    "message": (
                        "env valueFrom.secretKeyRef is not allowed: runner Pods never read "
                        "Secrets; use a Connection with secretRef instead"
                    ),
                },
                {
                    "rule": "has(self.configMapKeyRef) || has(self.secretKeyRef)",
                    "message": "env valueFrom needs configMapKeyRef",
                },
            ]
        }
    )

    config_map_key_ref: ConfigMapKeyRef | None = Field(
        None, description="A key of a ConfigMap in the same namespace."
    )
    secret_key_ref: SecretKeySelector | None = Field(
        None,
        description=(
            "Not allowed: runner Pods never read Secrets. Credentials belong in a Connection."
        ),
    )

    @model_validator(mode="after")
    def _only_config_maps(self) -> EnvVarSource:
        if self.secret_key_ref is not None:
            raise ValueError(
                "env valueFrom.secretKeyRef is not allowed: runner Pods never read Secrets; "
                "use a Connection with secretRef instead"
            )
        if self.config_map_key_ref is None:
            raise ValueError("env valueFrom needs configMapKeyRef")
        return self


class EnvVar(KumulusModel):
    """An environment variable of the runner container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "env: set either value or valueFrom, not both",
                }
            ]
        }
    )

    name: str = Field(
        description="Name of the variable.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
    )
    value: str | None = Field(None, description="Literal value.", max_length=32768)
    value_from: EnvVarSource | None = Field(
        None, description="Value taken from a ConfigMap key (configMapKeyRef only)."
    )

    @model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("env: set either value or valueFrom, not both")
        return self


class PodTemplate(KumulusModel):
    """Tuning of the runner Pod of each attempt."""

    resources: ResourceRequirements | None = Field(
        None,
        description=(
            "Compute resources of the runner container (instead of the Flow's), over the "
            "operator's defaults per resource."
        ),
    )
    node_selector: dict[str, str] | None = Field(
        None,
        description="Node labels the Pod must be scheduled on.",
        json_schema_extra={"maxProperties": 64},
    )
    tolerations: list[Toleration] | None = Field(
        None,
        description="Tolerations of the Pod.",
        json_schema_extra={"maxItems": 64, "x-kubernetes-list-type": "atomic"},
    )
    service_account_name: str | None = Field(
        None,
        description=(
            "ServiceAccount of the runner Pod (default kumulus-runner); if it does not exist "
            "the Execution waits, then fails with ServiceAccountNotFound."
        ),
        max_length=253,
    )
    env: list[EnvVar] | None = Field(
        None,
        description="Extra environment variables: literal or from a ConfigMap key, never a Secret.",
        json_schema_extra={
            "maxItems": 128,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )


class ExecutionTemplate(KumulusModel):
    """Settings copied into each Execution a Schedule or Webhook creates."""

    timeout_seconds: Int64 | None = Field(
        None, ge=1, description="Deadline of each attempt in seconds (default: the Flow's)."
    )
    retry: RetryPolicy | None = Field(None, description="Retry policy of the executions.")
    ttl_seconds_after_finished: Int64 | None = Field(
        None, ge=0, description="Delete each execution this many seconds after it finished."
    )
    pod_template: PodTemplate | None = Field(None, description="Runner Pod tuning.")
