"""The shared status keeper: caching, coalesced checks, periodic re-checks, error handling."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kumulus.domain.settings import Settings
from kumulus.k8s.flows import FlowKeeper
from kumulus.k8s.keeper import StatusKeeper, ready_transition
from kumulus.k8s.resources import Key

pytestmark = pytest.mark.unit


def obj(name: str, namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Recorder(StatusKeeper):
    kind = "Thing"

    def __init__(self, namespaces: tuple[str, ...] = (), fail: bool = False) -> None:
        super().__init__(namespaces, recheck_seconds=1.0)
        self.checked: list[Key] = []
        self.gate = asyncio.Event()
        self.fail = fail

    async def check(self, key: Key) -> None:
        self.checked.append(key)
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("boom")


async def settle(keeper: StatusKeeper) -> None:
    for _ in range(50):
        await asyncio.sleep(0)
        if not keeper._tasks:
            return
    raise AssertionError("keeper tasks did not finish")


async def test_bursts_of_triggers_coalesce_into_one_more_check() -> None:
    keeper = Recorder()
    key = keeper.store("ADDED", obj("a"))
    assert key == ("ns", "a")
    keeper.trigger(key)
    keeper.trigger(key)  # before the check starts: folded into it
    await asyncio.sleep(0)
    assert keeper.checked == [key]  # the check is running (waiting on the gate)
    for _ in range(4):
        keeper.trigger(key)  # while it runs: coalesced into one more check
    keeper.gate.set()
    await settle(keeper)
    assert keeper.checked == [key, key]


async def test_failed_check_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    keeper = Recorder(fail=True)
    keeper.gate.set()
    key = keeper.store(None, obj("a"))
    assert key is not None
    keeper.trigger(key)
    await settle(keeper)
    assert "Failed to check Thing ns/a: RuntimeError: boom." in caplog.text
    keeper.trigger(key)  # the key is not stuck as "running"
    await settle(keeper)
    assert keeper.checked == [key, key]


def test_store_filters_namespaces_and_drops_deleted() -> None:
    keeper = Recorder(namespaces=("ns",))
    assert keeper.store("ADDED", obj("a", namespace="other")) is None
    assert keeper.bodies == {}
    assert keeper.store("ADDED", obj("a")) == ("ns", "a")
    assert keeper.store("DELETED", obj("a")) == ("ns", "a")
    assert keeper.bodies == {}


def test_ready_transition() -> None:
    body = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok"}]}}
    assert not ready_transition(body, True, "Ok")
    assert ready_transition(body, False, "Ok")
    assert ready_transition(body, True, "Other")
    assert ready_transition({}, True, "Ok")


def test_flow_keeper_rechecks_only_code_from_flows() -> None:
    keeper = FlowKeeper(Settings(flow_recheck_seconds=5))
    keeper.store("ADDED", obj("inline", code="def handler(s, t): pass"))
    keeper.store("ADDED", obj("cm", codeFrom={"configMapKeyRef": {"name": "c", "key": "k"}}))
    assert keeper.recheck_keys() == [("ns", "cm")]
    assert keeper.recheck_seconds == 5
