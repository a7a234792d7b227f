"""The dev cluster is a real Kubernetes: version, Node, garbage collection, Jobs, lifecycle.

These tests pin down what the rest of the project relies on from ``make cluster-up``: the
pinned server version, a Ready Node, the controller-manager's garbage collector, and a Job
running end to end through scheduler, controller-manager and node agent. The last test
drives the launcher itself (up, reuse, status, down) in a scratch state directory and
prints the cold start time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import ConfigMap as ConfigMapResource
from lightkube.resources.core_v1 import Node

from kumulus.devcluster.paths import NODE_NAME, read_versions

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_server_reports_the_pinned_version(kubectl: Kubectl) -> None:
    out = kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]
    assert server["gitVersion"] == read_versions()["KUBERNETES_VERSION"] == "v1.36.3"


def test_node_is_ready(client: Client) -> None:
    node = client.get(Node, NODE_NAME)
    assert node.status is not None
    ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
    assert [c.status for c in ready] == ["True"]


def test_owned_configmap_is_garbage_collected(
    client: Client, kubectl: Kubectl, namespace: str
) -> None:
    owner = client.create(
        ConfigMapResource(metadata=ObjectMeta(name="owner", namespace=namespace), data={"a": "1"})
    )
    assert owner.metadata is not None and owner.metadata.uid
    dependent = ConfigMapResource(
        metadata=ObjectMeta(
            name="dependent",
            namespace=namespace,
            ownerReferences=[
                OwnerReference(
                    apiVersion="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                )
            ],
        ),
        data={"b": "2"},
    )
    client.create(dependent)
    assert client.get(ConfigMapResource, "dependent", namespace=namespace).data == {"b": "2"}

    client.delete(ConfigMapResource, "owner", namespace=namespace)
    # kubectl wait watches until the object is gone (or fails after the timeout).
    kubectl("wait", "--for=delete", "configmap/dependent", "-n", namespace, "--timeout=90s")
    gone = kubectl("get", "configmap", "dependent", "-n", namespace, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_job_runs_to_completion_and_its_log_is_readable(kubectl: Kubectl, namespace: str) -> None:
    name = _unique("hello")
    created = time.monotonic()
    kubectl(
        "create",
        "job",
        name,
        "-n",
        namespace,
        "--image=busybox:1.36",
        "--",
        "sh",
        "-c",
        "echo hello-from-job; exit 0",
    )
    waited = kubectl(
        "wait",
        "--for=condition=Complete",
        f"job/{name}",
        "-n",
        namespace,
        "--timeout=180s",
        check=False,
        timeout=200,
    )
    took = time.monotonic() - created
    if waited.returncode != 0:
        pods = kubectl("get", "pods", "-n", namespace, "-o", "yaml", check=False).stdout
        events = kubectl("get", "events", "-n", namespace, check=False).stdout
        pytest.fail(f"Job {namespace}/{name} did not complete:\n{waited.stderr}\n{pods}\n{events}")
    print(f"\nJob {namespace}/{name} went from create to Complete in {took:.1f} s.")

    job = json.loads(kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout)
    assert job["status"]["succeeded"] == 1
    logs = kubectl("logs", f"job/{name}", "-n", namespace).stdout
    assert "hello-from-job" in logs


def _devcluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kumulus.devcluster", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_launcher_lifecycle_in_a_scratch_state_dir(tmp_path: Path) -> None:
    """A second cluster next to the shared one: cold up, reuse, status, down."""
    state = tmp_path / "cluster"
    pids: dict[str, int] = {}
    try:
        started = time.monotonic()
        up = _devcluster("up", "--state-dir", str(state))
        took = time.monotonic() - started
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nCold `up` (warm binary cache) took {took:.1f} s.")

        record = json.loads((state / "cluster.json").read_text())
        pids = {name: c["pid"] for name, c in record["components"].items()}
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "node-agent",
        }
        assert all(_alive(pid) for pid in pids.values())
        assert (state / "kubeconfig").stat().st_mode & 0o077 == 0
        assert (state / "pki" / "ca.key").stat().st_mode & 0o077 == 0

        again = _devcluster("up", "--state-dir", str(state))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Reused the running dev cluster." in again.stdout
        assert (
            json.loads((state / "cluster.json").read_text())["components"]["etcd"]["pid"]
            == pids["etcd"]
        )

        status = _devcluster("status", "--state-dir", str(state))
        assert status.returncode == 0, status.stdout
        health = [line.split()[-1] for line in status.stdout.splitlines()[2:]]
        assert health == ["healthy"] * 5, status.stdout

        env = _devcluster("env", "--state-dir", str(state))
        assert env.stdout.strip() == f"export KUBECONFIG={state.resolve() / 'kubeconfig'}"
    finally:
        down = _devcluster("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
    assert not any(_alive(pid) for pid in pids.values())
    after = _devcluster("status", "--state-dir", str(state))
    assert after.returncode == 1
