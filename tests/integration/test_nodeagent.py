"""Integration tests of the dev node agent against the running dev cluster.

They create real Pods and observe, through the API server and the local /proc, that the agent
runs them like a kubelet: identity, environment, logs, deletion, failures and limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Pod

pytestmark = pytest.mark.integration

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

PY = sys.executable


def apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def pod_manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "nodeagent-test"}},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def wait_for(
    client: Client,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """Poll the Pod until ``check`` holds; fail with its last status otherwise."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = client.get(Pod, name, namespace=namespace).to_dict()
        if check(last):
            return last
        time.sleep(0.3)
    pytest.fail(
        f"Pod {namespace}/{name} did not reach the expected state: "
        + json.dumps(last.get("status"), indent=1)
    )


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") in phases


def container_status(pod: dict[str, Any], name: str = "main") -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status["name"] == name:
            return dict(status)
    return {}


def logs(kubectl: Kubectl, namespace: str, name: str, *extra: str) -> str:
    return kubectl("logs", "-n", namespace, name, *extra).stdout


def test_process_has_exactly_its_service_account_permissions(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    apply(
        kubectl,
        namespace,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"}, "data": {"k": "v"}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s1"},
            "stringData": {"k": "v"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "get-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "get-configmaps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    script = (
        'stat -c mode=%a "$KUBECONFIG"; '
        "kubectl get configmap cm1 -o name; echo get-rc=$?; "
        "kubectl get secrets 2>&1; echo list-rc=$?; "
        "kubectl auth whoami -o jsonpath='{.status.userInfo.username}{\"\\n\"}'"
    )
    apply(
        kubectl,
        namespace,
        pod_manifest(
            "whoami",
            [{"name": "main", "image": "kubectl", "command": ["sh", "-c", script]}],
            serviceAccountName="reader",
        ),
    )
    wait_for(client, namespace, "whoami", phase_is("Succeeded", "Failed"))
    out = logs(kubectl, namespace, "whoami")
    assert "mode=600" in out
    assert "configmap/cm1" in out
    assert "get-rc=0" in out
    assert "Forbidden" in out and "list-rc=1" in out
    assert f"system:serviceaccount:{namespace}:reader" in out


def test_no_token_when_automount_is_disabled(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    script = 'echo "kubeconfig=${KUBECONFIG:-none}"'
    apply(
        kubectl,
        namespace,
        pod_manifest(
            "notoken",
            [{"name": "main", "image": "x", "command": ["sh", "-c", script]}],
            automountServiceAccountToken=False,
        ),
    )
    wait_for(client, namespace, "notoken", phase_is("Succeeded"))
    assert logs(kubectl, namespace, "notoken").strip() == "kubeconfig=none"


def test_environment_is_clean_and_complete(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    apply(
        kubectl,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"COLOR": "blue", "SIZE": "xl"},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sec"},
            "stringData": {"TOKEN": "t0p"},
        },
    )
    container = {
        "name": "main",
        "image": "env",
        # env(1) prints its environment as given (Python would add LC_CTYPE itself).
        "command": ["env"],
        "envFrom": [
            {"configMapRef": {"name": "cfg"}},
            {"secretRef": {"name": "sec"}, "prefix": "SEC_"},
        ],
        "env": [
            {"name": "GREETING", "value": "hello $(COLOR) $$(COLOR) $(NOPE)"},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "SIZE"}}},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {
                "name": "OPT",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}},
            },
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    }
    apply(kubectl, namespace, pod_manifest("envpod", [container]))
    pod = wait_for(client, namespace, "envpod", phase_is("Succeeded", "Failed"))
    env = dict(line.split("=", 1) for line in logs(kubectl, namespace, "envpod").splitlines())
    assert set(env) == {
        "PATH", "HOSTNAME", "KUBECONFIG", "COLOR", "SIZE", "SEC_TOKEN", "GREETING", "FROM_CM",
        "FROM_SECRET", "POD_NAME", "POD_NS", "POD_UID", "APP", "NODE", "POD_IP",
    }  # fmt: skip
    assert env["GREETING"] == "hello blue $(COLOR) $(NOPE)"
    assert (env["FROM_CM"], env["FROM_SECRET"], env["SEC_TOKEN"]) == ("xl", "t0p", "t0p")
    assert (env["POD_NAME"], env["POD_NS"], env["APP"]) == ("envpod", namespace, "nodeagent-test")
    assert env["POD_UID"] == pod["metadata"]["uid"]
    assert (env["NODE"], env["POD_IP"], env["HOSTNAME"]) == ("kumulus-dev", "127.0.0.1", "envpod")
    assert not any(key.startswith("KUBERNETES_") for key in env)
    assert os.path.dirname(PY) in env["PATH"].split(os.pathsep)


def test_missing_configmap_waits_with_config_error(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    container = {
        "name": "main",
        "image": "x",
        "command": ["true"],
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "k"}}}],
    }
    apply(kubectl, namespace, pod_manifest("cfgerr", [container]))
    pod = wait_for(
        client,
        namespace,
        "cfgerr",
        lambda p: (
            (container_status(p).get("state") or {}).get("waiting", {}).get("reason")
            == "CreateContainerConfigError"
        ),
    )
    assert pod["status"]["phase"] == "Pending"
    apply(
        kubectl,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "later"},
            "data": {"k": "v"},
        },
    )
    wait_for(client, namespace, "cfgerr", phase_is("Succeeded"))


def test_deleting_a_running_pod_stops_its_process(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    container = {
        "name": "main",
        "image": "x",
        "command": [PY, "-c", "import time; time.sleep(600)"],
    }
    apply(kubectl, namespace, pod_manifest("sleeper", [container], terminationGracePeriodSeconds=5))
    pod = wait_for(client, namespace, "sleeper", phase_is("Running"))
    pid = int(container_status(pod)["containerID"].removeprefix("kumulus://"))
    assert Path(f"/proc/{pid}").exists()
    kubectl("delete", "pod", "-n", namespace, "sleeper", "--wait=true", "--timeout=60s")
    with pytest.raises(ApiError) as missing:
        client.get(Pod, "sleeper", namespace=namespace)
    assert missing.value.status.code == 404
    assert (
        not Path(f"/proc/{pid}").exists()
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    )


def test_kubectl_logs_and_follow_stream(
    kubectl: Kubectl, namespace: str, client: Client, kubeconfig: Path
) -> None:
    gate = Path(tempfile.gettempdir()) / f"nodeagent-gate-{uuid.uuid4().hex}"
    script = f"echo first; echo second >&2; while [ ! -e {gate} ]; do sleep 0.1; done; echo last"
    apply(
        kubectl,
        namespace,
        pod_manifest("talker", [{"name": "main", "image": "x", "command": ["sh", "-c", script]}]),
    )
    wait_for(client, namespace, "talker", phase_is("Running"))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    follow = subprocess.Popen(
        ["kubectl", "logs", "-f", "-n", namespace, "talker"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "first\n"
        assert follow.stdout.readline() == "second\n"
        gate.touch()  # only now does the container print its last line and exit
        assert follow.stdout.readline() == "last\n"
        assert follow.wait(timeout=30) == 0
    finally:
        follow.kill()
        gate.unlink(missing_ok=True)
    wait_for(client, namespace, "talker", phase_is("Succeeded"))
    assert logs(kubectl, namespace, "talker") == "first\nsecond\nlast\n"
    assert logs(kubectl, namespace, "talker", "--tail=1") == "last\n"
    assert logs(kubectl, namespace, "talker", "--limit-bytes=3") == "fir"
    stamped = logs(kubectl, namespace, "talker", "--timestamps").splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["first", "second", "last"]
    unknown = kubectl("logs", "-n", namespace, "talker", "-c", "nope", check=False)
    assert unknown.returncode != 0


def test_missing_executable_is_a_start_error(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    container = {"name": "main", "image": "x", "command": ["no-such-binary-kumulus"]}
    apply(kubectl, namespace, pod_manifest("noexec", [container]))
    pod = wait_for(client, namespace, "noexec", phase_is("Failed"))
    terminated = container_status(pod)["state"]["terminated"]
    assert terminated["reason"] == "StartError"
    assert terminated["exitCode"] == 128
    assert (
        'exec: "no-such-binary-kumulus": executable file not found in $PATH'
        in terminated["message"]
    )


def test_unmapped_image_without_command_waits_in_err_image_pull(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    apply(kubectl, namespace, pod_manifest("nocmd", [{"name": "main", "image": "nginx:1.27"}]))
    pod = wait_for(
        client,
        namespace,
        "nocmd",
        lambda p: (
            (container_status(p).get("state") or {}).get("waiting", {}).get("reason")
            == "ErrImagePull"
        ),
    )
    assert pod["status"]["phase"] == "Pending"
    assert "nginx" in container_status(pod)["state"]["waiting"]["message"]
    kubectl("delete", "pod", "-n", namespace, "nocmd", "--wait=true", "--timeout=30s")


def test_active_deadline_fails_the_pod(kubectl: Kubectl, namespace: str, client: Client) -> None:
    container = {
        "name": "main",
        "image": "x",
        "command": [PY, "-c", "import time; time.sleep(600)"],
    }
    apply(kubectl, namespace, pod_manifest("late", [container], activeDeadlineSeconds=3))
    pod = wait_for(client, namespace, "late", phase_is("Failed"))
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert "deadline" in pod["status"]["message"]
    assert "terminated" in container_status(pod)["state"]


def test_memory_limit_is_enforced_as_oom_kill(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    hog = (
        "import time\nblocks = []\n"
        "while True:\n    blocks.append(bytearray(8 << 20))\n    time.sleep(0.05)\n"
    )
    container = {
        "name": "main",
        "image": "x",
        "command": [PY, "-c", hog],
        "resources": {"limits": {"memory": "64Mi"}},
    }
    apply(kubectl, namespace, pod_manifest("hog", [container]))
    pod = wait_for(client, namespace, "hog", phase_is("Failed"))
    terminated = container_status(pod)["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


def test_init_containers_and_on_failure_restarts(
    kubectl: Kubectl, namespace: str, client: Client
) -> None:
    shared = Path(tempfile.gettempdir()) / f"nodeagent-shared-{uuid.uuid4().hex}"
    init = {
        "name": "init",
        "image": "x",
        "command": ["sh", "-c", f"mkdir -p {shared} && echo init > {shared}/init"],
    }
    main = {
        "name": "main",
        "image": "x",
        "workingDir": str(shared),
        "command": [
            "sh",
            "-c",
            "test -f init || exit 9; if [ -f again ]; then exit 0; fi; touch again; exit 3",
        ],
    }
    apply(
        kubectl,
        namespace,
        pod_manifest("retry", [main], initContainers=[init], restartPolicy="OnFailure"),
    )
    pod = wait_for(client, namespace, "retry", phase_is("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    status = container_status(pod)
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    (init_status,) = pod["status"]["initContainerStatuses"]
    assert init_status["state"]["terminated"]["reason"] == "Completed"
    for path in shared.iterdir():
        path.unlink()
    shared.rmdir()
