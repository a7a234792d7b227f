"""The ``Connection`` kind: stored settings for a connector type (REST, SQLPG, SSH, SMTP...).

A Connection is Cloudomation's connector: non-secret values live in the resource, secrets
in a referenced Secret. Kumulus itself makes the call, so the Secret never reaches a
flow's Pod.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kumulus.api.v1alpha1.common import (
    Condition,
    CrdInfo,
    FreeForm,
    Int64,
    KumulusModel,
    KumulusResource,
    PrinterColumn,
    SecretRef,
    conditions_field,
    observed_generation_field,
)

__all__ = ["KNOWN_CONNECTION_TYPES", "Connection", "ConnectionSpec", "ConnectionStatus"]

KNOWN_CONNECTION_TYPES: frozenset[str] = frozenset({"REST", "SQLPG", "SSH", "SMTP"})
"""Connector types Kumulus ships; plugins may add more."""


class ConnectionSpec(KumulusModel):
    """The connector type and its stored values."""

    type: str = Field(
        description="Connector type, e.g. REST, SQLPG, SSH, SMTP (plugins add more).",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Z][A-Z0-9_]*$",
    )
    values: FreeForm | None = Field(
        None, description="Non-secret inputs of the connector (e.g. url, host, port)."
    )
    secret_ref: SecretRef | None = Field(
        None,
        description="Secret whose keys are merged over values (passwords, tokens, keys).",
    )
    allowed_overrides: list[Annotated[str, Field(min_length=1, max_length=253)]] | None = Field(
        None,
        description=(
            "Per-call inputs a call through this Connection may give besides the ones its "
            "type allows (REST: path, query, body, method, headers but authentication ones; "
            "SQLPG: the query and params; SSH: the script; SMTP: recipients, subject, body). "
            "An input name (e.g. url), or input.Field for one field of an object input "
            "(e.g. headers.Authorization). Any name may be listed, credentials and targets "
            "too: listing url, host or proxy lets flow code send this Connection's Secret "
            "wherever it likes."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set", "maxItems": 64},
    )
    description: str | None = Field(
        None, description="Human-readable description.", max_length=4096
    )


class ConnectionStatus(KumulusModel):
    """The observed state of a Connection, written by the operator."""

    conditions: list[Condition] | None = conditions_field()
    observed_generation: Int64 | None = observed_generation_field()


class Connection(KumulusResource):
    """Stored settings for calls to a third-party system through a connector type."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="Connection",
        plural="connections",
        singular="connection",
        short_names=("kconn",),
        printer_columns=(
            PrinterColumn("Type", ".spec.type", description="Connector type."),
            PrinterColumn(
                "Ready",
                '.status.conditions[?(@.type=="Ready")].status',
                description="Whether the connection's values and Secret resolve.",
            ),
            PrinterColumn(
                "Reason",
                '.status.conditions[?(@.type=="Ready")].reason',
                description="Why it is (not) ready: unknown type, invalid values, missing Secret.",
            ),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
        ),
    )

    kind: Literal["Connection"] = Field("Connection", description="Always Connection.")
    spec: ConnectionSpec = Field(description="The connector type and its values.")
    status: ConnectionStatus | None = Field(None, description="Written by the operator.")
