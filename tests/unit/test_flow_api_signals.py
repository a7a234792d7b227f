"""End signals, tracebacks and handler signatures of the flow API (fake API client)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from kumulus.runner.fake import FakeClient
from kumulus.runner.main import run, wants_inputs

pytestmark = pytest.mark.unit

ENV = {"KUMULUS_EXECUTION": "hello", "KUMULUS_NAMESPACE": "default", "KUMULUS_ATTEMPT": "1"}


@pytest.fixture
def fake() -> Iterator[FakeClient]:
    client = FakeClient()
    yield client
    client.close()


def run_flow(
    fake: FakeClient, code: str, inputs: dict[str, Any] | None = None, **env: str
) -> tuple[int, dict[str, Any]]:
    fake.add_flow("hello", code)
    fake.add_execution("hello", {"type": "FLOW", "flowRef": {"name": "hello"}, "inputs": inputs})
    code_ = run({**ENV, **env}, fake, out=io.StringIO(), watch_self=False)
    return code_, fake.executions["hello"].get("status") or {}


def test_success_cannot_be_caught_by_except_exception(fake: FakeClient) -> None:
    code, status = run_flow(
        fake,
        "def handler(system, this):\n"
        "    try:\n"
        "        this.success('done')\n"
        "    except Exception:\n"
        "        this.save(message='caught')\n",
    )
    assert code == 0
    assert status["runner"]["result"] == {"status": "ENDED_SUCCESS", "message": "done"}
    assert status["runner"]["state"] == "ended"
    assert status["message"] == "done"


def test_error_ends_with_exit_code_1_and_is_not_catchable(fake: FakeClient) -> None:
    code, status = run_flow(
        fake,
        "def handler(system, this):\n"
        "    try:\n"
        "        this.error('bad input')\n"
        "    except Exception:\n"
        "        return this.success('caught')\n",
    )
    assert code == 1
    assert status["runner"]["result"]["status"] == "ENDED_ERROR"
    assert status["runner"]["result"]["message"] == "bad input"


def test_end_cancelled_exits_3(fake: FakeClient) -> None:
    code, status = run_flow(
        fake, "def handler(system, this):\n    this.end('ENDED_CANCELLED', 'stop')\n"
    )
    assert code == 3
    assert status["runner"]["result"]["status"] == "ENDED_CANCELLED"


def test_end_with_unknown_status_is_a_catchable_error(fake: FakeClient) -> None:
    code, status = run_flow(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    try:\n"
        "        this.end('DONE')\n"
        "    except flow_api.InvalidInputError as exc:\n"
        "        this.success(str(exc))\n",
    )
    assert code == 0
    assert "ENDED_SUCCESS" in status["runner"]["result"]["message"]


def test_returning_normally_is_success(fake: FakeClient) -> None:
    code, status = run_flow(fake, "def handler(system, this):\n    return 42\n")
    assert code == 0
    assert status["runner"]["result"]["status"] == "ENDED_SUCCESS"


def test_unhandled_exception_reports_flow_traceback(fake: FakeClient) -> None:
    code, status = run_flow(
        fake,
        "def helper():\n    raise ValueError('boom')\n\ndef handler(system, this):\n    helper()\n",
    )
    assert code == 1
    result = status["runner"]["result"]
    assert result["status"] == "ENDED_ERROR"
    tb = result["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert 'File "<flow hello>", line 5, in handler' in tb
    assert 'File "<flow hello>", line 2, in helper' in tb
    assert "raise ValueError('boom')" in tb
    assert tb.rstrip().endswith("ValueError: boom")
    assert "kumulus/runner" not in tb
    assert result["message"] == tb


def test_exception_in_module_body_is_an_unhandled_error(fake: FakeClient) -> None:
    code, status = run_flow(fake, "x = 1 / 0\ndef handler(system, this):\n    pass\n")
    assert code == 1
    assert "ZeroDivisionError" in status["runner"]["result"]["traceback"]


def test_syntax_error_exits_2_with_line(fake: FakeClient) -> None:
    code, status = run_flow(fake, "def handler(system, this):\n    return (\n")
    assert code == 2
    assert "does not compile" in status["runner"]["result"]["message"]
    assert "line" in status["runner"]["result"]["message"]


def test_missing_handler_exits_2(fake: FakeClient) -> None:
    code, status = run_flow(fake, "def main(system, this):\n    pass\n")
    assert code == 2
    assert "handler()" in status["runner"]["result"]["message"]


def test_missing_flow_exits_2(fake: FakeClient) -> None:
    fake.add_execution("hello", {"type": "FLOW", "flowRef": {"name": "nope"}})
    code = run(ENV, fake, out=io.StringIO(), watch_self=False)
    assert code == 2
    assert "nope" in fake.executions["hello"]["status"]["runner"]["result"]["message"]


def test_missing_execution_exits_2(fake: FakeClient) -> None:
    assert run(ENV, fake, out=io.StringIO(), watch_self=False) == 2


def test_webhook_html_response_is_reported_and_ends_success(fake: FakeClient) -> None:
    code, status = run_flow(
        fake, "def handler(system, this):\n    this.webhook_html_response('<b>hi</b>')\n"
    )
    assert code == 0
    assert status["runner"]["webhookResponse"] == {"html": "<b>hi</b>", "statusCode": 200}


def test_sigterm_signal_ends_cancelled(fake: FakeClient) -> None:
    code, status = run_flow(
        fake,
        "from kumulus.runner.errors import Terminated\n"
        "def handler(system, this):\n"
        "    raise Terminated('SIGTERM')\n",
    )
    assert code == 3
    assert status["runner"]["result"]["status"] == "ENDED_CANCELLED"


def test_script_execution_runs_spec_script(fake: FakeClient) -> None:
    fake.add_execution(
        "hello",
        {
            "type": "SCRIPT",
            "script": "def handler(s, t, i):\n    t.success(str(i['n']))\n",
            "inputs": {"n": 7},
        },
    )
    assert run(ENV, fake, out=io.StringIO(), watch_self=False) == 0
    assert fake.executions["hello"]["status"]["runner"]["result"]["message"] == "7"


def test_code_from_configmap(fake: FakeClient) -> None:
    fake.flows["hello"] = {
        "metadata": {"name": "hello"},
        "spec": {"codeFrom": {"configMapKeyRef": {"name": "cm", "key": "flow.py"}}},
    }
    fake.configmaps["cm"] = {"data": {"flow.py": "def handler(s, t):\n    t.success('cm')\n"}}
    fake.add_execution("hello", {"type": "FLOW", "flowRef": {"name": "hello"}})
    assert run(ENV, fake, out=io.StringIO(), watch_self=False) == 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def handler(system, this): pass", False),
        ("def handler(system, this, inputs): pass", True),
        ("def handler(system, this, inputs=None): pass", True),
        ("def handler(*args): pass", True),
        ("def handler(system, this, *, inputs=None): pass", False),
    ],
)
def test_handler_signature_detection(source: str, expected: bool) -> None:
    ns: dict[str, Any] = {}
    exec(source, ns)
    assert wants_inputs(ns["handler"]) is expected


def test_inputs_reach_three_argument_handler(fake: FakeClient) -> None:
    code, status = run_flow(
        fake,
        "def handler(system, this, inputs):\n"
        "    this.save(output_value={'greeting': 'hi ' + inputs['who']})\n",
        inputs={"who": "kumulus"},
    )
    assert code == 0
    assert status["outputs"] == {"greeting": "hi kumulus"}


def test_log_writes_one_json_line_per_call(fake: FakeClient) -> None:
    fake.add_flow("hello", "def handler(s, this):\n    this.log('a', 1, response={'x': 2})\n")
    fake.add_execution("hello", {"type": "FLOW", "flowRef": {"name": "hello"}})
    out = io.StringIO()
    assert run(ENV, fake, out=out, watch_self=False) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "a 1"
    assert entry["data"] == {"response": {"x": 2}}
    assert entry["execution"] == "default/hello"
