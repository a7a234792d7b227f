"""Red team: runner Pods and the operator's deputy checks (issue 13, items 4, 9 and 11).

The attacker may only write flow code (and Flows and Executions) in one namespace. Each test
tries one abuse on the real dev cluster, with the real operator and real runner containers, and
asserts the refusal and that nothing changed:

* the flow's Pod runs with the restricted Pod Security Standard: uid/gid 10001, no
  capabilities, no new privileges, seccomp, a read-only root file system and only ``/tmp``
  writable;
* a Flow naming an image the operator does not allow (``busybox:latest``) fails its Execution
  with ``ImageNotAllowed`` and no Pod is ever created;
* an Execution naming a ServiceAccount that does not exist waits a bounded time
  (``KUMULUS_SERVICE_ACCOUNT_WAIT_SECONDS``, 10 s in ``tests/e2e/conftest.py``) in Pending, then
  fails with ``ServiceAccountNotFound``;
* flow code that forges its Execution's ``status.podName`` to an application's Pod and then
  cancels itself does not get the operator to delete that Pod.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.e2e.manifests import TERMINAL, events_of, execution, flow
from tests.polling import eventually

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., Any]
Apply = Callable[..., None]
WaitPhase = Callable[..., dict[str, Any]]

RUNNER_IMAGE = "ghcr.io/kumulus-dev/kumulus-runner:0.1.0"


@pytest.fixture(autouse=True)
def _operator_running(operator: Any) -> None:
    """Every test here needs the operator (fixture from tests/e2e/conftest.py)."""


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def pods_of(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    out = kubectl(
        "get", "pods", "-n", namespace, "-l", f"kumulus.dev/execution={name}", "-o", "name"
    ).stdout
    return [line for line in out.splitlines() if line]


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


# --------------------------------------------------------------------------- (a) restricted Pod

RESTRICTED = """
import errno
import os
import tempfile


def try_write(path):
    try:
        with open(path, 'w') as f:
            f.write('x')
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    return 'written'


def status_fields():
    fields = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            fields[key] = value.strip()
    return fields


def handler(system, this):
    with open('/tmp/scratch.txt', 'w') as f:
        f.write('fine')
    with open('/tmp/scratch.txt') as f:
        tmp = f.read()
    with tempfile.NamedTemporaryFile() as t:
        tempdir = os.path.dirname(t.name)
    status = status_fields()
    this.save(output_value={
        'uid': os.getuid(), 'gid': os.getgid(), 'euid': os.geteuid(), 'groups': os.getgroups(),
        'tmp': tmp, 'tempdir': tempdir, 'home': os.path.expanduser('~'),
        'etc': try_write('/etc/kumulus-was-here'),
        'var_tmp': try_write('/var/tmp/kumulus-was-here'),
        'venv': try_write('/opt/kumulus/kumulus-was-here'),
        'cap_eff': status.get('CapEff'), 'cap_bnd': status.get('CapBnd'),
        'no_new_privs': status.get('NoNewPrivs'), 'seccomp': status.get('Seccomp'),
    })
    return this.success('checked')
"""


def test_runner_pod_runs_restricted(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("restricted", RESTRICTED), namespace)
    apply(execution("restricted-1", flowRef={"name": "restricted"}), namespace)
    ex = wait_phase("restricted-1", namespace, TERMINAL, timeout=120)
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    out = ex["status"]["outputs"]
    # The image's own user and group, never root.
    assert (out["uid"], out["euid"], out["gid"]) == (10001, 10001, 10001)
    # Nothing outside /tmp is writable: the root file system is read-only (EROFS, not a
    # permission error: /var/tmp is world-writable in the image itself).
    assert out["etc"] == errno.errorcode[errno.EROFS], out
    assert out["var_tmp"] == errno.errorcode[errno.EROFS], out
    assert out["venv"] == errno.errorcode[errno.EROFS], out
    # /tmp is writable, and where temporary files and ~ go.
    assert out["tmp"] == "fine"
    assert out["tempdir"] == "/tmp"
    assert out["home"] == "/tmp"
    # No capabilities at all, no privilege escalation, a seccomp filter (mode 2).
    assert int(out["cap_eff"], 16) == 0 and int(out["cap_bnd"], 16) == 0, out
    assert out["no_new_privs"] == "1"
    assert out["seccomp"] == "2"
    # And the Pod says so, with the default requests and limits.
    [pod_ref] = pods_of(kubectl, namespace, "restricted-1")
    pod = get_json(kubectl, "-n", namespace, pod_ref)
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert container["resources"]["limits"] == {"memory": "512Mi"}


# --------------------------------------------------------------------------- (b) images

HELLO = """
def handler(system, this):
    return this.success('hello')
"""


def test_a_flow_image_that_is_not_allowed_never_runs(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(flow("other-image", HELLO, image="busybox:latest"), namespace)
    apply(execution("other-image-1", flowRef={"name": "other-image"}), namespace)
    ex = wait_phase("other-image-1", namespace, TERMINAL, timeout=60)
    assert ex["status"]["phase"] == "Failed", ex["status"]
    finished = condition(ex, "Finished")
    assert finished["reason"] == "ImageNotAllowed", ex["status"]
    assert "busybox:latest" in ex["status"]["statusMessage"]
    assert "attempts" not in ex["status"] and "podName" not in ex["status"]
    assert pods_of(kubectl, namespace, "other-image-1") == []
    warnings = [e for e in events_of(kubectl, namespace, "other-image-1") if e["type"] == "Warning"]
    assert any("ImageNotAllowed" in e["message"] for e in warnings), warnings

    # The Flow's Ready condition says why.
    def refused_ready() -> dict[str, Any] | None:
        ready = condition(get_json(kubectl, "flow", "other-image", "-n", namespace), "Ready")
        return ready if ready.get("reason") == "ImageNotAllowed" else None

    ready = eventually("the Flow's Ready condition to say ImageNotAllowed", refused_ready, 30)
    assert ready is not None
    assert ready.get("status") == "False", ready
    assert "busybox:latest" in ready["message"]
    # Nothing was created in the namespace on the flow's behalf.
    assert kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip() == ""


# --------------------------------------------------------------------------- (c) ServiceAccounts


def test_a_missing_service_account_fails_after_a_bounded_wait(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl, operator: Any
) -> None:
    wait = int(operator.env["KUMULUS_SERVICE_ACCOUNT_WAIT_SECONDS"])
    apply(
        execution(
            "ghost-sa-1",
            type="SCRIPT",
            script="def handler(system, this):\n    return this.success('ran')\n",
            podTemplate={"serviceAccountName": "ghost"},
        ),
        namespace,
    )
    started = time.monotonic()
    pending = wait_phase("ghost-sa-1", namespace, ("Pending", *TERMINAL), timeout=30)
    assert pending["status"]["phase"] == "Pending", pending["status"]

    # Pending says why, while the wait lasts.
    def waiting_condition() -> dict[str, Any] | None:
        ex = get_json(kubectl, "execution", "ghost-sa-1", "-n", namespace)
        cond = condition(ex, "Started")
        pending = ex["status"].get("phase") == "Pending"
        return cond if pending and cond.get("reason") == "ServiceAccountNotFound" else None

    cond = eventually("Started=False, ServiceAccountNotFound", waiting_condition, wait)
    assert cond is not None
    assert cond["status"] == "False" and "ghost" in cond["message"], cond
    ex = wait_phase("ghost-sa-1", namespace, TERMINAL, timeout=wait + 30)
    elapsed = time.monotonic() - started
    assert ex["status"]["phase"] == "Failed", ex["status"]
    assert condition(ex, "Finished")["reason"] == "ServiceAccountNotFound", ex["status"]
    assert "ghost" in ex["status"]["statusMessage"]
    assert elapsed >= wait - 2, f"failed after {elapsed:.1f}s, before the {wait}s wait"
    assert pods_of(kubectl, namespace, "ghost-sa-1") == []
    # The account was not created on the flow's behalf either.
    assert kubectl("get", "sa", "ghost", "-n", namespace, check=False).returncode != 0
    # The operator logged no error traceback for it.
    log = operator.log_tail(4000)
    assert not [line for line in log.splitlines() if "ghost-sa-1" in line and "ERROR" in line], log


# --------------------------------------------------------------------------- (d) confused deputy

DEPUTY = """
import os
import time

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

Execution = create_namespaced_resource('kumulus.dev', 'v1alpha1', 'Execution', 'executions')


def handler(system, this):
    name = os.environ['KUMULUS_EXECUTION']
    namespace = os.environ['KUMULUS_NAMESPACE']
    target = this.get('input_value')['target']
    client = Client(namespace=namespace)
    # Point the operator at the application's Pod, then ask it to cancel "our" Pod.
    client.patch(
        Execution.Status, name, {'status': {'podName': target}},
        namespace=namespace, patch_type=PatchType.MERGE,
    )
    client.patch(
        Execution, name, {'spec': {'desiredState': 'Cancelled'}},
        namespace=namespace, patch_type=PatchType.MERGE,
    )
    time.sleep(120)
    return this.success('was not stopped')
"""


def test_a_forged_pod_name_does_not_get_an_app_pod_deleted(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    kubectl(
        "run",
        "app",
        "-n",
        namespace,
        f"--image={RUNNER_IMAGE}",
        "--image-pull-policy=Never",
        "--restart=Never",
        "--labels=app=victim",
        "--command",
        "--",
        "python3",
        "-c",
        "import time; time.sleep(3600)",
    )
    kubectl("wait", "--for=condition=Ready", "pod/app", "-n", namespace, "--timeout=90s")
    before = get_json(kubectl, "pod", "app", "-n", namespace)

    apply(flow("deputy", DEPUTY), namespace)
    apply(execution("deputy-1", flowRef={"name": "deputy"}, inputs={"target": "app"}), namespace)
    ex = wait_phase("deputy-1", namespace, TERMINAL, timeout=120)
    time.sleep(3)  # a delete would show by now (grace period or not: deletionTimestamp)

    after = get_json(kubectl, "pod", "app", "-n", namespace)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert "deletionTimestamp" not in after["metadata"], after["metadata"]
    assert after["status"]["phase"] == "Running"
    if ex["status"].get("podName") == "app":
        # The forged status got through (today's runner RBAC allows it): the operator refused.
        assert condition(ex, "Finished")["reason"] == "PodNotOwned", ex["status"]
        assert ex["status"]["phase"] in ("Failed", "Cancelled")
        warnings = [e for e in events_of(kubectl, namespace, "deputy-1") if e["type"] == "Warning"]
        assert any("app" in e["message"] for e in warnings), warnings
    else:
        # The forgery itself was refused (e.g. an admission policy): the flow failed on it.
        assert ex["status"]["phase"] == "Failed", ex["status"]

    # The attacker's own Pod does not outlive its Execution.
    def own_pod_stopped() -> bool:
        own = kubectl("get", "pod", "deputy-1-a1", "-n", namespace, "-o", "json", check=False)
        if own.returncode != 0:
            return True
        body = json.loads(own.stdout)
        ended = body["status"].get("phase") in ("Succeeded", "Failed")
        return bool(body["metadata"].get("deletionTimestamp")) or ended

    eventually("the attacker's runner Pod to stop", own_pod_stopped, timeout=60, every=1)
