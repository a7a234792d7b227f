"""The webhook service without a cluster: settings, limits, the watch cache and the HTTP routes.

The Kubernetes API is replaced by :class:`FakeApi` (unit tests only): it serves lists and
watches from in-memory objects and records created Executions. The same behaviours are
tested against the real dev cluster in tests/e2e/test_webhooks.py; here the cases that are
hard to provoke for real (a watch expiring with 410, a full admission gate) are pinned down.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lightkube.core.exceptions import ApiError

from kumulus.webhook import kube
from kumulus.webhook.app import Service
from kumulus.webhook.cache import Reflector
from kumulus.webhook.limits import Gate, RateLimiter
from kumulus.webhook.settings import WebhookSettings

pytestmark = pytest.mark.unit


def api_error(code: int) -> ApiError:
    import httpx2

    request = httpx2.Request("GET", "https://api/x")
    response = httpx2.Response(code, request=request, json={"code": code, "message": "m"})
    return ApiError(request=request, response=response)


class FakeList:
    def __init__(self, items: list[dict[str, Any]], version: str) -> None:
        self.items = items
        self.resourceVersion = version

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async def gen() -> AsyncIterator[dict[str, Any]]:
            for item in self.items:
                yield item

        return gen()


class FakeApi:
    """In-memory stand-in of a lightkube AsyncClient (list, watch, create, patch)."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.lists: list[tuple[str, dict[str, Any] | None]] = []
        self.scripted: dict[str, list[Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.patched: list[tuple[str, dict[str, Any]]] = []
        self.create_delay = 0.0
        self.names = itertools.count(1)

    def list(self, res: Any, namespace: str | None = None, fields: Any = None) -> FakeList:
        plural = res._api_info.plural
        self.lists.append((plural, fields))
        items = self.objects.get(plural, [])
        if fields and "metadata.name" in fields:
            items = [i for i in items if i["metadata"]["name"] == fields["metadata.name"]]
        return FakeList(items, str(len(self.lists)))

    def watch(self, res: Any, **_: Any) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        script = self.scripted.get(res._api_info.plural, [])

        async def gen() -> AsyncIterator[tuple[str, dict[str, Any]]]:
            while script:
                step = script.pop(0)
                if isinstance(step, Exception):
                    raise step
                yield step
            await asyncio.Event().wait()

        return gen()

    async def create(self, obj: Any) -> dict[str, Any]:
        await asyncio.sleep(self.create_delay)
        body = obj.to_dict()
        meta = body["metadata"]
        meta["name"] = meta["generateName"] + str(next(self.names))
        meta["resourceVersion"] = "1"
        self.created.append(body)
        return body

    async def patch(self, res: Any, name: str, body: dict[str, Any], **_: Any) -> None:
        self.patched.append((name, body))

    async def close(self) -> None:
        return None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def webhook(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": name, "namespace": "ns", "generation": 1},
        "spec": {"flowRef": {"name": "flow"}, **spec},
    }


OBJECTS: dict[str, list[dict[str, Any]]] = {
    "webhooks": [
        webhook(
            "keyed",
            auth={"keySecretRef": {"name": "s"}, "bearerTokenSecretRef": {"name": "s"}},
            response={"mode": "async"},
            maxBodyBytes=100,
        ),
        webhook("open", auth={"allowUnauthenticated": True}, response={"mode": "async"}),
        webhook("off", enabled=False, auth={"allowUnauthenticated": True}),
        webhook(
            "limited",
            auth={"allowUnauthenticated": True},
            rateLimit={"requestsPerSecond": 0.001, "burst": 2},
            response={"mode": "async"},
        ),
        webhook("orphan", flowRef={"name": "missing"}, auth={"allowUnauthenticated": True}),
        {"metadata": {"name": "broken", "namespace": "ns"}, "spec": {"flowRef": {}}},
    ],
    "flows": [{"metadata": {"name": "flow", "namespace": "ns"}}],
    "secrets": [
        {
            "metadata": {"name": "s", "namespace": "ns"},
            "data": {"key": b64("k3y"), "token": b64("t0k"), "other": b64("x")},
        }
    ],
}


# --------------------------------------------------------------------------- settings, limits


def test_settings_from_env() -> None:
    settings = WebhookSettings.from_env(
        {
            "KUMULUS_WEBHOOK_PORT": "9000",
            "KUMULUS_WEBHOOK_NAMESPACES": "a, b,",
            "KUMULUS_WEBHOOK_STATUS_INTERVAL_SECONDS": "2.5",
            "KUMULUS_NAMESPACES": "ignored",
        }
    )
    assert (settings.port, settings.namespaces, settings.status_interval_seconds) == (
        9000,
        ("a", "b"),
        2.5,
    )
    assert settings.host == "127.0.0.1"
    with pytest.raises(ValueError, match="KUMULUS_WEBHOOK_PORT"):
        WebhookSettings.from_env({"KUMULUS_WEBHOOK_PORT": "http"})
    with pytest.raises(ValueError, match="MAX_IN_FLIGHT"):
        WebhookSettings.from_env({"KUMULUS_WEBHOOK_MAX_IN_FLIGHT": "0"})


def test_gate_never_exceeds_its_limit() -> None:
    gate = Gate(2)
    assert [gate.try_enter() for _ in range(3)] == [True, True, False]
    gate.leave()
    assert gate.try_enter()
    assert gate.in_use == 2


# --------------------------------------------------------------------------- reflector


async def test_reflector_relists_after_410_and_after_errors() -> None:
    api = FakeApi({"flows": [{"metadata": {"name": "a", "namespace": "ns"}}]})
    api.scripted["flows"] = [
        ("ADDED", {"metadata": {"name": "b", "namespace": "ns"}}),
        api_error(410),
        ("DELETED", {"metadata": {"name": "a", "namespace": "ns"}}),
        RuntimeError("connection dropped"),
    ]
    resets: list[list[str]] = []
    events: list[tuple[str, str]] = []
    third_list = asyncio.Event()

    def on_reset(items: list[dict[str, Any]]) -> None:
        resets.append([i["metadata"]["name"] for i in items])
        if len(resets) == 3:
            third_list.set()

    reflector = Reflector(
        api,  # type: ignore[arg-type]
        kube.Flow,
        "ns",
        "Flows",
        on_reset,
        lambda kind, obj: events.append((kind, obj["metadata"]["name"])),
    )
    reflector.start()
    async with asyncio.timeout(10):
        await third_list.wait()
    await reflector.stop()
    assert reflector.synced.is_set()
    assert resets[:3] == [["a"], ["a"], ["a"]]
    assert events == [("ADDED", "b"), ("DELETED", "a")]


# --------------------------------------------------------------------------- the service


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], FakeApi, Service]]:
    api = FakeApi({k: [dict(o) for o in v] for k, v in OBJECTS.items()})
    clients = kube.Clients(watch=api, api=api, waits=api)  # type: ignore[arg-type]
    settings = WebhookSettings(namespace="ns", max_in_flight=4, status_interval_seconds=3600)
    service = Service(settings, clients)
    client: TestClient[Any, Any] = TestClient(TestServer(service.app()))
    await client.start_server()
    assert await service.cache.wait_synced(5)
    yield client, api, service
    await client.close()


async def test_routes_and_error_answers(
    served: tuple[TestClient[Any, Any], FakeApi, Service],
) -> None:
    client, api, _ = served
    base = "/namespaces/ns/webhooks"
    assert (await client.get("/healthz")).status == 200
    unknown = await client.post(f"{base}/nope/call")
    disabled = await client.post(f"{base}/off/call")
    assert (unknown.status, disabled.status) == (404, 404)
    assert await unknown.json() == await disabled.json() == {"error": "not found"}
    assert (await client.post("/elsewhere")).status == 404
    wrong_method = await client.put(f"{base}/keyed/call")
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert (await client.post(f"{base}/broken/call")).status == 404
    assert (await client.post(f"{base}/orphan/call")).status == 404
    assert api.created == []


async def test_credentials(served: tuple[TestClient[Any, Any], FakeApi, Service]) -> None:
    client, api, _ = served
    url = "/api/latest/webhook/keyed/call"
    refused = [
        await client.post(url),
        await client.post(url, params={"key": "nope"}),
        await client.post(url, json={"key": "nope"}),
        await client.post(url, headers={"Authorization": "Bearer k3y"}),
        await client.post(
            url, params={"key": "x"}, data=b"{bad", headers={"Content-Type": "application/json"}
        ),
    ]
    assert {r.status for r in refused} == {401}
    assert {await r.text() for r in refused} == {'{"error": "unauthorized"}'}
    assert api.created == []
    ok = [
        await client.post(url, params={"key": "k3y"}),
        await client.post(url, json={"key": "k3y", "a": 1}),
        await client.post(url, headers={"Authorization": "Bearer t0k"}),
    ]
    assert [r.status for r in ok] == [202, 202, 202]
    assert [c["metadata"]["labels"] for c in api.created] == [{"kumulus.dev/webhook": "keyed"}] * 3
    assert api.created[1]["spec"]["inputs"]["json"] == {"a": 1}
    bad_json = await client.post(
        url, params={"key": "k3y"}, data=b"{bad", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status == 400


async def test_body_limit_and_rate_limit(
    served: tuple[TestClient[Any, Any], FakeApi, Service],
) -> None:
    client, api, _ = served
    big = await client.post(
        "/namespaces/ns/webhooks/keyed/call", params={"key": "k3y"}, data=b"x" * 101
    )
    assert big.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"y" * 10

    chunked = await client.post(
        "/namespaces/ns/webhooks/keyed/call", params={"key": "k3y"}, data=chunks()
    )
    assert chunked.status == 413
    codes = [(await client.post("/namespaces/ns/webhooks/limited/call")).status for _ in range(4)]
    assert codes == [202, 202, 429, 429]
    limited = await client.post("/namespaces/ns/webhooks/limited/call")
    assert int(limited.headers["Retry-After"]) >= 1
    assert len(api.created) == 2


async def test_overload_answers_503_and_creates_nothing_extra(
    served: tuple[TestClient[Any, Any], FakeApi, Service],
) -> None:
    client, api, service = served
    api.create_delay = 2.0  # long enough that all 12 calls arrive while 4 are admitted
    responses = await asyncio.gather(
        *[client.post("/namespaces/ns/webhooks/open/call") for _ in range(12)]
    )
    codes = sorted(r.status for r in responses)
    assert codes.count(202) >= 4
    assert 503 in codes
    assert set(codes) <= {202, 503}
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status == 503)
    assert codes.count(202) == len(api.created)
    assert service.admission.in_use == 0


async def test_last_triggered_time_is_written_in_batches(
    served: tuple[TestClient[Any, Any], FakeApi, Service],
) -> None:
    client, api, service = served
    for _ in range(5):
        assert (await client.post("/namespaces/ns/webhooks/open/call")).status == 202
    assert api.patched == []
    await service.triggers.flush()
    assert [name for name, _ in api.patched] == ["open"]
    assert "lastTriggeredTime" in api.patched[0][1]["status"]


def test_rate_limiter_follows_spec_changes() -> None:
    from kumulus.api.v1alpha1 import WebhookSpec
    from kumulus.webhook.cache import Served

    def hook(rate: float, burst: int) -> Served:
        spec = WebhookSpec.model_validate(
            {
                "flowRef": {"name": "f"},
                "auth": {"allowUnauthenticated": True},
                "rateLimit": {"requestsPerSecond": rate, "burst": burst},
            }
        )
        return Served("ns", "h", 1, spec)

    limiter = RateLimiter()
    assert limiter.check(hook(1, 1), now=0) == 0
    assert limiter.check(hook(1, 1), now=0) > 0
    assert limiter.check(hook(1, 5), now=0) == 0  # a new limit starts a full bucket
    limiter.forget(("ns", "h"))
    assert len(limiter) == 0


async def test_an_unreadable_secret_gives_401_without_waiting_for_it() -> None:
    """RBAC denies the Secret (403 on its list): calls are refused, not held for the wait."""

    class Forbidden(FakeApi):
        def list(self, res: Any, namespace: str | None = None, fields: Any = None) -> FakeList:
            if res._api_info.plural == "secrets":
                raise api_error(403)
            return super().list(res, namespace, fields)

    api = Forbidden({k: [dict(o) for o in v] for k, v in OBJECTS.items()})
    clients = kube.Clients(watch=api, api=api, waits=api)  # type: ignore[arg-type]
    # An hour-long wait: the call below only finishes if the service does not wait for it.
    settings = WebhookSettings(namespace="ns", secret_sync_wait_seconds=3600)
    service = Service(settings, clients)
    client: TestClient[Any, Any] = TestClient(TestServer(service.app()))
    await client.start_server()
    try:
        assert await service.cache.wait_synced(5)
        async with asyncio.timeout(60):
            answer = await client.post("/namespaces/ns/webhooks/keyed/call", params={"key": "k3y"})
        assert answer.status == 401
        assert api.created == []
    finally:
        await client.close()
