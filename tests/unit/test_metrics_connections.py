"""The connection executor's Events and metrics: held, claimed (Started), ended; call latency.

Runs the executor against the in-memory API of test_connectors_executor (resourceVersions,
conflicts, writes echoed back as watch events), recording the Events it posts. With two
executors racing, a call still counts once: the counters follow the writes that won.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.test_connectors_executor import (
    FakeApi,
    FakeConnector,
    call_body,
    executor,
    phase,
    until,
)
from tests.unit.test_connectors_executor import api as api  # a fixture
from tests.unit.test_connectors_executor import connector as connector  # a fixture

from kumulus.k8s import events
from kumulus.observability import metrics

pytestmark = pytest.mark.unit


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(Execution, type, reason) of each Event posted."""
    found: list[tuple[str, str, str]] = []

    async def post(body: Any, type_: str, reason: str, message: str) -> None:
        found.append((body["metadata"]["name"], type_, reason))
        assert "hunter2" not in message

    monkeypatch.setattr(events, "post_event", post)
    return found


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_call_records_started_and_its_end_once(
    api: FakeApi, connector: FakeConnector, posted: list[tuple[str, str, str]]
) -> None:
    labels = {"type": "CONNECTION"}
    done = {"type": "CONNECTION", "phase": "Succeeded", "reason": "Succeeded"}
    before = (
        value("kumulus_executions_created_total", **labels),
        value("kumulus_execution_create_to_running_seconds_count", **labels),
        value("kumulus_executions_finished_total", **done),
        value("kumulus_connection_call_duration_seconds_count", connector="FAKE"),
    )
    first, second = executor(api, "host-a"), executor(api, "host-b")
    for i in range(3):
        api.add(call_body(f"m{i}"))
    await until(lambda: all(phase(api, f"m{i}") == "Succeeded" for i in range(3)))
    await until(lambda: len(posted) == 6)
    after = (
        value("kumulus_executions_created_total", **labels),
        value("kumulus_execution_create_to_running_seconds_count", **labels),
        value("kumulus_executions_finished_total", **done),
        value("kumulus_connection_call_duration_seconds_count", connector="FAKE"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3, 3, 3]
    for i in range(3):
        assert [(t, r) for n, t, r in posted if n == f"m{i}"] == [
            ("Normal", "Started"),
            ("Normal", "Succeeded"),
        ]
    await first.shutdown(grace=0)
    await second.shutdown(grace=0)


async def test_a_held_call_records_why(
    api: FakeApi, connector: FakeConnector, posted: list[tuple[str, str, str]]
) -> None:
    ex = executor(api)
    body = call_body("held")
    body["spec"]["run"] = False
    api.add(body)
    await until(lambda: phase(api, "held") == "Pending")
    await until(lambda: bool(posted))
    api.patch_spec("held", {"run": True})
    await until(lambda: phase(api, "held") == "Succeeded")
    await until(lambda: len(posted) == 3)
    assert [r for _, _, r in posted] == ["NotStarted", "Started", "Succeeded"]
    assert ex.busy == 0
    await ex.shutdown(grace=0)
