"""The runner Pod built for an Execution attempt."""

from __future__ import annotations

from typing import Any

import pytest

from kumulus.domain.podspec import build_pod, owner_execution
from kumulus.domain.settings import Settings

pytestmark = pytest.mark.unit


def execution(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": "ex1", "namespace": "ns1", "uid": "u-1", "generation": 1},
        "spec": {"type": "FLOW", "flowRef": {"name": "f"}, **spec},
    }


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def test_contract_fields() -> None:
    pod = build_pod(execution(), None, 2, Settings(runner_image="runner:1"))
    meta = pod["metadata"]
    assert meta["name"] == "ex1-a2"
    assert meta["namespace"] == "ns1"
    assert meta["labels"] == {
        "kumulus.dev/execution": "ex1",
        "kumulus.dev/attempt": "2",
        "app.kubernetes.io/managed-by": "kumulus",
    }
    [owner] = meta["ownerReferences"]
    assert owner["kind"] == "Execution" and owner["uid"] == "u-1" and owner["controller"]
    assert owner_execution(pod) == "ex1"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "kumulus-runner"
    assert "activeDeadlineSeconds" not in spec
    container = spec["containers"][0]
    assert container["command"] == ["kumulus-runner"]
    assert container["image"] == "runner:1"
    assert env_of(pod) == {
        "KUMULUS_EXECUTION": "ex1",
        "KUMULUS_NAMESPACE": "ns1",
        "KUMULUS_ATTEMPT": "2",
        "KUMULUS_OUTPUT_LIMIT_BYTES": "262144",
    }


def test_timeout_becomes_active_deadline_execution_over_flow() -> None:
    flow = {"spec": {"timeoutSeconds": 99}}
    assert build_pod(execution(), flow, 1, Settings())["spec"]["activeDeadlineSeconds"] == 99
    pod = build_pod(execution(timeoutSeconds=5), flow, 1, Settings())
    assert pod["spec"]["activeDeadlineSeconds"] == 5


def test_pod_template_and_flow_settings() -> None:
    flow = {
        "spec": {
            "image": "custom:2",
            "serviceAccountName": "flow-sa",
            "resources": {"limits": {"memory": "1Gi"}},
        }
    }
    template = {
        "resources": {"limits": {"memory": "64Mi"}},
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "serviceAccountName": "tpl-sa",
        "env": [
            {"name": "FOO", "value": "bar"},
            {"name": "KUMULUS_ATTEMPT", "value": "99"},
        ],
    }
    pod = build_pod(execution(podTemplate=template), flow, 1, Settings())
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["image"] == "custom:2"
    assert container["resources"] == {"limits": {"memory": "64Mi"}}
    assert spec["serviceAccountName"] == "tpl-sa"
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]
    env = env_of(pod)
    assert env["FOO"] == "bar"
    assert env["KUMULUS_ATTEMPT"] == "1"


def test_flow_service_account_used_without_template() -> None:
    pod = build_pod(execution(), {"spec": {"serviceAccountName": "flow-sa"}}, 1, Settings())
    assert pod["spec"]["serviceAccountName"] == "flow-sa"
