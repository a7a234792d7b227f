"""save/get/load, outputs and the output limit, status strings and System records."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from kumulus.domain import outputs
from kumulus.runner import states
from kumulus.runner.fake import FakeClient
from kumulus.runner.main import run

pytestmark = pytest.mark.unit

ENV = {"KUMULUS_EXECUTION": "hello", "KUMULUS_NAMESPACE": "default", "KUMULUS_ATTEMPT": "1"}


@pytest.fixture
def fake() -> Iterator[FakeClient]:
    client = FakeClient()
    yield client
    client.close()


def run_flow(fake: FakeClient, code: str, **env: str) -> tuple[int, dict[str, Any]]:
    fake.add_flow("hello", code)
    fake.add_execution("hello", {"type": "FLOW", "flowRef": {"name": "hello"}, "inputs": {"a": 1}})
    rc = run({**ENV, **env}, fake, out=io.StringIO(), watch_self=False)
    return rc, fake.executions["hello"].get("status") or {}


def test_save_get_load_own_fields(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n"
        "    this.save(message='step 1/2', name='Greeter', output_value={'x': 1, 'y': 2})\n"
        "    assert this.get('message') == 'step 1/2'\n"
        "    assert this.get('name') == 'Greeter'\n"
        "    assert this.get('output_value') == {'x': 1, 'y': 2}\n"
        "    assert this.get('input_value') == {'a': 1}\n"
        "    assert this.get('status') == 'RUNNING'\n"
        "    assert this.load('status') == 'RUNNING'\n"
        "    assert this.get('message', 'name') == {'message': 'step 1/2', 'name': 'Greeter'}\n"
        "    this.save(output_value={'z': 3})\n"
        "    this.set_output('w', [1, 2])\n"
        "    assert this.load('output_value') == {'z': 3, 'w': [1, 2]}\n",
    )
    assert rc == 0, status["runner"]["result"]
    assert status["outputs"] == {"z": 3, "w": [1, 2]}  # output_value replaces, set_output merges
    assert status["message"] == "step 1/2"
    assert status["displayName"] == "Greeter"


def test_save_unknown_field_is_a_clear_error(fake: FakeClient) -> None:
    rc, status = run_flow(fake, "def handler(system, this):\n    this.save(colour='red')\n")
    assert rc == 1
    assert "save() cannot write colour" in status["runner"]["result"]["message"]


def test_get_unknown_field_is_a_clear_error(fake: FakeClient) -> None:
    rc, status = run_flow(fake, "def handler(system, this):\n    this.get('colour')\n")
    assert rc == 1
    assert "Unknown field 'colour'" in status["runner"]["result"]["message"]


def test_outputs_over_the_limit_are_refused_at_once_and_never_written(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n"
        "    this.save(output_value={'small': 1})\n"
        "    this.save(output_value={'big': 'x' * 500})\n"
        "    this.save(message='not reached')\n",
        KUMULUS_OUTPUT_LIMIT_BYTES="100",
    )
    assert rc == 2
    assert status["outputs"] == {"small": 1}
    assert "message" not in status
    message = status["runner"]["result"]["message"]
    assert "over the limit of 100 bytes" in message
    assert status["runner"]["result"]["status"] == "ENDED_ERROR"


def test_a_flow_may_catch_the_output_limit_and_save_less(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    try:\n"
        "        this.save(output_value={'big': 'x' * 500})\n"
        "    except flow_api.OutputLimitExceeded as exc:\n"
        "        this.save(output_value={'caught': type(exc).__name__})\n"
        "    try:\n"
        "        this.set_output('big', 'x' * 500)\n"
        "    except Exception as exc:\n"  # an ordinary flow_api error, like the others
        "        assert isinstance(exc, flow_api.EngineException), exc\n"
        "        this.save(message=str(exc))\n",
        KUMULUS_OUTPUT_LIMIT_BYTES="100",
    )
    assert rc == 0, status["runner"]["result"]
    assert status["outputs"] == {"caught": "OutputLimitExceeded"}
    assert "over the limit of 100 bytes (KUMULUS_OUTPUT_LIMIT_BYTES)" in status["message"]


def test_set_output_over_the_limit_fails(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n    this.set_output('big', 'x' * 300000)\n",
    )
    assert rc == 2
    assert "outputs" not in status


def test_the_operators_output_limit_holds_up_to_the_maximum(fake: FakeClient) -> None:
    # Raising Settings.output_limit_bytes raises the limit of flows too, not only of
    # CONNECTION Executions (the runner used to cap it at 262144 without a word).
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n    this.set_output('big', 'x' * 300000)\n",
        KUMULUS_OUTPUT_LIMIT_BYTES=str(outputs.LIMIT_MAX_BYTES),
    )
    assert rc == 0, status["runner"]["result"]
    assert status["outputs"] == {"big": "x" * 300000}


def test_an_output_limit_over_the_maximum_does_not_start_the_flow(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n    this.save(message='ran')\n",
        KUMULUS_OUTPUT_LIMIT_BYTES=str(outputs.LIMIT_MAX_BYTES + 1),
    )
    assert rc == 2
    assert "message" not in status and "runner" not in status


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (None, "PENDING"),
        ("Pending", "PENDING"),
        ("Running", "RUNNING"),
        ("Waiting", "WAITING_DEPENDENCY"),
        ("Paused", "PAUSED"),
        ("Succeeded", "ENDED_SUCCESS"),
        ("Failed", "ENDED_ERROR"),
        ("Cancelled", "ENDED_CANCELLED"),
    ],
)
def test_status_strings(phase: str | None, expected: str) -> None:
    obj: dict[str, Any] = {"status": {"phase": phase}} if phase else {}
    assert states.status_string(obj) == expected


def test_system_flow_and_connection_records(fake: FakeClient) -> None:
    fake.connections["db"] = {
        "metadata": {"name": "db"},
        "spec": {"type": "SQLPG", "values": {"host": "db"}, "secretRef": {"name": "db-secret"}},
    }
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n"
        "    assert system.flow('hello').exists()\n"
        "    assert not system.flow('other').exists()\n"
        "    assert 'def handler' in system.flow('hello').get('code')\n"
        "    assert system.flow('hello').get('handler') == 'handler'\n"
        "    conn = system.connection('db')\n"
        "    assert conn.exists() and not system.connection('nope').exists()\n"
        "    assert conn.get('type', 'values') == {'type': 'SQLPG', 'values': {'host': 'db'}}\n"
        "    assert system.return_when.ALL_ENDED == 'ALL_ENDED'\n",
    )
    assert rc == 0, status["runner"]["result"]
