"""The operator's deputy checks in the engine and the Pod adapter, with the API faked.

A Pod name reaches the operator through an Execution's status, which flow code can write: the
operator deletes only Pods the Execution controls. A Pod refused for a missing ServiceAccount
leads to a bounded wait and a clear failure, never to an error logged every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from lightkube.core.exceptions import ApiError

from kumulus.domain.settings import Settings
from kumulus.k8s import engine as engine_mod
from kumulus.k8s import events, executions, pods

pytestmark = pytest.mark.unit

SCRIPT = "def handler(system, this):\n    pass\n"


def execution(name: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "10",
        },
        "spec": {"type": "SCRIPT", "script": SCRIPT, **spec},
        "status": status or {},
    }


def a_pod(name: str, owner_uid: str | None, phase: str = "Running") -> dict[str, Any]:
    refs = []
    if owner_uid is not None:
        refs = [{"kind": "Execution", "name": "x", "uid": owner_uid, "controller": True}]
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": "5",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "ownerReferences": refs,
        },
        "status": {"phase": phase, "containerStatuses": [{"state": {"running": {}}}]},
    }


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.patches: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.creates = 0
        self.missing_account: str | None = None

    async def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.creates += 1
        if self.missing_account is not None:
            raise pods.ServiceAccountNotFound("ns", self.missing_account)
        return {**manifest, "status": {"phase": "Pending"}}

    async def patch_status(
        self, namespace: str, name: str, rv: str | None, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.patches.append(dict(status))
        body = self.objects[name]
        rv_new = str(int(body["metadata"]["resourceVersion"]) + 1)
        merged = {
            k: v for k, v in {**(body.get("status") or {}), **status}.items() if v is not None
        }
        updated = {**body, "metadata": {**body["metadata"], "resourceVersion": rv_new}}
        updated["status"] = merged
        self.objects[name] = updated
        return updated

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(name)

    async def delete_pod(self, namespace: str, name: str, grace: int) -> None:
        self.deleted.append(name)
        self.pods.pop(name, None)

    async def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(pods, "create_pod", fake.create_pod)
    monkeypatch.setattr(pods, "get_pod", fake.get_pod)
    monkeypatch.setattr(pods, "delete_pod", fake.delete_pod)
    monkeypatch.setattr(executions, "patch_execution_status", fake.patch_status)
    monkeypatch.setattr(events, "post_event", fake.post_event)
    yield fake


async def settle(engine: engine_mod.Engine, seconds: float = 0.5) -> None:
    """Let timers fire for ``seconds``, then wait until no reconcile is queued or running."""
    await asyncio.sleep(seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while loop.time() < deadline:
        if not engine.backlog and not engine._running:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine did not settle")


async def run(
    engine: engine_mod.Engine, api: FakeApi, body: dict[str, Any], seconds: float
) -> None:
    api.objects[body["metadata"]["name"]] = body
    engine.on_execution(None, body)
    await settle(engine, seconds)
    await engine.shutdown()


# --------------------------------------------------------------------------- ServiceAccounts


async def test_a_missing_service_account_waits_then_fails_without_error_logs(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.missing_account = "ghost"
    engine = engine_mod.Engine(Settings(manage_runner_rbac=False, service_account_wait_seconds=1))
    with caplog.at_level(logging.INFO, logger="kumulus.engine"):
        await run(engine, api, execution("ex", podTemplate={"serviceAccountName": "ghost"}), 3.5)
    phases = [p.get("phase") for p in api.patches]
    assert phases == ["Pending", "Failed"], api.patches
    started = next(c for c in api.patches[0]["conditions"] if c["type"] == "Started")
    assert started["reason"] == "ServiceAccountNotFound"
    finished = next(c for c in api.patches[1]["conditions"] if c["type"] == "Finished")
    assert finished["reason"] == "ServiceAccountNotFound"
    assert api.creates >= 2  # tried again while waiting
    assert "attempts" not in api.objects["ex"]["status"]  # no attempt was started
    assert [r.levelname for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert ("Warning", "ServiceAccountNotFound") in [(t, r) for t, r, _ in api.events]


async def test_a_service_account_that_appears_during_the_wait_starts_the_pod(
    api: FakeApi,
) -> None:
    api.missing_account = "late"
    engine = engine_mod.Engine(Settings(manage_runner_rbac=False, service_account_wait_seconds=60))
    body = execution("ex", podTemplate={"serviceAccountName": "late"})
    api.objects["ex"] = body
    engine.on_execution(None, body)
    await settle(engine, 0.3)
    assert [p.get("phase") for p in api.patches] == ["Pending"]
    api.missing_account = None
    engine.on_execution("MODIFIED", api.objects["ex"])
    await settle(engine, 2.5)
    await engine.shutdown()
    assert api.objects["ex"]["status"]["attempts"] == 1
    assert api.objects["ex"]["status"]["podName"] == "ex-a1"


# --------------------------------------------------------------------------- owned Pods


async def test_a_forged_pod_name_is_not_deleted_on_cancel(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.pods["app"] = a_pod("app", None)  # an application's Pod, not the operator's
    api.pods["ex-a1"] = a_pod("ex-a1", "uid-ex")  # the Execution's own attempt Pod
    status = {"phase": "Running", "attempts": 1, "podName": "app"}
    engine = engine_mod.Engine(Settings(manage_runner_rbac=False))
    with caplog.at_level(logging.WARNING, logger="kumulus.engine"):
        await run(engine, api, execution("ex", status, desiredState="Cancelled"), 0.5)
    assert "app" in api.pods and "app" not in api.deleted
    assert api.deleted == ["ex-a1"]
    assert api.objects["ex"]["status"]["phase"] == "Cancelled"
    assert any("app" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_the_engine_refuses_to_delete_a_pod_it_does_not_own(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    # The attempt's own name, but another object controls the Pod: the lifecycle asks to delete
    # the attempt Pod (pod-not-owned), the adapter refuses, with a Warning log and Event.
    api.pods["app"] = a_pod("app", None)
    api.pods["ex-a1"] = a_pod("ex-a1", "uid-someone-else")
    status = {"phase": "Running", "attempts": 1, "podName": "app"}
    engine = engine_mod.Engine(Settings(manage_runner_rbac=False))
    with caplog.at_level(logging.WARNING, logger="kumulus.engine"):
        await run(engine, api, execution("ex", status, desiredState="Cancelled"), 0.5)
    assert api.deleted == []
    assert set(api.pods) == {"app", "ex-a1"}
    refused = [e for e in api.events if e[1] == "PodNotOwned"]
    assert refused and refused[0][0] == "Warning" and "ex-a1" in refused[0][2]
    assert any("Refused to delete Pod ns/ex-a1" in r.getMessage() for r in caplog.records)


async def test_delete_owned_pod_checks_the_controller_uid(api: FakeApi) -> None:
    api.pods["mine"] = a_pod("mine", "uid-ex")
    api.pods["theirs"] = a_pod("theirs", "uid-other")
    api.pods["plain"] = a_pod("plain", None)
    for name in ("theirs", "plain"):
        with pytest.raises(pods.PodNotOwned):
            await pods.delete_owned_pod("ns", name, "uid-ex", 0)
    with pytest.raises(pods.PodNotOwned):
        await pods.delete_owned_pod("ns", "mine", "", 0)  # no uid proves nothing
    await pods.delete_owned_pod("ns", "gone", "uid-ex", 0)  # missing: nothing to do
    await pods.delete_owned_pod("ns", "mine", "uid-ex", 0)
    assert api.deleted == ["mine"]


def _api_error(code: int, message: str) -> ApiError:
    request = httpx.Request("POST", "https://api.invalid/api/v1/namespaces/ns/pods")
    body = {"kind": "Status", "code": code, "message": message, "reason": "Forbidden"}
    return ApiError(request=request, response=httpx.Response(code, json=body, request=request))


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (
            403,
            'pods "ex-a1" is forbidden: error looking up service account ns/ghost: '
            'serviceaccount "ghost" not found',
            True,
        ),
        (
            403,
            "service account ns/ghost was not found, retry after the service account is created",
            True,
        ),
        (403, 'pods "ex-a1" is forbidden: exceeded quota: q', False),
        (409, 'pods "ex-a1" already exists', False),
    ],
)
def test_the_service_account_refusal_is_recognised(code: int, message: str, expected: bool) -> None:
    assert pods._refused_for_service_account(_api_error(code, message)) is expected
