"""Red team: the operator and the runner check what they trust (issue 13, "checks what it trusts").

The attacker may only write flow code in one namespace; each attack below runs as flow code with
the runner Pod's own identity (lightkube with the Pod's ServiceAccount) against the real API
server, and each test asserts the refusal and that nothing changed:

* (a) a child's deterministic name (``<parent>-<attempt>-<seq>``) squatted by an Execution the
  parent does not own, with a forged finished status: the parent's ``this.flow`` call fails with
  ``flow_api.ChildNameTaken``, the squatter is not adopted, not patched and not listed in the
  parent's ``status.children``, and its forged outputs never reach the parent;
* (b) a Schedule's run names (``<schedule>-<unix seconds>``) squatted ahead of time: the
  Schedule posts a Warning Event ``RunNameTaken`` naming each taken run and sets its
  ``RunStarted`` condition to False with that reason; the squatters are not counted as runs
  (``concurrencyPolicy: Forbid`` is not blocked by them, they are not in ``status.active``, not
  cancelled, not pruned), and later instants run as usual;
* (c) the ``codeFrom`` ConfigMap of a Ready Flow patched by flow code: a run whose Pod was made
  before the operator's re-check refuses the new code (``CodeChanged``), one made after runs it;
  whichever happens, the code that ran is the code whose hash the Pod was given, and once the
  Flow's ``status.codeHash`` shows the new hash new runs run the new code.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from tests.e2e.manifests import API, TERMINAL, events_of, execution, flow
from tests.polling import eventually

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., Any]
Apply = Callable[..., None]
WaitPhase = Callable[..., dict[str, Any]]


@pytest.fixture(autouse=True)
def _operator_running(operator: Any) -> None:
    """Every test here needs the operator (fixture from tests/e2e/conftest.py)."""


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def code_hash(code: str) -> str:
    return "sha256:" + hashlib.sha256(code.encode()).hexdigest()


# The attacker's tools: create Executions and patch their status or ConfigMaps, as flow code.
SQUAT = """
import os

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

Execution = create_namespaced_resource('kumulus.dev', 'v1alpha1', 'Execution', 'executions')


def handler(system, this):
    namespace = os.environ['KUMULUS_NAMESPACE']
    client = Client(namespace=namespace)
    made = []
    for squat in this.get('input_value')['squats']:
        body = Execution.from_dict({
            'apiVersion': 'kumulus.dev/v1alpha1',
            'kind': 'Execution',
            'metadata': {'name': squat['name'], 'labels': squat['labels']},
            'spec': {'type': 'FLOW', 'flowRef': {'name': 'nothing'}, 'run': False},
        })
        client.create(body)
        if squat.get('status'):
            client.patch(
                Execution.Status, squat['name'], {'status': squat['status']},
                namespace=namespace, patch_type=PatchType.MERGE,
            )
        made.append(squat['name'])
    this.save(output_value={'squatted': made})
"""


def squat(
    apply: Apply, wait_phase: WaitPhase, namespace: str, squats: list[dict[str, Any]]
) -> None:
    """Run the attacker's flow; it creates ``squats`` with the runner's identity."""
    apply(
        [
            flow("squatter", SQUAT),
            execution("squat-1", flowRef={"name": "squatter"}, inputs={"squats": squats}),
        ],
        namespace,
    )
    done = wait_phase("squat-1", namespace, TERMINAL, timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["outputs"]["squatted"] == [s["name"] for s in squats]


# --------------------------------------------------------------------------- (a) child names


def test_a_squatted_child_name_is_not_adopted(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    forged = {"phase": "Succeeded", "outputs": {"forged": True}, "message": "forged"}
    squat(
        apply,
        wait_phase,
        namespace,
        [{"name": "victim-1-1", "labels": {"kumulus.dev/parent": "victim"}, "status": forged}],
    )
    before = get_json(kubectl, "execution", "victim-1-1", "-n", namespace)
    assert before["status"]["outputs"] == {"forged": True}
    apply(
        [
            flow("child", "def handler(system, this):\n    this.save(output_value={'real': 1})\n"),
            flow(
                "parent",
                """
                import flow_api


                def handler(system, this):
                    try:
                        child = this.flow('child')
                    except flow_api.ChildNameTaken as exc:
                        this.save(output_value={'refused': str(exc)})
                        return this.error('refused')
                    this.save(output_value={'adopted': child.get('output_value')})
                """,
            ),
            execution("victim", flowRef={"name": "parent"}),
        ],
        namespace,
    )
    victim = wait_phase("victim", namespace, TERMINAL, timeout=120)
    status = victim["status"]
    assert status["phase"] == "Failed", status
    refused = status["outputs"]["refused"]
    assert f"{namespace}/victim-1-1 is taken" in refused and "does not own" in refused
    assert "adopted" not in status["outputs"]  # the forged outputs never reached the parent
    assert not status.get("children"), status  # the squatter is not listed as a child
    after = get_json(kubectl, "execution", "victim-1-1", "-n", namespace)
    # Nothing changed on the squatter: not adopted, not started, not cancelled.
    assert after["metadata"].get("ownerReferences") is None
    assert after["spec"] == before["spec"]
    assert after["status"] == before["status"]


# --------------------------------------------------------------------------- (b) schedule runs

PERIOD = 5


def test_a_squatted_schedule_run_name_is_reported_and_not_counted(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    # Squat three instants far enough ahead that the attacker's Pod has run before them.
    first = math.ceil((time.time() + 40) / PERIOD) * PERIOD
    instants = [first + i * PERIOD for i in range(3)]
    names = [f"ticker-{t}" for t in instants]
    squat(
        apply,
        wait_phase,
        namespace,
        [
            {
                "name": n,
                "labels": {"kumulus.dev/schedule": "ticker", "kumulus.dev/scheduled-time": str(t)},
            }
            for n, t in zip(names, instants, strict=True)
        ],
    )
    assert time.time() < instants[0] - 2, "the attacker's flow took too long to squat ahead"
    before = {n: get_json(kubectl, "execution", n, "-n", namespace) for n in names}
    apply(
        [
            flow("tick", "def handler(system, this):\n    return this.success('tick')\n"),
            {
                "apiVersion": API,
                "kind": "Schedule",
                "metadata": {"name": "ticker"},
                "spec": {
                    "flowRef": {"name": "tick"},
                    "schedule": f"*/{PERIOD} * * * * *",
                    "concurrencyPolicy": "Forbid",
                    "catchUp": "None",
                    "successfulHistoryLimit": 10,
                },
            },
        ],
        namespace,
    )

    def taken_condition() -> dict[str, Any] | None:
        sched = get_json(kubectl, "schedule", "ticker", "-n", namespace)
        cond = condition(sched, "RunStarted")
        if cond.get("status") == "False" and cond.get("reason") == "RunNameTaken":
            return cond
        return None

    cond = eventually(
        "RunStarted=False/RunNameTaken", taken_condition, timeout=instants[-1] - time.time() + 30
    )
    assert any(n in cond["message"] for n in names), cond
    assert (
        condition(get_json(kubectl, "schedule", "ticker", "-n", namespace), "Ready")["status"]
        == "True"
    )

    # Each squatted instant the Schedule fired is reported. The first may instead be skipped by
    # Forbid if the run before it is still running (then it never fires, correctly); the later
    # two always fire, as nothing of the Schedule runs then.
    expected = set(names[1:])

    def warned() -> set[str]:
        found = set()
        for ev in events_of(kubectl, namespace, "ticker"):
            if ev.get("reason") == "RunNameTaken" and ev.get("type") == "Warning":
                found |= {n for n in names if n in ev.get("message", "")}
        return found if found >= expected else set()

    eventually("a RunNameTaken Warning Event naming each squatted run", warned, timeout=60)

    # The next instant after the squatted ones runs: Forbid was not blocked by the squatters.
    after_name = f"ticker-{instants[-1] + PERIOD}"
    ran = wait_phase(after_name, namespace, TERMINAL, timeout=60)
    assert ran["status"]["phase"] == "Succeeded", ran["status"]
    owners = ran["metadata"]["ownerReferences"]
    assert [o["kind"] for o in owners] == ["Schedule"]
    sched = get_json(kubectl, "schedule", "ticker", "-n", namespace)
    active = {a["name"] for a in sched["status"].get("active") or []}
    assert not active & set(names), sched["status"]
    eventually(
        "RunStarted=True after a run started",
        lambda: (
            condition(get_json(kubectl, "schedule", "ticker", "-n", namespace), "RunStarted").get(
                "status"
            )
            == "True"
        ),
        timeout=30,
    )
    # The squatters are untouched: still there (not pruned), not cancelled, not started.
    for n in names:
        now = get_json(kubectl, "execution", n, "-n", namespace)
        assert now["spec"] == before[n]["spec"], now["spec"]
        assert now["metadata"].get("ownerReferences") is None
        assert (now.get("status") or {}).get("attempts") is None, now["status"]


# --------------------------------------------------------------------------- (c) code hash

OLD = "def handler(system, this):\n    return this.success('old code')\n"
NEW = "def handler(system, this):\n    return this.success('new code')\n"

PATCH_CODE = """
import os

from lightkube import Client
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

import flow_api


def handler(system, this):
    namespace = os.environ['KUMULUS_NAMESPACE']
    new = this.get('input_value')['code']
    Client(namespace=namespace).patch(
        ConfigMap, 'victim-code', {'data': {'main.py': new}},
        namespace=namespace, patch_type=PatchType.MERGE,
    )
    # A run of the victim right after the edit: before or after the operator's re-check.
    child = this.flow('victim', wait=False)
    this.save(output_value={'child': child.get('id')})
"""


def pod_code_hash(kubectl: Kubectl, namespace: str, execution_name: str) -> str | None:
    pod = get_json(kubectl, "pod", f"{execution_name}-a1", "-n", namespace)
    for env in pod["spec"]["containers"][0]["env"]:
        if env["name"] == "KUMULUS_CODE_HASH":
            return str(env["value"])
    return None


def test_code_patched_behind_the_flows_back_runs_only_once_checked(
    namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "victim-code"},
                "data": {"main.py": OLD},
            },
            {
                "apiVersion": API,
                "kind": "Flow",
                "metadata": {"name": "victim"},
                "spec": {
                    "codeFrom": {"configMapKeyRef": {"name": "victim-code", "key": "main.py"}}
                },
            },
        ],
        namespace,
    )

    def flow_hash() -> str:
        body = get_json(kubectl, "flow", "victim", "-n", namespace)
        if condition(body, "Ready").get("status") != "True":
            return ""
        return str((body.get("status") or {}).get("codeHash") or "")

    assert eventually("the Flow Ready with its code hash", flow_hash, timeout=60) == code_hash(OLD)
    apply(execution("before-1", flowRef={"name": "victim"}), namespace)
    first = wait_phase("before-1", namespace, TERMINAL, timeout=120)
    assert (
        first["status"]["phase"] == "Succeeded" and "old code" in first["status"]["statusMessage"]
    ), first["status"]

    apply(
        [
            flow("editor", PATCH_CODE),
            execution("edit-1", flowRef={"name": "editor"}, inputs={"code": NEW}),
        ],
        namespace,
    )
    edit = wait_phase("edit-1", namespace, TERMINAL, timeout=120)
    assert edit["status"]["phase"] == "Succeeded", edit["status"]
    child = edit["status"]["outputs"]["child"]
    raced = wait_phase(child, namespace, TERMINAL, timeout=120)
    given = pod_code_hash(kubectl, namespace, child)
    # Either order of the race, the code that ran is the code whose hash the Pod was given.
    if raced["status"]["phase"] == "Succeeded":
        assert given == code_hash(NEW), given
        assert "new code" in raced["status"]["statusMessage"]
    else:
        assert given == code_hash(OLD), given
        assert raced["status"]["phase"] == "Failed", raced["status"]
        assert condition(raced, "Finished")["reason"] == "CodeChanged", raced["status"]
        assert "again" in raced["status"]["statusMessage"]

    # The end state: the operator's re-check records the new hash (with an Event), and new
    # runs run the new code.
    eventually("the Flow's new code hash", lambda: flow_hash() == code_hash(NEW), timeout=30)
    eventually(
        "a CodeChanged Event on the Flow",
        lambda: [
            e for e in events_of(kubectl, namespace, "victim") if e["reason"] == "CodeChanged"
        ],
        timeout=30,
    )
    apply(execution("after-1", flowRef={"name": "victim"}), namespace)
    after = wait_phase("after-1", namespace, TERMINAL, timeout=120)
    assert after["status"]["phase"] == "Succeeded", after["status"]
    assert "new code" in after["status"]["statusMessage"]
    assert pod_code_hash(kubectl, namespace, "after-1") == code_hash(NEW)
