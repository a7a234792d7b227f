"""The runner runs only the code the operator checked (``KUMULUS_CODE_HASH``, issue 13).

The operator records the hash of a Flow's code in ``status.codeHash`` when it checks the Flow
and gives it to each runner Pod; code changed behind the Flow's back (a patched ``codeFrom``
ConfigMap) is refused with reason ``CodeChanged`` and exit code 2, and the operator takes that
reason as the Execution's. The race between a ConfigMap edit and the operator's re-check is
played here step by step: whatever the order, the code that runs is the code whose hash the Pod
was given.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from kumulus.domain import flowcode, lifecycle, podspec
from kumulus.domain.outcome import PodView, pod_outcome
from kumulus.domain.settings import Settings
from kumulus.domain.timeutil import parse_time
from kumulus.runner.fake import FakeClient
from kumulus.runner.main import EXIT_NOT_STARTED, EXIT_SUCCESS, run

pytestmark = pytest.mark.unit

ENV = {"KUMULUS_EXECUTION": "ex", "KUMULUS_NAMESPACE": "default", "KUMULUS_ATTEMPT": "1"}
OLD = "def handler(system, this):\n    this.success('old code')\n"
NEW = "def handler(system, this):\n    this.success('new code')\n"


def code_from_flow(fake: FakeClient, code: str) -> None:
    fake.configmaps["flow-code"] = {"metadata": {"name": "flow-code"}, "data": {"main.py": code}}
    fake.flows["f"] = {
        "metadata": {"name": "f"},
        "spec": {"codeFrom": {"configMapKeyRef": {"name": "flow-code", "key": "main.py"}}},
    }


def run_flow(fake: FakeClient, expected: str | None) -> tuple[int, dict[str, Any]]:
    fake.add_execution("ex", {"type": "FLOW", "flowRef": {"name": "f"}})
    env = dict(ENV)
    if expected is not None:
        env["KUMULUS_CODE_HASH"] = expected
    rc = run(env, fake, out=io.StringIO(), watch_self=False)
    result: dict[str, Any] = fake.executions["ex"]["status"]["runner"]["result"]
    return rc, result


def test_the_checked_code_runs() -> None:
    fake = FakeClient()
    code_from_flow(fake, OLD)
    rc, result = run_flow(fake, flowcode.code_hash(OLD))
    assert rc == EXIT_SUCCESS, result
    assert result["message"] == "old code"
    assert "reason" not in result


def test_code_changed_after_the_check_is_refused() -> None:
    fake = FakeClient()
    code_from_flow(fake, NEW)  # the ConfigMap was patched after the operator checked OLD
    rc, result = run_flow(fake, flowcode.code_hash(OLD))
    assert rc == EXIT_NOT_STARTED
    assert result["status"] == "ENDED_ERROR"
    assert result["reason"] == "CodeChanged"
    message = result["message"]
    assert flowcode.code_hash(OLD) in message and flowcode.code_hash(NEW) in message
    assert "did not run" in message and "again" in message
    # The operator reads the refusal as reason CodeChanged, not retried.
    pod = PodView(name="ex-a1", phase="Failed", exit_code=2)
    outcome = pod_outcome(pod, {"attempt": 1, "state": "ended", "result": result}, None)
    assert outcome is not None
    assert (outcome.phase, outcome.reason) == ("Failed", "CodeChanged")
    assert not outcome.retryable
    assert "did not run" in outcome.message


def test_inline_code_is_checked_too() -> None:
    fake = FakeClient()
    fake.add_flow("f", NEW)
    rc, result = run_flow(fake, flowcode.code_hash(OLD))
    assert (rc, result["reason"]) == (EXIT_NOT_STARTED, "CodeChanged")


def test_no_expected_hash_means_nothing_to_compare() -> None:
    # A runner started by hand (or by an operator that gives no hash) runs what it reads.
    fake = FakeClient()
    code_from_flow(fake, NEW)
    rc, result = run_flow(fake, None)
    assert (rc, result["message"]) == (EXIT_SUCCESS, "new code")


def test_script_executions_carry_their_code_and_are_not_compared() -> None:
    fake = FakeClient()
    fake.add_execution("ex", {"type": "SCRIPT", "script": NEW})
    env = {**ENV, "KUMULUS_CODE_HASH": flowcode.code_hash(OLD)}
    assert run(env, fake, out=io.StringIO(), watch_self=False) == EXIT_SUCCESS


def test_only_a_known_runner_reason_becomes_the_execution_reason() -> None:
    pod = PodView(name="ex-a1", phase="Failed", exit_code=2)
    runner = {"result": {"status": "ENDED_ERROR", "message": "x", "reason": "Anything"}}
    outcome = pod_outcome(pod, runner, None)
    assert outcome is not None and outcome.reason == "RunnerError"


# --------------------------------------------------------------------------- the operator side


def checked(flow: dict[str, Any], code: str, generation: int = 1) -> dict[str, Any]:
    """The Flow as the operator's check leaves it (``status.codeHash`` for ``generation``)."""
    return {
        **flow,
        "status": {"observedGeneration": generation, "codeHash": flowcode.code_hash(code)},
    }


FLOW: dict[str, Any] = {
    "metadata": {"name": "f", "generation": 1},
    "spec": {"codeFrom": {"configMapKeyRef": {"name": "flow-code", "key": "main.py"}}},
}
EXECUTION: dict[str, Any] = {
    "metadata": {"name": "ex", "namespace": "default", "uid": "u", "generation": 1},
    "spec": {"type": "FLOW", "flowRef": {"name": "f"}},
}


def env_of(manifest: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0]["env"]}


def test_the_pod_gets_the_hash_the_operator_recorded_and_a_template_cannot_set_it() -> None:
    execution = {
        **EXECUTION,
        "spec": {
            **EXECUTION["spec"],
            "podTemplate": {"env": [{"name": "KUMULUS_CODE_HASH", "value": "sha256:forged"}]},
        },
    }
    env = env_of(podspec.build_pod(execution, checked(FLOW, OLD), 1, Settings()))
    assert env["KUMULUS_CODE_HASH"] == flowcode.code_hash(OLD)
    names = [
        e["name"]
        for e in podspec.build_pod(execution, checked(FLOW, OLD), 1, Settings())["spec"][
            "containers"
        ][0]["env"]
    ]
    assert names.count("KUMULUS_CODE_HASH") == 1
    # SCRIPT executions carry their code: no hash.
    script = {**EXECUTION, "spec": {"type": "SCRIPT", "script": NEW}}
    assert "KUMULUS_CODE_HASH" not in env_of(podspec.build_pod(script, None, 1, Settings()))


def test_a_flow_checked_for_an_older_generation_has_no_checked_hash() -> None:
    assert flowcode.checked_hash(checked(FLOW, OLD)) == flowcode.code_hash(OLD)
    edited = {**checked(FLOW, OLD), "metadata": {"name": "f", "generation": 2}}
    assert flowcode.checked_hash(edited) is None
    assert flowcode.checked_hash(FLOW) is None  # never checked
    not_found = {**FLOW, "status": {"observedGeneration": 1, "codeHash": ""}}
    assert flowcode.checked_hash(not_found) is None
    assert flowcode.checked_hash(None) is None


def test_an_execution_waits_for_the_check_before_its_pod_exists() -> None:
    now = parse_time("2025-01-01T12:00:00Z")
    assert now is not None
    actions = lifecycle.decide(EXECUTION, None, [], now, flow=FLOW, settings=Settings())
    assert not [a for a in actions if isinstance(a, lifecycle.CreatePod)]
    patch = next(a.patch for a in actions if isinstance(a, lifecycle.PatchStatus))
    assert patch["phase"] == "Pending"
    assert [c["reason"] for c in patch["conditions"]] == ["FlowNotChecked"]
    # Once checked, it starts with the hash.
    actions = lifecycle.decide(
        EXECUTION, None, [], now, flow=checked(FLOW, OLD), settings=Settings()
    )
    pods = [a for a in actions if isinstance(a, lifecycle.CreatePod)]
    assert len(pods) == 1
    assert env_of(pods[0].manifest)["KUMULUS_CODE_HASH"] == flowcode.code_hash(OLD)


@pytest.mark.parametrize("recheck_first", [False, True], ids=["pod-first", "recheck-first"])
def test_the_code_that_runs_always_matches_the_hash_the_pod_was_given(
    recheck_first: bool,
) -> None:
    """A user edits the ConfigMap (OLD -> NEW) while an Execution starts: either order."""
    fake = FakeClient()
    code_from_flow(fake, OLD)
    flow = checked(FLOW, OLD)
    fake.configmaps["flow-code"]["data"]["main.py"] = NEW  # the edit
    if recheck_first:
        flow = checked(FLOW, NEW)  # the operator's periodic re-check ran before the Pod
    manifest = podspec.build_pod(EXECUTION, flow, 1, Settings())
    given = env_of(manifest)["KUMULUS_CODE_HASH"]
    rc, result = run_flow(fake, given)
    if recheck_first:
        assert (rc, result["message"]) == (EXIT_SUCCESS, "new code")
    else:
        assert (rc, result["reason"]) == (EXIT_NOT_STARTED, "CodeChanged")
        # After the re-check, a new run gets the new hash and runs the new code.
        fake2 = FakeClient()
        code_from_flow(fake2, NEW)
        again = env_of(podspec.build_pod(EXECUTION, checked(FLOW, NEW), 1, Settings()))
        rc2, result2 = run_flow(fake2, again["KUMULUS_CODE_HASH"])
        assert (rc2, result2["message"]) == (EXIT_SUCCESS, "new code")
