"""The dev cluster is a real Kubernetes: version, a real node, garbage collection, Jobs, lifecycle.

These tests pin down what the rest of the project relies on from ``make cluster-up``: the
pinned server version, a Ready Node run by the kubelet on containerd, the controller-manager's
garbage collector, a Job of the runner image running end to end through scheduler,
controller-manager, kubelet and containerd, and Pods reaching the API server through the
``kubernetes`` Service (kube-proxy). The last test drives the launcher itself (up, reuse,
status, down) in a scratch state directory, prints the cold start time and checks that
``down`` leaves no process, mount, cgroup or network namespace behind.
"""

from __future__ import annotations

import ipaddress
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

from kumulus.devcluster.launcher import ORDER
from kumulus.devcluster.network import NodeNetwork
from kumulus.devcluster.node import NodeLayout, cgroup_name
from kumulus.devcluster.paths import NODE_NAME, read_versions
from kumulus.domain.settings import Settings

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.integration

RUNNER_IMAGE = Settings().runner_image
DOCUMENTATION = ("198.51.100.0/24", "203.0.113.0/24")


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


def test_node_is_a_real_kubelet_on_containerd(client: Client) -> None:
    node = client.get(Node, NODE_NAME)
    assert node.status is not None and node.status.nodeInfo is not None
    info = node.status.nodeInfo
    assert info.containerRuntimeVersion.startswith("containerd://1.6."), info
    assert info.kubeletVersion == read_versions()["KUBERNETES_VERSION"]
    addresses = {a.type: a.address for a in node.status.addresses or []}
    assert ipaddress.ip_address(addresses["InternalIP"]) in ipaddress.ip_network(
        "203.0.113.0/24"
    ), addresses
    images = {name for image in node.status.images or [] for name in image.names or []}
    assert RUNNER_IMAGE in images, sorted(images)


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
        f"--image={RUNNER_IMAGE}",
        "--",
        "python3",
        "-c",
        "import os; print('hello-from-job', os.getuid(), os.getgid())",
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
    # The image's own user and group (a real kubelet passes only the user id).
    assert "hello-from-job 10001 10001" in logs
    pods = json.loads(
        kubectl("get", "pods", "-n", namespace, "-l", f"job-name={name}", "-o", "json").stdout
    )
    (status,) = pods["items"][0]["status"]["containerStatuses"]
    assert status["imageID"].startswith("sha256:") or "@sha256:" in status["imageID"], status
    assert status["containerID"].startswith("containerd://"), status


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(
    kubectl: Kubectl, namespace: str
) -> None:
    """In-cluster config as every runner uses it: the Service's ClusterIP, the projected token."""
    name = _unique("incluster")
    script = (
        "from lightkube import Client\n"
        "from lightkube.resources.core_v1 import ConfigMap\n"
        "import os\n"
        "import socket\n"
        "print('service', os.environ['KUBERNETES_SERVICE_HOST'])\n"
        "print('dns', socket.gethostbyname('kubernetes.default.svc'))\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 443)\n"
        "    print('outside resolved')\n"
        "except socket.gaierror:\n"
        "    print('outside unresolved')\n"
        f"print('listed', len(list(Client().list(ConfigMap, namespace='{namespace}'))))\n"
    )
    kubectl("create", "rolebinding", "view", "-n", namespace, "--clusterrole=view",
            f"--serviceaccount={namespace}:default")  # fmt: skip
    kubectl(
        "run", name, "-n", namespace, f"--image={RUNNER_IMAGE}", "--restart=Never",
        "--image-pull-policy=Never", "--command", "--", "python3", "-c", script,
    )  # fmt: skip
    waited = kubectl(
        "wait", "--for=jsonpath={.status.phase}=Succeeded", f"pod/{name}", "-n", namespace,
        "--timeout=120s", check=False, timeout=140,
    )  # fmt: skip
    logs = kubectl("logs", name, "-n", namespace, check=False)
    assert waited.returncode == 0, waited.stderr + logs.stdout + logs.stderr
    service = json.loads(kubectl("get", "service", "kubernetes", "-n", "default", "-o",
                                 "json").stdout)  # fmt: skip
    assert f"service {service['spec']['clusterIP']}" in logs.stdout
    # Cluster DNS answers for Services; a name outside the cluster does not resolve at all.
    assert f"dns {service['spec']['clusterIP']}" in logs.stdout
    assert "outside unresolved" in logs.stdout
    assert "listed " in logs.stdout


def test_the_node_has_no_route_off_the_machine(kubeconfig: Path) -> None:
    """The node's namespace routes only its own ranges: no default route, nothing forwarded."""
    record = json.loads((kubeconfig.parent / "cluster.json").read_text())
    net = NodeNetwork(record["slot"])
    inside = subprocess.run(
        ["ip", "-n", net.netns, "route", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert inside.strip(), "the node's namespace has no routes at all"
    assert "default" not in inside, inside
    for line in inside.splitlines():
        dest = ipaddress.IPv4Network(line.split()[0])
        assert any(dest.subnet_of(ipaddress.IPv4Network(r)) for r in DOCUMENTATION), line
    host = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=True)
    ours = [line for line in host.stdout.splitlines() if net.host_if in line]
    assert ours, host.stdout
    for line in ours:
        dest = ipaddress.IPv4Network(line.split()[0])
        assert any(dest.subnet_of(ipaddress.IPv4Network(r)) for r in DOCUMENTATION), line


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
    slot = -1
    try:
        started = time.monotonic()
        up = _devcluster("up", "--state-dir", str(state))
        took = time.monotonic() - started
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nCold `up` (warm binary cache) took {took:.1f} s.")

        record = json.loads((state / "cluster.json").read_text())
        pids = {name: c["pid"] for name, c in record["components"].items()}
        assert set(pids) == set(ORDER)
        slot = record["slot"]
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
        assert health == ["healthy"] * len(ORDER), status.stdout

        env = _devcluster("env", "--state-dir", str(state))
        assert env.stdout.strip() == f"export KUBECONFIG={state.resolve() / 'kubeconfig'}"
    finally:
        down = _devcluster("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
    assert not any(_alive(pid) for pid in pids.values())
    after = _devcluster("status", "--state-dir", str(state))
    assert after.returncode == 1
    # Nothing of the node is left: namespace, veth, files, mounts, cgroups, processes.
    assert slot >= 0
    net = NodeNetwork(slot)
    assert not net.netns_path.exists()
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert net.host_if not in links
    root = NodeLayout.of(net).root
    assert not root.exists()
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup_name(net)}"))
