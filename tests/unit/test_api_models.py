"""The models parse real manifests, speak camelCase on the wire and enforce the CEL rules too."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kumulus.api.v1alpha1 import (
    ALL_KINDS,
    TERMINAL_PHASES,
    CatchUpPolicy,
    Connection,
    DesiredState,
    EnvVar,
    Execution,
    ExecutionPhase,
    ExecutionSpec,
    ExecutionType,
    Flow,
    FlowSpec,
    HttpMethod,
    KumulusResource,
    Mode,
    PodTemplate,
    ResponseMode,
    Schedule,
    Webhook,
    WebhookSpec,
)

pytestmark = pytest.mark.unit

SAMPLES: dict[str, dict[str, Any]] = {
    "Flow": {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Flow",
        "metadata": {"name": "hello", "namespace": "demo", "labels": {"team": "ops"}},
        "spec": {
            "code": "def handler(system, this):\n    return this.success('hi')\n",
            "handler": "handler",
            "description": "Says hello.",
            "inputSchema": {"type": "object", "properties": {"who": {"type": "string"}}},
            "timeoutSeconds": 600,
            "serviceAccountName": "runner",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": 1}},
        },
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Compiled",
                    "message": "",
                    "lastTransitionTime": "2025-01-02T03:04:05Z",
                    "observedGeneration": 1,
                }
            ],
            "observedGeneration": 1,
            "codeHash": "ab" * 32,
        },
    },
    "Execution": {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": "hello-1", "namespace": "demo"},
        "spec": {
            "type": "FLOW",
            "flowRef": {"name": "hello"},
            "inputs": {"who": "world", "n": [1, 2, {"deep": None}]},
            "mode": "development",
            "run": True,
            "desiredState": "Running",
            "timeoutSeconds": 60,
            "retry": {"limit": 2, "backoffSeconds": 5, "factor": 1.5},
            "ttlSecondsAfterFinished": 3600,
            "podTemplate": {
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "b"}}},
                ],
            },
        },
        "status": {
            "phase": "Running",
            "message": "step 3/10",
            "displayName": "Hello run",
            "outputs": {"x": 1},
            "startTime": "2025-01-02T03:04:05Z",
            "duration": "5s",
            "podName": "hello-1-a1",
            "attempts": 1,
            "children": [{"name": "hello-1-1-1", "type": "CONNECTION", "phase": "Succeeded"}],
            "runner": {
                "attempt": 1,
                "state": "ended",
                "result": {"status": "ENDED_SUCCESS", "message": "done"},
                "webhookResponse": {"html": "<p>ok</p>", "statusCode": 201},
            },
            "observedGeneration": 1,
        },
    },
    "Schedule": {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "nightly", "namespace": "demo"},
        "spec": {
            "flowRef": {"name": "hello"},
            "inputs": {"who": "cron"},
            "schedule": "0 3 * * *",
            "timeZone": "Europe/Vienna",
            "concurrencyPolicy": "Forbid",
            "catchUp": "None",
            "maxCatchUp": 5,
            "executionTemplate": {"timeoutSeconds": 30, "retry": {"limit": 1}},
        },
        "status": {
            "nextScheduleTimes": ["2025-01-03T02:00:00Z", "2025-01-04T02:00:00Z"],
            "nextScheduleTime": "2025-01-03T02:00:00Z",
            "active": [{"name": "nightly-1"}],
        },
    },
    "Connection": {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Connection",
        "metadata": {"name": "api", "namespace": "demo"},
        "spec": {
            "type": "REST",
            "values": {"url": "http://127.0.0.1:8080", "headers": {"x": "y"}},
            "secretRef": {"name": "api-creds"},
            "description": "The test API.",
        },
    },
    "Webhook": {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": "hook", "namespace": "demo"},
        "spec": {
            "flowRef": {"name": "hello"},
            "methods": ["POST", "GET"],
            "auth": {"keySecretRef": {"name": "hook-key"}},
            "response": {"mode": "async", "timeoutSeconds": 10},
            "maxBodyBytes": 2048,
            "rateLimit": {"requestsPerSecond": 2.5, "burst": 5},
        },
        "status": {"url": "http://127.0.0.1/api/latest/webhook/hook/call"},
    },
}

KIND_BY_NAME = {k.crd.kind: k for k in ALL_KINDS}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_sample_round_trips(name: str) -> None:
    kind: type[KumulusResource] = KIND_BY_NAME[name]
    parsed = kind.model_validate(SAMPLES[name])
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert kind.model_validate(dumped) == parsed
    assert dumped == parsed.to_k8s()
    # What the user wrote survives (defaults may be added, nothing is lost or renamed).
    assert _is_subset(_drop_nulls(SAMPLES[name]), dumped)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def _is_subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _is_subset(v, big[k]) for k, v in small.items()
        )
    if isinstance(small, str) and isinstance(big, str) and small.endswith("Z"):
        return datetime.fromisoformat(small) == datetime.fromisoformat(big)
    return bool(small == big)


def test_camel_case_aliases_are_the_public_names() -> None:
    execution = Execution.model_validate(SAMPLES["Execution"])
    assert execution.spec.flow_ref is not None
    assert execution.spec.flow_ref.name == "hello"
    assert execution.spec.pod_template is not None
    assert execution.spec.pod_template.node_selector == {"kubernetes.io/os": "linux"}
    assert execution.status is not None
    assert execution.status.runner is not None
    assert execution.status.runner.webhook_response is not None
    assert execution.status.runner.webhook_response.status_code == 201
    wire = execution.to_k8s()
    assert set(wire["spec"]) >= {
        "flowRef",
        "desiredState",
        "ttlSecondsAfterFinished",
        "podTemplate",
    }
    assert set(wire["status"]) >= {"displayName", "podName", "startTime"}
    assert wire["status"]["runner"]["webhookResponse"]["statusCode"] == 201
    # Populate by Python name works too.
    spec = ExecutionSpec(flow_ref={"name": "f"}, desired_state=DesiredState.PAUSED)
    assert spec.to_k8s()["desiredState"] == "Paused"


def test_enums_and_defaults() -> None:
    execution = Execution.model_validate(
        {"metadata": {"name": "x"}, "spec": {"flowRef": {"name": "f"}}}
    )
    assert execution.api_version == "kumulus.dev/v1alpha1"
    assert execution.kind == "Execution"
    assert execution.spec.type is ExecutionType.FLOW
    assert execution.spec.mode is Mode.PRODUCTIVE
    assert execution.spec.run is True
    assert execution.spec.desired_state is DesiredState.RUNNING
    assert ExecutionPhase.SUCCEEDED in TERMINAL_PHASES
    assert ExecutionPhase.PAUSED not in TERMINAL_PHASES

    schedule = Schedule.model_validate({"spec": {"flowRef": {"name": "f"}, "schedule": "@hourly"}})
    assert schedule.spec.time_zone == "UTC"
    assert schedule.spec.catch_up is CatchUpPolicy.LATEST
    assert (schedule.spec.max_catch_up, schedule.spec.successful_history_limit) == (10, 3)
    assert schedule.spec.failed_history_limit == 1

    hook = Webhook.model_validate(
        {"spec": {"flowRef": {"name": "f"}, "auth": {"hmacSecretRef": {"name": "s"}}}}
    )
    assert hook.spec.methods == [HttpMethod.POST]
    assert hook.spec.enabled is True
    assert hook.spec.max_body_bytes == 1048576
    assert hook.spec.response.mode is ResponseMode.SYNC
    assert hook.spec.response.timeout_seconds == 30
    assert hook.spec.auth is not None
    assert hook.spec.auth.hmac_secret_ref is not None
    assert hook.spec.auth.hmac_secret_ref.key == "secret"

    flow = Flow.model_validate({"spec": {"code": "x = 1"}})
    assert flow.spec.handler == "handler"


def test_datetimes_parse_as_aware_utc() -> None:
    execution = Execution.model_validate(SAMPLES["Execution"])
    assert execution.status is not None
    assert execution.status.start_time == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "FLOW"}, "spec.flowRef is required when spec.type is FLOW"),
        (
            {"type": "FLOW", "flowRef": {"name": "f"}, "script": "x"},
            "not allowed when spec.type is FLOW",
        ),
        ({"type": "SCRIPT"}, "spec.script is required when spec.type is SCRIPT"),
        ({"type": "CONNECTION"}, "spec.connection is required"),
        ({"type": "TASK", "connection": {}}, "needs name (a Connection) or type"),
        ({"type": "TASK", "connection": {"type": "rest"}}, "should match pattern"),
        ({"type": "LAMBDA"}, "Input should be 'FLOW', 'SCRIPT', 'CONNECTION' or 'TASK'"),
        ({"flowRef": {"name": "f"}, "desiredState": "Stopped"}, "Input should be 'Running'"),
        ({"flowRef": {"name": "f"}, "retry": {"limit": 101}}, "less than or equal to 100"),
    ],
)
def test_execution_spec_rules(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ExecutionSpec.model_validate(spec)


def test_connection_types_are_accepted() -> None:
    for t in ("CONNECTION", "TASK"):
        spec = ExecutionSpec.model_validate({"type": t, "connection": {"name": "api"}})
        assert spec.connection is not None
        assert spec.connection.name == "api"
    script = ExecutionSpec.model_validate({"type": "SCRIPT", "script": "def handler(s, t): pass"})
    assert script.type is ExecutionType.SCRIPT


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "exactly one of spec.code or spec.codeFrom"),
        (
            {"code": "x", "codeFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            "exactly one of spec.code or spec.codeFrom",
        ),
        ({"code": "x", "handler": "not-an-identifier"}, "should match pattern"),
        ({"code": "x", "timeoutSeconds": 0}, "greater than or equal to 1"),
    ],
)
def test_flow_spec_rules(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        FlowSpec.model_validate(spec)


def test_webhook_needs_auth() -> None:
    message = "a webhook needs auth"
    with pytest.raises(ValidationError, match=message):
        WebhookSpec.model_validate({"flowRef": {"name": "f"}})
    with pytest.raises(ValidationError, match=message):
        WebhookSpec.model_validate({"flowRef": {"name": "f"}, "auth": {}})
    open_hook = WebhookSpec.model_validate(
        {"flowRef": {"name": "f"}, "auth": {"allowUnauthenticated": True}}
    )
    assert open_hook.auth is not None
    assert open_hook.auth.allow_unauthenticated is True
    with pytest.raises(ValidationError, match="less than or equal to 10485760"):
        WebhookSpec.model_validate(
            {
                "flowRef": {"name": "f"},
                "auth": {"allowUnauthenticated": True},
                "maxBodyBytes": 2**30,
            }
        )
    with pytest.raises(ValidationError, match="Input should be 'GET'"):
        WebhookSpec.model_validate(
            {"flowRef": {"name": "f"}, "auth": {"allowUnauthenticated": True}, "methods": ["TRACE"]}
        )


def test_env_never_reads_secrets() -> None:
    with pytest.raises(ValidationError, match="secretKeyRef is not allowed"):
        EnvVar.model_validate(
            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
        )
    with pytest.raises(ValidationError, match="either value or valueFrom"):
        EnvVar.model_validate(
            {"name": "P", "value": "v", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
        )
    pod = PodTemplate.model_validate({"resources": {"limits": {"cpu": 2, "memory": "1Gi"}}})
    assert pod.resources is not None
    assert pod.resources.limits == {"cpu": 2, "memory": "1Gi"}


def test_connection_type_pattern() -> None:
    assert Connection.model_validate({"spec": {"type": "MY_PLUGIN2"}}).spec.type == "MY_PLUGIN2"
    with pytest.raises(ValidationError, match="should match pattern"):
        Connection.model_validate({"spec": {"type": "rest"}})


def test_connection_allowed_overrides() -> None:
    spec = {"type": "REST", "allowedOverrides": ["url", "headers.Authorization"]}
    conn = Connection.model_validate({"spec": spec})
    assert conn.spec.allowed_overrides == ["url", "headers.Authorization"]
    assert Connection.model_validate({"spec": {"type": "REST"}}).spec.allowed_overrides is None
    with pytest.raises(ValidationError, match="at least 1 character"):
        Connection.model_validate({"spec": {"type": "REST", "allowedOverrides": [""]}})
