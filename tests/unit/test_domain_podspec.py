"""The runner Pod built for an Execution attempt."""

from __future__ import annotations

from typing import Any

import pytest

from kumulus.domain.outcome import PodView
from kumulus.domain.podspec import (
    build_pod,
    image_allowed,
    image_refusal,
    merge_resources,
    owned_by,
    owner_execution,
    parse_quantity,
)
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
        "TMPDIR": "/tmp",
        "HOME": "/tmp",
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
    # The template's resources win over the Flow's, each over the defaults per resource; the
    # default memory request fits under the given limit.
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "64Mi"},
    }
    assert spec["serviceAccountName"] == "tpl-sa"
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]
    env = env_of(pod)
    assert env["FOO"] == "bar"
    assert env["KUMULUS_ATTEMPT"] == "1"


def test_flow_service_account_used_without_template() -> None:
    pod = build_pod(execution(), {"spec": {"serviceAccountName": "flow-sa"}}, 1, Settings())
    assert pod["spec"]["serviceAccountName"] == "flow-sa"


# ---------------------------------------------------------------- restricted Pod Security


def test_runner_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = build_pod(execution(), None, 1, Settings())
    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    [container] = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    # The one writable folder: an emptyDir at /tmp (the image's working directory).
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    # No hostPath, host namespaces or token opt-out: the runner keeps its ServiceAccount token.
    assert not {"hostNetwork", "hostPID", "hostIPC", "automountServiceAccountToken"} & set(spec)


def test_template_cannot_weaken_the_security_context() -> None:
    template = {"env": [{"name": "HOME", "value": "/tmp/home"}], "serviceAccountName": "sa"}
    pod = build_pod(execution(podTemplate=template), None, 1, Settings())
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    env = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert env.count("HOME") == 1 and env_of(pod)["HOME"] == "/tmp/home"
    assert env_of(pod)["TMPDIR"] == "/tmp"


def test_default_resources_come_from_the_settings() -> None:
    pod = build_pod(execution(), None, 1, Settings())
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "512Mi"},
    }
    settings = Settings(
        runner_cpu_request="",
        runner_memory_request="",
        runner_memory_limit="",
        runner_tmp_size_limit="",
    )
    pod = build_pod(execution(), None, 1, settings)
    assert "resources" not in pod["spec"]["containers"][0]
    assert pod["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    limited = build_pod(execution(), None, 1, Settings(runner_cpu_limit="2"))
    assert limited["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "2",
        "memory": "512Mi",
    }


DEFAULTS = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, DEFAULTS),
        # A request above the default limit raises the limit to it.
        (
            {"requests": {"memory": "1Gi"}},
            {"requests": {"cpu": "50m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        ),
        # A limit below the default request lowers the request to it.
        (
            {"limits": {"memory": "32Mi"}},
            {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "32Mi"}},
        ),
        # Both given: kept as given; other resources keep their defaults.
        (
            {"requests": {"cpu": "2"}, "limits": {"cpu": "1", "nvidia.com/gpu": 1}},
            {
                "requests": {"cpu": "2", "memory": "64Mi"},
                "limits": {"memory": "512Mi", "cpu": "1", "nvidia.com/gpu": 1},
            },
        ),
        # Within the defaults: nothing moves.
        (
            {"requests": {"memory": "128Mi"}},
            {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        ),
    ],
)
def test_resources_merge_over_the_defaults(
    given: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    assert merge_resources(DEFAULTS, given) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("50m", "0.05"),
        ("64Mi", str(64 * 2**20)),
        ("1Gi", str(2**30)),
        ("1G", "1000000000"),
        ("1.5", "1.5"),
        ("2", "2"),
        ("1e3", "1000"),
        ("500k", "500000"),
        (".5", "0.5"),
    ],
)
def test_parse_quantity(text: str, value: str) -> None:
    from decimal import Decimal

    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "abc", "1Qi", "1.2.3", "Mi"])
def test_parse_quantity_refuses_what_is_not_a_quantity(text: str) -> None:
    assert parse_quantity(text) is None


# ---------------------------------------------------------------- images

RUNNER = "ghcr.io/kumulus-dev/kumulus-runner:0.1.0"


@pytest.mark.parametrize(
    ("image", "allowed", "expected"),
    [
        (RUNNER, (), True),
        ("busybox:latest", (), False),
        ("ghcr.io/kumulus-dev/kumulus-runner:0.2.0", (), False),
        ("busybox:latest", ("busybox:latest",), True),
        ("busybox:1.36", ("busybox:latest",), False),
        ("registry.example.com/flows/etl:3", ("registry.example.com/flows/*",), True),
        ("registry.example.com/flowsevil/x:1", ("registry.example.com/flows/*",), False),
        ("registry.example.com/other/x:1", ("registry.example.com/flows/*",), False),
        ("anything", ("*",), True),
        # Compared as written: no normalisation of Docker Hub names.
        ("docker.io/library/busybox:latest", ("busybox:latest",), False),
    ],
)
def test_image_allowlist(image: str, allowed: tuple[str, ...], expected: bool) -> None:
    settings = Settings(runner_image=RUNNER, allowed_images=allowed)
    assert image_allowed(image, settings) is expected


def test_image_refusal_names_the_image_and_what_is_allowed() -> None:
    settings = Settings(runner_image=RUNNER)
    assert image_refusal(None, settings) is None  # SCRIPT, or a Flow without an image
    assert image_refusal({"spec": {}}, settings) is None
    message = image_refusal({"spec": {"image": "busybox:latest"}}, settings)
    assert message is not None
    assert "busybox:latest" in message and RUNNER in message
    from_env = Settings.from_env({"KUMULUS_ALLOWED_IMAGES": "a:1, reg/x/*"})
    assert from_env.allowed_images == ("a:1", "reg/x/*")
    assert image_refusal({"spec": {"image": "reg/x/y:2"}}, from_env) is None


# ---------------------------------------------------------------- ownership


def test_only_a_pod_whose_controller_is_the_execution_is_owned() -> None:
    own = build_pod(execution(), None, 1, Settings())
    assert owned_by(own, "u-1")
    assert PodView.from_dict(own).owner_uid == "u-1"
    assert not owned_by(own, "u-2")
    assert not owned_by(own, "")
    app = {"metadata": {"name": "app", "ownerReferences": []}}
    assert not owned_by(app, "u-1") and PodView.from_dict(app).owner_uid == ""
    # The same uid as a non-controller owner, or another kind, does not count.
    ref = {"kind": "Execution", "name": "ex1", "uid": "u-1"}
    assert not owned_by({"metadata": {"ownerReferences": [ref]}}, "u-1")
    rs = {"kind": "ReplicaSet", "name": "ex1", "uid": "u-1", "controller": True}
    assert not owned_by({"metadata": {"ownerReferences": [rs]}}, "u-1")
