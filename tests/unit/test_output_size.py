"""One measure of output size: what the runner accepts, the operator keeps (issue 11, bug 1).

The runner checks ``this.save(output_value=...)`` in the flow, the operator checks
``status.outputs`` when the attempt ends, and the connection executor checks a connector's
outputs. The three must draw the line at the same byte, or a flow is told its outputs were saved
and the Execution then fails with ``OutputTooLarge``.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kumulus.domain import connection as rules
from kumulus.domain import lifecycle as lc
from kumulus.domain.outcome import PodView
from kumulus.domain.settings import Settings
from kumulus.runner.engine import Engine
from kumulus.runner.errors import OutputLimitExceeded
from kumulus.runner.fake import FakeClient
from kumulus.runner.main import run

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
ENV = {"KUMULUS_EXECUTION": "ex", "KUMULUS_NAMESPACE": "ns", "KUMULUS_ATTEMPT": "1"}

# Values whose stored size differs between the ways of counting: ASCII, two-byte (é) and
# four-byte (emoji) UTF-8, characters Go's encoder escapes (<, >, &, U+2028), control
# characters, keys that need escaping, nesting and numbers.
VALUES: dict[str, dict[str, Any]] = {
    "ascii": {"text": "x" * 300},
    "e-acute": {"text": "é" * 300},
    "emoji": {"text": "😀" * 100},
    "html": {"html": "<p>a & b</p>" * 20},
    "line-separator": {"text": "\u2028\u2029" * 50},
    "control": {"text": "\n\t\x01\x7f" * 50},
    "keys": {'quote"d': 1, "é<key>": [1, 2.5, None, True], "nested": {"list": [{"a": "b"}]}},
}


@pytest.fixture
def fake() -> Iterator[FakeClient]:
    client = FakeClient()
    yield client
    client.close()


def runner_accepts(fake: FakeClient) -> Callable[[dict[str, Any], int], bool]:
    obj = fake.add_execution("ex", {"type": "SCRIPT", "script": "pass"}, status={})

    def accepts(outputs: dict[str, Any], limit: int) -> bool:
        engine = Engine(fake, obj, attempt=1, output_limit=limit, watch_self=False)
        try:
            engine.save_fields(outputs=outputs)
        except OutputLimitExceeded:
            return False
        return True

    return accepts


def finished(outputs: dict[str, Any]) -> dict[str, Any]:
    """An Execution whose runner saved ``outputs`` and whose Pod then succeeded."""
    return {
        "metadata": {"name": "ex", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"type": "SCRIPT", "script": "pass"},
        "status": {
            "phase": "Running",
            "attempts": 1,
            "podName": "ex-a1",
            "outputs": outputs,
            "runner": {"attempt": 1, "state": "ended", "result": {"status": "ENDED_SUCCESS"}},
        },
    }


SUCCEEDED_POD = PodView(
    name="ex-a1", phase="Succeeded", created=NOW - timedelta(seconds=5), exit_code=0, owner_uid="u"
)


def operator_phase(outputs: dict[str, Any], limit: int) -> str:
    actions = lc.decide(
        finished(outputs), SUCCEEDED_POD, [], NOW, settings=Settings(output_limit_bytes=limit)
    )
    (patch,) = [a.patch for a in actions if isinstance(a, lc.PatchStatus)]
    return str(patch["phase"])


def smallest_accepted_limit(accepts: Callable[[dict[str, Any], int], bool], v: Any) -> int:
    """The runner's line for ``v``, found by bisection (not by asking the measure)."""
    low, high = 1, 1 << 16  # accepts(v, high) holds for every value above
    assert accepts(v, high) and not accepts(v, low)
    while high - low > 1:
        middle = (low + high) // 2
        if accepts(v, middle):
            high = middle
        else:
            low = middle
    return high


@pytest.mark.parametrize("name", list(VALUES))
def test_runner_operator_and_connection_executor_draw_the_line_at_the_same_byte(
    fake: FakeClient, name: str
) -> None:
    value = VALUES[name]
    accepts = runner_accepts(fake)
    line = smallest_accepted_limit(accepts, value)
    assert operator_phase(value, line) == "Succeeded"
    assert operator_phase(value, line - 1) == "Failed"
    assert rules.check_outputs(value, line) is None
    problem = rules.check_outputs(value, line - 1)
    assert problem is not None and problem[0] == "OutputTooLarge"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        # What the API server's encoder (Go encoding/json) writes for the value, spelt out.
        ({"a": "é"}, '{"a":"é"}'),
        ({"a": "😀"}, '{"a":"😀"}'),
        ({"h": "<b>&"}, '{"h":"\\u003cb\\u003e\\u0026"}'),
        ({"s": "\u2028"}, '{"s":"\\u2028"}'),
        ({"c": "\n\x01"}, '{"c":"\\n\\u0001"}'),
        ({"l": [1, True, None], "q": 'a"b'}, '{"l":[1,true,null],"q":"a\\"b"}'),
    ],
)
def test_the_line_is_the_size_the_api_server_stores(
    fake: FakeClient, value: dict[str, Any], stored: str
) -> None:
    assert smallest_accepted_limit(runner_accepts(fake), value) == len(stored.encode())


def test_a_flow_saving_100000_e_acute_succeeds_with_its_outputs_kept(fake: FakeClient) -> None:
    code = "def handler(system, this):\n    this.save(output_value={'text': 'é' * 100000})\n"
    fake.add_execution("ex", {"type": "SCRIPT", "script": code})
    limit = str(Settings().output_limit_bytes)  # what the operator hands the runner
    rc = run(
        {**ENV, "KUMULUS_OUTPUT_LIMIT_BYTES": limit}, fake, out=io.StringIO(), watch_self=False
    )
    status = fake.executions["ex"]["status"]
    assert rc == 0, status["runner"]["result"]
    assert status["outputs"] == {"text": "é" * 100000}
    # The operator then decides on what the runner left.
    operator_status = {**status, "phase": "Running", "attempts": 1, "podName": "ex-a1"}
    execution = {**fake.executions["ex"], "status": operator_status}
    pod = dataclasses.replace(SUCCEEDED_POD, owner_uid=execution["metadata"]["uid"])
    actions = lc.decide(execution, pod, [], NOW, settings=Settings())
    (patch,) = [a.patch for a in actions if isinstance(a, lc.PatchStatus)]
    assert patch["phase"] == "Succeeded", patch["statusMessage"]
    assert "outputs" not in patch  # kept as the runner wrote them
