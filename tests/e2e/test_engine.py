"""The execution engine end to end: real dev cluster, real operator, real runner processes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., Any]
Operator = Any  # tests/e2e/conftest.py:Operator
Apply = Callable[..., None]
WaitPhase = Callable[..., dict[str, Any]]


def flow(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Flow",
        "metadata": {"name": name},
        "spec": {"code": code, **spec},
    }


def execution(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": spec,
    }


def finished_reason(ex: dict[str, Any]) -> str:
    for cond in ex["status"].get("conditions") or []:
        if cond["type"] == "Finished":
            return str(cond["reason"])
    return ""


def pods_of(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    out = kubectl(
        "get", "pods", "-n", namespace, "-l", f"kumulus.dev/execution={name}", "-o", "name"
    ).stdout
    return [line for line in out.splitlines() if line]


HELLO = """
def handler(system, this):
    inputs = this.get('input_value') or {}
    this.save(output_value={'greeting': 'hello ' + inputs.get('name', 'nobody')})
    return this.success('greeted')
"""

SLEEPER = """
import time
def handler(system, this):
    time.sleep(int((this.get('input_value') or {}).get('seconds', 60)))
    return this.success('slept')
"""

FAILER = """
def handler(system, this):
    raise RuntimeError('always fails')
"""


def test_hello_flow(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("hello", HELLO), namespace)
    apply(execution("hello-1", flowRef={"name": "hello"}, inputs={"name": "kumulus"}), namespace)
    ex = wait_phase("hello-1", namespace, ("Succeeded", "Failed"))
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["outputs"] == {"greeting": "hello kumulus"}
    assert ex["status"]["attempts"] == 1
    assert ex["status"]["podName"] == "hello-1-a1"
    assert ex["status"]["duration"].endswith("s")
    assert finished_reason(ex) == "Succeeded"
    events = kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=hello-1",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()
    assert "CreatedPod" in events and "Succeeded" in events


def test_script_execution(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase
) -> None:
    script = "def handler(system, this):\n    this.save(output_value={'n': 6 * 7})\n"
    apply(execution("script-1", type="SCRIPT", script=script), namespace)
    ex = wait_phase("script-1", namespace, ("Succeeded", "Failed"))
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["outputs"] == {"n": 42}


def test_timeout_fails_with_deadline_exceeded(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase
) -> None:
    apply(flow("sleeper", SLEEPER), namespace)
    apply(execution("slow", flowRef={"name": "sleeper"}, timeoutSeconds=2), namespace)
    ex = wait_phase("slow", namespace, ("Succeeded", "Failed", "Cancelled"))
    assert ex["status"]["phase"] == "Failed"
    assert finished_reason(ex) == "DeadlineExceeded"
    assert "timeout of 2s" in ex["status"]["statusMessage"]


def test_retries_then_fails(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("failer", FAILER), namespace)
    retry = {"limit": 2, "backoffSeconds": 1, "factor": 1}
    apply(execution("flaky", flowRef={"name": "failer"}, retry=retry), namespace)
    ex = wait_phase("flaky", namespace, ("Succeeded", "Failed"), timeout=120)
    assert ex["status"]["phase"] == "Failed"
    assert ex["status"]["attempts"] == 3
    assert finished_reason(ex) == "FlowError"
    assert "always fails" in ex["status"]["statusMessage"]
    assert sorted(pods_of(kubectl, namespace, "flaky")) == [
        "pod/flaky-a1",
        "pod/flaky-a2",
        "pod/flaky-a3",
    ]


def test_retry_succeeds_on_third_attempt(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase
) -> None:
    code = (
        "import os\n"
        "def handler(system, this):\n"
        "    if int(os.environ['KUMULUS_ATTEMPT']) < 3:\n"
        "        raise RuntimeError('not yet')\n"
        "    this.save(output_value={'attempt': int(os.environ['KUMULUS_ATTEMPT'])})\n"
    )
    retry = {"limit": 5, "backoffSeconds": 1, "factor": 1}
    apply(execution("third", type="SCRIPT", script=code, retry=retry), namespace)
    ex = wait_phase("third", namespace, ("Succeeded", "Failed"), timeout=120)
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["attempts"] == 3
    assert ex["status"]["outputs"] == {"attempt": 3}


def test_pod_deleted_under_running_execution(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("sleeper", SLEEPER), namespace)
    apply(execution("victim", flowRef={"name": "sleeper"}), namespace)
    wait_phase("victim", namespace, "Running")
    kubectl("delete", "pod", "victim-a1", "-n", namespace, "--wait=false")
    ex = wait_phase("victim", namespace, ("Succeeded", "Failed", "Cancelled"))
    assert ex["status"]["phase"] == "Failed"
    assert finished_reason(ex) == "PodDeleted"
    assert "victim-a1" in ex["status"]["statusMessage"]


def test_cancel_running_parent_cancels_children(
    operator: Operator,
    namespace: str,
    apply: Apply,
    wait_phase: WaitPhase,
    kubectl: Kubectl,
    get_execution: Callable[[str, str], dict[str, Any]],
) -> None:
    apply(flow("sleeper", SLEEPER), namespace)
    apply(execution("parent", flowRef={"name": "sleeper"}), namespace)
    wait_phase("parent", namespace, "Running")
    uid = get_execution("parent", namespace)["metadata"]["uid"]
    for i in (1, 2):
        child = execution(f"parent-1-{i}", flowRef={"name": "sleeper"})
        child["metadata"]["labels"] = {"kumulus.dev/parent": "parent"}
        child["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Execution",
                "name": "parent",
                "uid": uid,
                "controller": True,
            }
        ]
        apply(child, namespace)
    wait_phase("parent-1-1", namespace, "Running")
    wait_phase("parent-1-2", namespace, "Running")
    kubectl(
        "patch",
        "execution",
        "parent",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"desiredState":"Cancelled"}}',
    )
    parent = wait_phase("parent", namespace, ("Succeeded", "Failed", "Cancelled"))
    assert parent["status"]["phase"] == "Cancelled"
    for i in (1, 2):
        child = wait_phase(f"parent-1-{i}", namespace, ("Succeeded", "Failed", "Cancelled"))
        assert child["status"]["phase"] == "Cancelled"
        assert child["spec"]["desiredState"] == "Cancelled"
    # The parent's summary of its children follows their phases.
    deadline = time.monotonic() + 30
    summary: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        summary = get_execution("parent", namespace)["status"].get("children") or []
        if [c["phase"] for c in summary] == ["Cancelled", "Cancelled"]:
            break
        time.sleep(0.5)
    assert [(c["name"], c["phase"]) for c in summary] == [
        ("parent-1-1", "Cancelled"),
        ("parent-1-2", "Cancelled"),
    ]


def test_cancel_not_started(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("hello", HELLO), namespace)
    apply(execution("idle", flowRef={"name": "hello"}, run=False), namespace)
    wait_phase("idle", namespace, "Pending")
    kubectl(
        "patch",
        "execution",
        "idle",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"desiredState":"Cancelled"}}',
    )
    ex = wait_phase("idle", namespace, ("Succeeded", "Failed", "Cancelled"))
    assert ex["status"]["phase"] == "Cancelled"
    assert pods_of(kubectl, namespace, "idle") == []


def test_run_false_waits_for_run_true(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("hello", HELLO), namespace)
    apply(execution("later", flowRef={"name": "hello"}, run=False), namespace)
    ex = wait_phase("later", namespace, "Pending")
    started = next(c for c in ex["status"]["conditions"] if c["type"] == "Started")
    assert (started["status"], started["reason"]) == ("False", "NotStarted")
    assert pods_of(kubectl, namespace, "later") == []
    kubectl(
        "patch",
        "execution",
        "later",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"run":true}}',
    )
    ex = wait_phase("later", namespace, ("Succeeded", "Failed"))
    assert ex["status"]["phase"] == "Succeeded"


def test_operator_killed_mid_run_finishes_each_execution_once(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("sleeper", SLEEPER), namespace)
    names = [f"survivor-{i}" for i in range(5)]
    for name in names:
        apply(execution(name, flowRef={"name": "sleeper"}, inputs={"seconds": 6}), namespace)
    wait_phase(names[0], namespace, ("Running", "Succeeded"))
    operator.kill()
    time.sleep(2)  # Let runners make progress while no operator runs (not an assertion).
    operator.start()
    for name in names:
        ex = wait_phase(name, namespace, ("Succeeded", "Failed", "Cancelled"), timeout=120)
        assert ex["status"]["phase"] == "Succeeded", (name, ex["status"])
        assert ex["status"]["attempts"] == 1
        assert pods_of(kubectl, namespace, name) == [f"pod/{name}-a1"]


def test_flow_execution_without_flow_ref_is_rejected(
    operator: Operator, namespace: str, kubectl: Kubectl
) -> None:
    manifest = json.dumps(execution("bad", type="FLOW"))
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)
    assert proc.returncode != 0
    assert "spec.flowRef is required when spec.type is FLOW" in proc.stderr


def test_runner_cannot_read_secrets(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    kubectl("create", "secret", "generic", "top", "-n", namespace, "--from-literal=k=v")
    script = (
        "from lightkube import Client\n"
        "from lightkube.core.exceptions import ApiError\n"
        "from lightkube.resources.core_v1 import Secret\n"
        "def handler(system, this):\n"
        "    try:\n"
        f"        Client().get(Secret, 'top', namespace='{namespace}')\n"
        "        this.save(output_value={'code': 200})\n"
        "    except ApiError as err:\n"
        "        this.save(output_value={'code': err.status.code})\n"
    )
    apply(execution("peek", type="SCRIPT", script=script), namespace)
    ex = wait_phase("peek", namespace, ("Succeeded", "Failed"))
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["outputs"] == {"code": 403}


def test_flow_with_syntax_error_is_not_ready(
    operator: Operator,
    namespace: str,
    apply: Apply,
    kubectl: Kubectl,
    wait_phase: WaitPhase,
) -> None:
    apply(flow("broken", "def handler(system, this):\n    x = (\n\nreturn 1\n"), namespace)
    deadline = time.monotonic() + 30
    ready: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = kubectl("get", "flow", "broken", "-n", namespace, "-o", "json").stdout
        conds = (json.loads(out).get("status") or {}).get("conditions") or []
        ready = next((c for c in conds if c["type"] == "Ready"), {})
        if ready:
            break
        time.sleep(0.25)
    assert ready["status"] == "False"
    assert ready["reason"] == "SyntaxError"
    assert ready["message"].startswith("Line ")
    apply(execution("broken-1", flowRef={"name": "broken"}), namespace)
    ex = wait_phase("broken-1", namespace, ("Succeeded", "Failed"))
    assert finished_reason(ex) == "FlowNotReady"


def test_invalid_inputs_fail_without_pod(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    apply(flow("strict", HELLO, inputSchema=schema), namespace)
    apply(execution("strict-1", flowRef={"name": "strict"}, inputs={"name": 5}), namespace)
    ex = wait_phase("strict-1", namespace, ("Succeeded", "Failed"))
    assert finished_reason(ex) == "InvalidInputs"
    assert "is not of type 'string'" in ex["status"]["statusMessage"]
    assert pods_of(kubectl, namespace, "strict-1") == []


def test_latency_of_a_trivial_flow(
    operator: Operator, namespace: str, apply: Apply, kubectl: Kubectl
) -> None:
    """Measures (prints, does not assert on) create → Pod exists → Succeeded."""
    apply(flow("hello", HELLO), namespace)
    created = time.monotonic()
    apply(execution("timed", flowRef={"name": "hello"}), namespace)
    pod_seen: float | None = None
    phase = ""
    while time.monotonic() - created < 90:
        if pod_seen is None and pods_of(kubectl, namespace, "timed"):
            pod_seen = time.monotonic()
        out = kubectl("get", "execution", "timed", "-n", namespace, "-o", "json").stdout
        phase = (json.loads(out).get("status") or {}).get("phase") or ""
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.05)
    done = time.monotonic()
    assert phase == "Succeeded"
    assert pod_seen is not None
    print(
        f"\nLatency: Execution created -> Pod exists {pod_seen - created:.2f}s, "
        f"-> Succeeded {done - created:.2f}s (kubectl polling, ~0.1s resolution)"
    )


def test_execution_created_before_its_flow_waits_for_it(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    # `kubectl apply -f dir/` applies execution.yaml before flow.yaml: the order must not matter.
    apply(execution("early-1", flowRef={"name": "late"}, inputs={"name": "order"}), namespace)
    ex = wait_phase("early-1", namespace, ("Pending",))
    started = next(c for c in ex["status"].get("conditions") or [] if c["type"] == "Started")
    assert started["reason"] == "FlowNotFound"
    assert pods_of(kubectl, namespace, "early-1") == []
    apply(flow("late", HELLO), namespace)
    ex = wait_phase("early-1", namespace, ("Succeeded", "Failed"))
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["outputs"] == {"greeting": "hello order"}


def flow_ready(kubectl: Kubectl, namespace: str, name: str, reason: str) -> dict[str, Any]:
    """Poll the Flow until its Ready condition has ``reason``; return that condition."""
    deadline = time.monotonic() + 60
    ready: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = kubectl("get", "flow", name, "-n", namespace, "-o", "json").stdout
        conds = (json.loads(out).get("status") or {}).get("conditions") or []
        ready = next((c for c in conds if c["type"] == "Ready"), {})
        if ready.get("reason") == reason:
            return ready
        time.sleep(0.25)
    pytest.fail(f"Flow {namespace}/{name} never got Ready reason {reason}; last: {ready}")


def test_code_from_configmap_created_later_and_changed(
    operator: Operator, namespace: str, apply: Apply, kubectl: Kubectl, wait_phase: WaitPhase
) -> None:
    # GitOps may apply the Flow before its ConfigMap, and may change the ConfigMap alone.
    spec = {"codeFrom": {"configMapKeyRef": {"name": "late-code", "key": "flow.py"}}}
    apply({"apiVersion": "kumulus.dev/v1alpha1", "kind": "Flow",
           "metadata": {"name": "from-cm"}, "spec": spec}, namespace)  # fmt: skip
    assert flow_ready(kubectl, namespace, "from-cm", "CodeNotFound")["status"] == "False"
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late-code"}}
    apply({**configmap, "data": {"flow.py": HELLO}}, namespace)
    assert flow_ready(kubectl, namespace, "from-cm", "Compiled")["status"] == "True"
    apply({**configmap, "data": {"flow.py": "def handler(system, this):\n    x = (\n"}}, namespace)
    broken = flow_ready(kubectl, namespace, "from-cm", "SyntaxError")
    assert broken["status"] == "False" and broken["message"].startswith("Line ")
