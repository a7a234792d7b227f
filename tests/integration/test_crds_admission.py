"""The generated CRDs against a real kube-apiserver: structural, CEL rules, explain, columns.

The apiserver is the judge of what the generator produces: it refuses non-structural
schemas and CEL that does not compile or costs too much, and it is what enforces the rules
for users. These tests apply ``crds/`` and then talk to it only through kubectl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kumulus.api.v1alpha1 import ALL_KINDS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

VALID = {
    "Flow": """
apiVersion: kumulus.dev/v1alpha1
kind: Flow
metadata: {name: hello}
spec:
  description: Says hello.
  code: |
    def handler(system, this):
        return this.success('hi')
  inputSchema: {type: object, properties: {who: {type: string}}}
  resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 1}}
""",
    "Execution": """
apiVersion: kumulus.dev/v1alpha1
kind: Execution
metadata: {name: hello-1}
spec:
  flowRef: {name: hello}
  inputs: {who: world, nested: {list: [1, 2.5, {x: true}]}}
  retry: {limit: 2}
  podTemplate:
    env:
    - {name: A, value: "1"}
    - {name: B, valueFrom: {configMapKeyRef: {name: cm, key: b}}}
    tolerations: [{key: k, operator: Exists, effect: NoSchedule}]
""",
    "Schedule": """
apiVersion: kumulus.dev/v1alpha1
kind: Schedule
metadata: {name: nightly}
spec:
  flowRef: {name: hello}
  schedule: "0 3 * * *"
  timeZone: Europe/Vienna
  catchUp: None
""",
    "Connection": """
apiVersion: kumulus.dev/v1alpha1
kind: Connection
metadata: {name: api}
spec:
  type: REST
  values: {url: "http://127.0.0.1:8080", headers: {x: y}}
  secretRef: {name: api-creds}
""",
    "Webhook": """
apiVersion: kumulus.dev/v1alpha1
kind: Webhook
metadata: {name: hook}
spec:
  flowRef: {name: hello}
  methods: [POST, GET]
  auth: {keySecretRef: {name: hook-key}}
""",
}


@pytest.fixture(scope="module", autouse=True)
def crds(kubectl: Any) -> None:
    """Apply the committed CRDs and wait until the apiserver serves them."""
    proc = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    assert "Warning" not in proc.stderr, proc.stderr  # e.g. CEL cost warnings
    names = [f"crd/{k.crd.crd_name}" for k in ALL_KINDS]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def apply(kubectl: Any, namespace: str, manifest: str, check: bool = False) -> Any:
    return kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=check)


def get_json(kubectl: Any, namespace: str, resource: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kubectl("get", "-n", namespace, resource, "-o", "json").stdout)
    return out


def test_valid_manifests_are_accepted_with_defaults(kubectl: Any, namespace: str) -> None:
    for manifest in VALID.values():
        apply(kubectl, namespace, manifest, check=True)
    execution = get_json(kubectl, namespace, "execution/hello-1")["spec"]
    assert execution["type"] == "FLOW"
    assert execution["mode"] == "productive"
    assert execution["run"] is True
    assert execution["desiredState"] == "Running"
    assert execution["retry"] == {"limit": 2, "backoffSeconds": 10, "factor": 2}
    assert execution["inputs"] == {"who": "world", "nested": {"list": [1, 2.5, {"x": True}]}}
    hook = get_json(kubectl, namespace, "webhook/hook")["spec"]
    assert hook["auth"]["keySecretRef"] == {"name": "hook-key", "key": "key"}
    assert hook["response"] == {"mode": "sync", "timeoutSeconds": 30}
    assert hook["maxBodyBytes"] == 1048576
    schedule = get_json(kubectl, namespace, "schedule/nightly")["spec"]
    assert (schedule["concurrencyPolicy"], schedule["catchUp"]) == ("Allow", "None")
    assert schedule["maxCatchUp"] == 10
    flow = get_json(kubectl, namespace, "flow/hello")["spec"]
    assert flow["handler"] == "handler"
    # The category lists all five kinds.
    listed = kubectl("get", "kumulus", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) == 5


def _with(kind: str, change: dict[str, Any]) -> str:
    doc = yaml.safe_load(VALID[kind])
    doc["metadata"]["name"] = "bad"
    for key, value in change.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return yaml.safe_dump(doc)


INVALID = {
    "flow without flowRef": (
        _with("Execution", {"type": "FLOW", "flowRef": None}),
        "spec.flowRef is required when spec.type is FLOW",
    ),
    "flow with script": (
        _with("Execution", {"script": "x = 1"}),
        "spec.script and spec.connection are not allowed when spec.type is FLOW",
    ),
    "script without script": (
        _with("Execution", {"type": "SCRIPT", "flowRef": None}),
        "spec.script is required when spec.type is SCRIPT",
    ),
    "connection without name or type": (
        _with("Execution", {"type": "TASK", "flowRef": None, "connection": {"inputs": {}}}),
        "spec.connection needs name (a Connection) or type (ad hoc)",
    ),
    "code and codeFrom": (
        _with("Flow", {"codeFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}),
        "exactly one of spec.code or spec.codeFrom must be set",
    ),
    "neither code nor codeFrom": (
        _with("Flow", {"code": None}),
        "exactly one of spec.code or spec.codeFrom must be set",
    ),
    "webhook without auth": (
        _with("Webhook", {"auth": None}),
        "a webhook needs auth (keySecretRef, bearerTokenSecretRef or hmacSecretRef) or "
        "auth.allowUnauthenticated: true",
    ),
    "bad enum": (_with("Execution", {"type": "LAMBDA"}), 'Unsupported value: "LAMBDA"'),
    "bad method": (_with("Webhook", {"methods": ["TRACE"]}), 'Unsupported value: "TRACE"'),
    "env from a Secret": (
        _with(
            "Execution",
            {"podTemplate": {"env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}},
        ),
        "env valueFrom.secretKeyRef is not allowed: runner Pods never read Secrets",
    ),
    "lowercase connection type": (
        _with("Connection", {"type": "rest"}),
        "spec.type in body should match '^[A-Z][A-Z0-9_]*$'",
    ),
    "unknown field": (_with("Connection", {"bogus": 1}), 'unknown field "spec.bogus"'),
    "body limit too large": (
        _with("Webhook", {"maxBodyBytes": 11 * 1024 * 1024}),
        "should be less than or equal to 10485760",
    ),
    "retry limit too large": (
        _with("Execution", {"retry": {"limit": 1000}}),
        "should be less than or equal to 100",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_manifests_are_rejected_with_a_clear_message(
    kubectl: Any, namespace: str, case: str
) -> None:
    manifest, message = INVALID[case]
    proc = apply(kubectl, namespace, manifest)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert kubectl("get", "-n", namespace, "kumulus", "-o", "name").stdout == ""


def _patch(kubectl: Any, namespace: str, spec: dict[str, Any]) -> Any:
    body = json.dumps({"spec": spec})
    return kubectl(
        "patch", "-n", namespace, "execution/hello-1", "--type=merge", "-p", body, check=False
    )


def test_execution_transition_rules(kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, VALID["Execution"], check=True)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "SCRIPT", "flowRef": None, "script": "x"}, "spec.type is immutable"),
        ({"flowRef": {"name": "other"}}, "spec.flowRef is immutable once set"),
        ({"inputs": {"who": "someone else"}}, "spec.inputs is immutable once set"),
        ({"inputs": None}, "spec.inputs is immutable once set"),
    ]
    for spec, message in cases:
        proc = _patch(kubectl, namespace, spec)
        assert proc.returncode != 0, spec
        assert message in proc.stderr
    # Controls are mutable: pause, resume, cancel ...
    for state in ("Paused", "Running", "Cancelled"):
        assert _patch(kubectl, namespace, {"desiredState": state}).returncode == 0
    assert _patch(kubectl, namespace, {"run": False}).returncode == 0
    # ... but Cancelled is final.
    proc = _patch(kubectl, namespace, {"desiredState": "Running"})
    assert proc.returncode != 0
    assert "spec.desiredState cannot change once it is Cancelled" in proc.stderr
    assert get_json(kubectl, namespace, "execution/hello-1")["spec"]["desiredState"] == "Cancelled"


def test_status_is_strict_and_shows_in_printer_columns(kubectl: Any, namespace: str) -> None:
    apply(kubectl, namespace, VALID["Execution"], check=True)
    status = {
        "phase": "Running",
        "message": "step 3/10",
        "duration": "42s",
        "outputs": {"any": {"thing": [1]}},
        "runner": {"attempt": 1, "state": "running"},
        "bogus": "pruned",
    }
    kubectl(
        "patch", "-n", namespace, "execution/hello-1", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    stored = get_json(kubectl, namespace, "execution/hello-1")["status"]
    assert "bogus" not in stored
    assert stored["outputs"] == {"any": {"thing": [1]}}
    table = kubectl("get", "-n", namespace, "executions").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "FLOW", "PHASE", "AGE", "DURATION", "MESSAGE"]
    assert table[1].split()[:4] == ["hello-1", "FLOW", "hello", "Running"]
    assert table[1].split()[-3:] == ["42s", "step", "3/10"]
    bad = kubectl(
        "patch", "-n", namespace, "execution/hello-1", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"runner": {"attempt": 1, "state": "sleeping"}}}),
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert 'Unsupported value: "sleeping"' in bad.stderr


def test_printer_columns_of_every_kind(kubectl: Any, namespace: str) -> None:
    for manifest in VALID.values():
        apply(kubectl, namespace, manifest, check=True)
    expected = {
        "flows": ["NAME", "READY", "DESCRIPTION", "AGE"],
        "schedules": ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "READY", "NEXT", "LAST", "AGE"],
        "connections": ["NAME", "TYPE", "READY", "REASON", "AGE"],
        "webhooks": ["NAME", "FLOW", "ENABLED", "URL", "READY", "AGE"],
    }
    for plural, header in expected.items():
        lines = kubectl("get", "-n", namespace, plural).stdout.splitlines()
        assert lines[0].split() == header
    assert "Says hello." in kubectl("get", "-n", namespace, "kflow").stdout
    assert "0 3 * * *" in kubectl("get", "-n", namespace, "ksched").stdout
    assert "REST" in kubectl("get", "-n", namespace, "kconn").stdout
    assert "hello" in kubectl("get", "-n", namespace, "kwh").stdout.splitlines()[1]


def test_kubectl_explain_shows_the_model_descriptions(kubectl: Any) -> None:
    inputs = kubectl("explain", "executions.spec.inputs").stdout
    assert "Input values given to the handler (this.get('input_value')). Immutable." in inputs
    auth = kubectl("explain", "webhooks.spec.auth").stdout
    assert "allowUnauthenticated" in auth
    assert "Accept calls without credentials (explicit opt-in)." in auth
