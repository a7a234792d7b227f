"""Pure rules of Connections and CONNECTION executions: merging, redaction, decisions."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kumulus.domain import connection as rules
from kumulus.domain.connection import Decision, SecretState

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
ME = "host-a/100-abcd"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def execution(
    *,
    phase: str | None = None,
    run: bool = True,
    desired: str = "Running",
    start: bool = False,
    claim: str | None = None,
    deadline: datetime | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if start:
        status["startTime"] = "2025-01-01T11:59:00Z"
    if claim:
        status["executor"] = {
            "id": claim,
            "deadline": (deadline or NOW + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    return {
        "metadata": {"name": "call", "namespace": "ns", "generation": 1},
        "spec": {
            "type": "CONNECTION",
            "run": run,
            "desiredState": desired,
            "connection": {"name": "api", "inputs": inputs or {}},
        },
        "status": status,
    }


def decide(
    body: dict[str, Any], *, local: bool = False, queued: bool = False, alive: bool = False
) -> Decision:
    decision, _ = rules.decide_call(
        rules.CallView.from_dict(body), local=local, queued=queued, claimer_alive=alive, now=NOW
    )
    return decision


# --------------------------------------------------------------------------- inputs


def test_call_inputs_override_secret_which_overrides_values() -> None:
    merged = rules.merge_inputs(
        {"url": "http://a", "username": "stored", "headers": {"A": "1"}},
        {"username": "from-secret", "password": "pw"},
        {"username": "per-call", "headers": {"B": "2"}},
    )
    assert merged == {
        "url": "http://a",
        "username": "per-call",
        "password": "pw",
        "headers": {"B": "2"},  # top-level keys: a call's dict replaces the stored one
    }


def test_timeout_precedence_input_then_spec_then_default() -> None:
    assert rules.call_timeout({"timeout": "2.5", "x": 1}, 9, 30.0) == (2.5, {"x": 1})
    assert rules.call_timeout({"x": 1}, 9, 30.0) == (9.0, {"x": 1})
    assert rules.call_timeout({}, None, 30.0) == (30.0, {})


@pytest.mark.parametrize("bad", [0, -1, "soon", True, float("inf")])
def test_bad_timeouts_are_input_errors(bad: object) -> None:
    with pytest.raises(rules.InputError, match="timeout"):
        rules.call_timeout({"timeout": bad}, None, 30.0)


def test_decode_secret_and_bad_keys_name_only_the_key() -> None:
    assert rules.decode_secret({"password": b64("pässword")}) == {"password": "pässword"}
    assert rules.decode_secret(None) == {}
    raw = base64.b64encode(b"\xff\xfe-secret-bytes").decode()
    with pytest.raises(rules.InputError) as err:
        rules.decode_secret({"key": raw})
    assert "key" in str(err.value)
    assert "secret-bytes" not in str(err.value)


# --------------------------------------------------------------------------- redaction


def test_secret_texts_cover_encoded_forms_and_secret_keys() -> None:
    texts = rules.secret_texts(
        {"password": "p@ss word/1"}, {"token": "tok-123", "user": "bob"}, ["token", "missing"]
    )
    assert "p@ss word/1" in texts
    assert "p%40ss%20word%2F1" in texts  # URL-quoted
    assert "p%40ss+word%2F1" in texts  # form-quoted
    assert "tok-123" in texts
    assert "bob" not in texts  # not a secret key, not from the Secret
    assert list(texts) == sorted(texts, key=lambda t: (-len(t), t))


def test_short_values_are_not_scrubbed() -> None:
    assert rules.secret_texts({"port": "22"}) == ()


def test_redact_text_and_json() -> None:
    texts = rules.secret_texts({"password": "hunter22"})
    assert rules.redact("login with hunter22 failed", texts) == "login with *** failed"
    value = {"a": ["x hunter22", {"hunter22": 1}], "n": 5, "b": None}
    assert rules.redact_json(value, texts) == {"a": ["x ***", {"***": 1}], "n": 5, "b": None}


def test_a_secret_echoed_back_reversed_is_scrubbed() -> None:
    texts = rules.secret_texts({"bearer_token": "tok-4f2a9c"}, {"password": "pw-77x"}, ["password"])
    echoed = "got c9a2f4-kot and x77-wp back"
    assert rules.redact(echoed, texts) == "got *** and *** back"
    # The documented limit: a split secret is not found (the pinned target is the control).
    assert rules.redact("tok-4f2 a9c", texts) == "tok-4f2 a9c"


def test_multiline_secret_lines_are_scrubbed_one_by_one() -> None:
    key = "-----BEGIN KEY-----\nAAAABBBBCCCCDDDDEEEE\nFFFFGGGGHHHHIIIIJJJJ\n-----END KEY-----"
    texts = rules.secret_texts({"key": key})
    assert "FFFFGGGGHHHHIIIIJJJJ" in texts
    assert rules.redact("bad line FFFFGGGGHHHHIIIIJJJJ", texts) == "bad line ***"
    assert rules.redact("reversed JJJJIIIIHHHHGGGGFFFF", texts) == "reversed ***"


def test_check_outputs() -> None:
    assert rules.check_outputs({"a": 1}, 100) is None
    assert rules.check_outputs(["x"], 100) == (
        "InvalidOutputs",
        "the connector returned list, not a dict",
    )
    bad = rules.check_outputs({"a": object()}, 100)
    assert bad is not None and bad[0] == "InvalidOutputs"
    big = rules.check_outputs({"a": "x" * 200}, 100)
    assert big is not None and big[0] == "OutputTooLarge"


# --------------------------------------------------------------------------- Ready


def test_ready_reasons_in_order() -> None:
    base: dict[str, Any] = {"type_": "REST", "secret_name": "s"}
    unknown = rules.connection_ready(
        **base, type_problem=("UnknownType", "no"), secret_state=SecretState.MISSING
    )
    assert (unknown.status, unknown.reason) == (False, "UnknownType")
    missing = rules.connection_ready(**base, type_problem=None, secret_state=SecretState.MISSING)
    assert (missing.status, missing.reason) == (False, "SecretNotFound")
    assert "Secret s does not exist" in missing.message
    forbidden = rules.connection_ready(
        **base, type_problem=None, secret_state=SecretState.FORBIDDEN, secret_detail="403"
    )
    assert forbidden.reason == "SecretForbidden"
    invalid = rules.connection_ready(
        **base, type_problem=None, secret_state=SecretState.PRESENT, problems=["bad port", "x"]
    )
    assert (invalid.reason, invalid.message) == ("InvalidValues", "bad port; x")
    ok = rules.connection_ready(**base, type_problem=None, secret_state=SecretState.PRESENT)
    assert (ok.status, ok.reason) == (True, "Valid")


def test_status_patch_only_when_changed() -> None:
    body: dict[str, Any] = {"metadata": {"generation": 2}, "status": {}}
    ready = rules.Ready(True, "Valid", "ok")
    patch = rules.connection_status_patch(body, ready, NOW)
    assert patch is not None
    assert patch["observedGeneration"] == 2
    (cond,) = patch["conditions"]
    assert (cond["type"], cond["status"], cond["observedGeneration"]) == ("Ready", "True", 2)
    body["status"] = patch
    assert rules.connection_status_patch(body, ready, NOW) is None
    again = rules.connection_status_patch(body, rules.Ready(False, "SecretNotFound", "x"), NOW)
    assert again is not None and again["conditions"][0]["status"] == "False"


# --------------------------------------------------------------------------- decisions


def test_terminal_executions_are_left_alone() -> None:
    for phase in ("Succeeded", "Failed", "Cancelled"):
        assert decide(execution(phase=phase, desired="Cancelled")) is Decision.NOTHING


def test_new_execution_starts_once() -> None:
    assert decide(execution()) is Decision.START
    assert decide(execution(), queued=True) is Decision.NOTHING


def test_hold_when_not_run_or_paused_and_only_once() -> None:
    assert decide(execution(run=False)) is Decision.HOLD
    assert decide(execution(desired="Paused")) is Decision.HOLD
    body = execution(run=False)
    body["status"] = rules.hold_patch(rules.CallView.from_dict(body), NOW)
    assert decide(body) is Decision.NOTHING
    body["spec"]["run"] = True
    assert decide(body) is Decision.START


def test_cancel_before_start_and_interrupt_while_running() -> None:
    assert decide(execution(desired="Cancelled")) is Decision.CANCEL_UNSTARTED
    running = execution(phase="Running", start=True, claim=ME, desired="Cancelled")
    assert decide(running, local=True) is Decision.INTERRUPT
    assert decide(execution(phase="Running", start=True, claim=ME), local=True) is Decision.NOTHING


def test_claimed_call_is_never_started_again_after_a_restart() -> None:
    restarted = execution(phase="Running", start=True, claim="host-a/99-old")
    assert decide(restarted, alive=False) is Decision.FAIL_RESTARTED
    unclaimed = execution(phase="Running", start=True)
    assert decide(unclaimed, alive=False) is Decision.FAIL_RESTARTED


def test_a_live_claimer_is_waited_for_until_its_deadline() -> None:
    other = execution(
        phase="Running", start=True, claim="host-b/1-x", deadline=NOW + timedelta(seconds=40)
    )
    decision, after = rules.decide_call(
        rules.CallView.from_dict(other), local=False, queued=False, claimer_alive=True, now=NOW
    )
    assert decision is Decision.WAIT_FOR_CLAIM
    assert after == pytest.approx(40.0)
    late = execution(
        phase="Running", start=True, claim="host-b/1-x", deadline=NOW - timedelta(seconds=1)
    )
    assert decide(late, alive=True) is Decision.FAIL_LOST


def test_instance_id_parts() -> None:
    assert rules.instance_host("pod-7/1234-ab12") == "pod-7"
    assert rules.instance_pid("pod-7/1234-ab12") == 1234
    assert rules.instance_pid("pod-7") is None


def test_claim_and_finish_patches() -> None:
    view = rules.CallView.from_dict(execution())
    claim = rules.claim_patch(view, instance_id=ME, timeout=10, connector_type="REST", now=NOW)
    assert claim["phase"] == "Running"
    assert claim["startTime"] == "2025-01-01T12:00:00Z"
    assert claim["executor"] == {"id": ME, "deadline": "2025-01-01T12:00:45Z"}
    assert claim["conditions"][0]["reason"] == "Called"
    done = rules.finish_patch(
        view,
        phase="Failed",
        reason="Timeout",
        message="slow",
        now=NOW,
        outputs={"a": 1},
        duration_seconds=1.25,
    )
    assert done["phase"] == "Failed"
    assert done["statusMessage"] == "slow"
    assert done["duration"] == "1.25s"
    assert done["outputs"] == {"a": 1}
    assert done["conditions"][-1]["type"] == "Finished"
    kind, reason, text = rules.finish_event(view, "Failed", "Timeout", "slow")
    assert (kind, reason, text) == ("Warning", "Failed", "Execution call failed (Timeout): slow")


def test_task_alias_is_a_connection_execution() -> None:
    assert rules.is_connection_execution({"spec": {"type": "TASK"}})
    assert not rules.is_connection_execution({"spec": {"type": "FLOW"}})


def test_a_queued_call_belongs_to_its_task_even_while_being_claimed() -> None:
    claimed = execution(phase="Running", start=True, claim=ME)
    assert (
        decide(claimed, queued=True, alive=False) is Decision.NOTHING
    )  # the claim's own watch event
    assert decide(execution(run=False), queued=True) is Decision.NOTHING
    assert decide(execution(desired="Cancelled"), queued=True) is Decision.CANCEL_UNSTARTED


def test_status_after_keeps_nulls_inside_values() -> None:
    status = {"phase": "Running", "statusMessage": "x", "attempts": 1}
    patch = {"phase": "Succeeded", "statusMessage": None, "outputs": {"json": None}}
    assert rules.status_after(status, patch) == {
        "phase": "Succeeded",
        "attempts": 1,
        "outputs": {"json": None},
    }
