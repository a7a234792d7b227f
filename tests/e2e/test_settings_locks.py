"""Settings and locks end to end: real runner Pods (RBAC of ``kumulus-runner``), real Leases.

Ordering between executions is asserted through what they recorded (a setting used as a log),
never through durations.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap

from kumulus.runner.settings import configmap_name, lease_name

pytestmark = pytest.mark.e2e

TERMINAL = ("Succeeded", "Failed", "Cancelled")


@pytest.fixture(autouse=True)
def _operator_running(operator: Any) -> None:
    """Every test here needs the operator (fixture from tests/e2e/conftest.py)."""


def flow(name: str, code: str) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Flow",
        "metadata": {"name": name},
        "spec": {"code": textwrap.dedent(code)},
    }


def execution(name: str, flow_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": {"type": "FLOW", "flowRef": {"name": flow_name}},
    }


def setting_value(client: Client, namespace: str, setting: str) -> Any:
    cm = client.get(ConfigMap, configmap_name(setting), namespace=namespace)
    return json.loads((cm.data or {})["value"])


def wait_for_setting(client: Client, namespace: str, setting: str, timeout: float = 120) -> Any:
    """Poll until the setting exists (a flow reached a point); return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return setting_value(client, namespace, setting)
        except ApiError as err:
            if err.status.code != 404:
                raise
        time.sleep(0.25)
    pytest.fail(f"setting {setting!r} did not appear in {namespace} within {timeout}s")


def test_settings_saved_by_one_execution_are_read_by_another(
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    client: Client,
    namespace: str,
) -> None:
    value = {"version": [1, 2, 3], "name": "ünïcode", "on": True, "none": None, "n": 1.5}
    apply(
        [
            flow(
                "writer",
                f"""
                def handler(system, this):
                    s = system.setting('release config')
                    this.set_output('existed_before', s.exists())
                    s.save(value={value!r})
                    this.set_output('read_back', s.get('value'))
                """,
            ),
            flow(
                "reader",
                """
                def handler(system, this):
                    s = system.setting('release config')
                    this.set_output('exists', s.exists())
                    this.set_output('value', s.get('value'))
                    this.set_output('missing_exists', system.setting('never saved').exists())
                """,
            ),
            execution("write", "writer"),
        ],
        namespace,
    )
    written = wait_phase("write", namespace, TERMINAL)
    assert written["status"]["phase"] == "Succeeded", written["status"]
    assert written["status"]["outputs"] == {"existed_before": False, "read_back": value}

    apply(execution("read", "reader"), namespace)
    read = wait_phase("read", namespace, TERMINAL)
    assert read["status"]["phase"] == "Succeeded", read["status"]
    assert read["status"]["outputs"] == {"exists": True, "value": value, "missing_exists": False}

    cm = client.get(ConfigMap, configmap_name("release config"), namespace=namespace)
    assert cm.metadata is not None
    assert cm.metadata.labels == {
        "app.kubernetes.io/managed-by": "kumulus",
        "kumulus.dev/setting": "true",
    }
    assert (cm.metadata.annotations or {})["kumulus.dev/setting-name"] == "release config"
    assert json.loads((cm.data or {})["value"]) == value


HOLDER = """
def handler(system, this):
    lock = system.setting('deploy lock')
    lock.acquire()
    log = system.setting('lock log')
    log.save(value=['A:enter'])
    arrived = system.setting('b arrived')
    for _ in range(1200):
        if arrived.exists():
            break
        this.sleep(0.1)
    else:
        return this.error('B never arrived')
    this.sleep(1)  # B is blocked in acquire() now
    log.save(value=log.load('value') + ['A:exit'])
    lock.release()
"""

CONTENDER = """
import flow_api

def handler(system, this):
    lock = system.setting('deploy lock')
    try:
        lock.acquire(timeout=1)
        this.set_output('timed_out', False)
    except flow_api.LockTimeoutError as exc:
        this.set_output('timed_out', True)
        this.set_output('error', str(exc))
    system.setting('b arrived').save(value=True)
    lock.acquire()
    log = system.setting('lock log')
    log.save(value=log.load('value') + ['B:enter'])
    log.save(value=log.load('value') + ['B:exit'])
    # no release(): the runner releases the lock when the flow ends
"""


def test_two_executions_contend_for_one_lock(
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    client: Client,
    namespace: str,
) -> None:
    apply(
        [flow("holder", HOLDER), flow("contender", CONTENDER), execution("a", "holder")], namespace
    )
    assert wait_for_setting(client, namespace, "lock log") == ["A:enter"]  # a holds the lock
    apply(execution("b", "contender"), namespace)

    a = wait_phase("a", namespace, TERMINAL, timeout=180)
    b = wait_phase("b", namespace, TERMINAL, timeout=180)
    assert a["status"]["phase"] == "Succeeded", a["status"]
    assert b["status"]["phase"] == "Succeeded", b["status"]
    # b could not get the lock while a held it (LockTimeoutError), then got it after a released.
    assert b["status"]["outputs"]["timed_out"] is True
    assert "held by Execution a" in b["status"]["outputs"]["error"]
    assert setting_value(client, namespace, "lock log") == [
        "A:enter",
        "A:exit",
        "B:enter",
        "B:exit",
    ]

    lease = client.get(Lease, lease_name("deploy lock"), namespace=namespace)
    assert lease.spec is not None
    assert lease.spec.holderIdentity is None  # b's runner released it at the end
    assert lease.spec.leaseTransitions == 1
    assert lease.metadata is not None and lease.metadata.labels is not None
    assert lease.metadata.labels["kumulus.dev/lock"] == "true"
    for name in ("a", "b"):
        annotations = wait_phase(name, namespace, TERMINAL)["metadata"]["annotations"]
        assert annotations["kumulus.dev/uses-locks"] == "true"


STUBBORN_HOLDER = """
import signal

def handler(system, this):
    system.setting('cancel lock').acquire()
    # Like a runner that cannot clean up (OOM, SIGKILL): ignore the SIGTERM of the cancel, so
    # the Pod is killed after its grace period and only the operator can release the lock.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    system.setting('holding').save(value=True)
    this.sleep(600)
"""

WAITER = """
def handler(system, this):
    system.setting('waiter started').save(value=True)
    system.setting('cancel lock').acquire(timeout=300)
    this.set_output('got_the_lock', True)
"""


def test_lock_of_a_cancelled_holder_is_released_by_the_operator(
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    kubectl: Callable[..., Any],
    client: Client,
    namespace: str,
    operator: Any,
) -> None:
    apply(
        [flow("stubborn", STUBBORN_HOLDER), flow("waiter", WAITER), execution("h", "stubborn")],
        namespace,
    )
    wait_for_setting(client, namespace, "holding")
    apply(execution("w", "waiter"), namespace)
    wait_for_setting(client, namespace, "waiter started")
    kubectl(
        "patch",
        "execution",
        "h",
        "-n",
        namespace,
        "--type",
        "merge",
        "-p",
        '{"spec":{"desiredState":"Cancelled"}}',
    )
    h = wait_phase("h", namespace, TERMINAL, timeout=120)
    assert h["status"]["phase"] == "Cancelled", h["status"]
    w = wait_phase("w", namespace, TERMINAL, timeout=180)
    assert w["status"]["phase"] == "Succeeded", w["status"]
    assert w["status"]["outputs"] == {"got_the_lock": True}
    released = (
        f"Released Lease {namespace}/{lease_name('cancel lock')} "
        f"held by finished Execution {namespace}/h."
    )
    assert released in operator.log_path.read_text(errors="replace")


def test_lock_timeout_error_when_held(
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    client: Client,
    namespace: str,
) -> None:
    """A flow that does not catch LockTimeoutError fails with it (the holder is not a flow)."""
    # Applied as YAML: lightkube's typed Lease drops the microseconds the API requires.
    apply(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": lease_name("busy"), "labels": {"kumulus.dev/lock": "true"}},
            "spec": {
                "holderIdentity": "someone-else",
                "leaseDurationSeconds": 3600,
                "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            },
        },
        namespace,
    )
    apply(
        [
            flow(
                "impatient",
                """
                def handler(system, this):
                    system.setting('busy').acquire(timeout=2)
                """,
            ),
            execution("i", "impatient"),
        ],
        namespace,
    )
    ex = wait_phase("i", namespace, TERMINAL)
    assert ex["status"]["phase"] == "Failed"
    assert "LockTimeoutError" in ex["status"]["statusMessage"]
    assert "held by Execution someone-else" in ex["status"]["statusMessage"]
    lease = client.get(Lease, lease_name("busy"), namespace=namespace)
    assert lease.spec is not None and lease.spec.holderIdentity == "someone-else"
