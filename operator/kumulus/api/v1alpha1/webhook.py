"""The ``Webhook`` kind: start a Flow from an HTTP call.

Cloudomation's webhooks (``.../webhook/<name>/call``) in resource form: which Flow, which
methods, how callers authenticate (secrets only by reference), whether the call waits for
the execution, and limits on body size and request rate.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from kumulus.api.v1alpha1.common import (
    Condition,
    CrdInfo,
    ExecutionTemplate,
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
    "MAX_BODY_BYTES",
    "BearerTokenSecretRef",
    "HmacSecretRef",
    "HttpMethod",
    "KeySecretRef",
    "RateLimit",
    "ResponseMode",
    "Webhook",
    "WebhookAuth",
    "WebhookResponseSettings",
    "WebhookSpec",
    "WebhookStatus",
]

MAX_BODY_BYTES = 10 * 1024 * 1024
"""Hard upper bound of spec.maxBodyBytes."""

NO_AUTH_MESSAGE = (
    "a webhook needs auth (keySecretRef, bearerTokenSecretRef or hmacSecretRef) or "
    "auth.allowUnauthenticated: true"
)


class HttpMethod(enum.StrEnum):
    """An HTTP method a webhook accepts."""

    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    HEAD = "HEAD"


class ResponseMode(enum.StrEnum):
    """Whether the caller waits for the execution (sync) or gets its name at once (async)."""

    SYNC = "sync"
    ASYNC = "async"


_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


class KeySecretRef(KumulusModel):
    """A Secret key holding the webhook key (given as ?key=... or in the JSON body)."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field("key", description="Key in the Secret.", max_length=253, pattern=_KEY_PATTERN)


class BearerTokenSecretRef(KumulusModel):
    """A Secret key holding the token expected as ``Authorization: Bearer <token>``."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field(
        "token", description="Key in the Secret.", max_length=253, pattern=_KEY_PATTERN
    )


class HmacSecretRef(KumulusModel):
    """A Secret key holding the shared secret of an HMAC-SHA256 body signature."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    key: str = Field(
        "secret", description="Key in the Secret.", max_length=253, pattern=_KEY_PATTERN
    )


class WebhookAuth(KumulusModel):
    """How callers authenticate; any configured method admits a call."""

    key_secret_ref: KeySecretRef | None = Field(
        None, description="Accept a key given as ?key=... or as key in the JSON body."
    )
    bearer_token_secret_ref: BearerTokenSecretRef | None = Field(
        None, description="Accept an Authorization: Bearer token."
    )
    hmac_secret_ref: HmacSecretRef | None = Field(
        None, description="Accept a body signed with HMAC-SHA256 of this secret."
    )
    allow_unauthenticated: bool = Field(
        False, description="Accept calls without credentials (explicit opt-in)."
    )

    def has_credentials(self) -> bool:
        """Whether any secret-backed method is configured."""
        return (
            self.key_secret_ref is not None
            or self.bearer_token_secret_ref is not None
            or self.hmac_secret_ref is not None
        )


class WebhookResponseSettings(KumulusModel):
    """How the webhook answers its caller."""

    mode: ResponseMode = Field(
        ResponseMode.SYNC,
        description="sync waits for the execution and answers with it; async answers at once.",
    )
    timeout_seconds: Int32 = Field(
        30, ge=1, le=600, description="How long a sync call waits for the execution."
    )


class RateLimit(KumulusModel):
    """A token-bucket limit on calls to this webhook."""

    requests_per_second: float = Field(gt=0, le=10000, description="Sustained calls per second.")
    burst: Int32 = Field(1, ge=1, le=100000, description="Calls allowed in a burst.")


class WebhookSpec(KumulusModel):
    """Which Flow an HTTP call starts, and under which rules."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.auth) && (has(self.auth.keySecretRef) || "
                    "has(self.auth.bearerTokenSecretRef) || has(self.auth.hmacSecretRef) || "
                    "self.auth.allowUnauthenticated)",
                    "message": NO_AUTH_MESSAGE,
                }
            ]
        }
    )

    flow_ref: LocalObjectReference = Field(description="The Flow a call starts.")
    enabled: bool = Field(True, description="Answer calls; false rejects them with 404.")
    mode: Mode = Field(Mode.PRODUCTIVE, description="Mode of the started executions.")
    methods: list[HttpMethod] = Field(
        default_factory=lambda: [HttpMethod.POST],
        description="Accepted HTTP methods.",
        min_length=1,
        json_schema_extra={"default": ["POST"], "x-kubernetes-list-type": "set", "maxItems": 6},
    )
    auth: WebhookAuth | None = Field(None, description="How callers authenticate.")
    response: WebhookResponseSettings = Field(
        default_factory=WebhookResponseSettings,
        description="How the webhook answers (default: sync, 30 s).",
        json_schema_extra={"default": {}},
    )
    max_body_bytes: Int64 = Field(
        1048576, ge=0, le=MAX_BODY_BYTES, description="Largest accepted request body in bytes."
    )
    rate_limit: RateLimit | None = Field(None, description="Limit on the call rate.")
    execution_template: ExecutionTemplate | None = Field(
        None, description="Settings copied into each started execution."
    )

    @model_validator(mode="after")
    def _needs_auth(self) -> WebhookSpec:
        if self.auth is None or not (
            self.auth.has_credentials() or self.auth.allow_unauthenticated
        ):
            raise ValueError(NO_AUTH_MESSAGE)
        return self


class WebhookStatus(KumulusModel):
    """The observed state of a Webhook, written by the operator."""

    url: str | None = Field(None, description="The URL callers use.", max_length=2048)
    conditions: list[Condition] | None = conditions_field()
    last_triggered_time: datetime | None = Field(None, description="When a call last started.")
    observed_generation: Int64 | None = observed_generation_field()


class Webhook(KumulusResource):
    """Starts a Flow from an HTTP call."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="Webhook",
        plural="webhooks",
        singular="webhook",
        short_names=("kwh",),
        printer_columns=(
            PrinterColumn("Flow", ".spec.flowRef.name", description="The Flow a call starts."),
            PrinterColumn("Enabled", ".spec.enabled", type="boolean", description="Enabled."),
            PrinterColumn("URL", ".status.url", description="The URL callers use."),
            PrinterColumn(
                "Ready",
                '.status.conditions[?(@.type=="Ready")].status',
                description="Whether the webhook is served.",
            ),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
        ),
    )

    kind: Literal["Webhook"] = Field("Webhook", description="Always Webhook.")
    spec: WebhookSpec = Field(description="Which Flow a call starts, and how.")
    status: WebhookStatus | None = Field(None, description="Written by the operator.")
