"""LightkubeClient maps API errors onto flow API exceptions and speaks merge/JSON patch."""

from __future__ import annotations

from typing import Any
from unittest import mock

import httpx2
import pytest
from lightkube import ApiError
from lightkube.types import PatchType

from kumulus.runner.client import AlreadyExistsError, ApiRequestError, LightkubeClient
from kumulus.runner.errors import PermissionDenied, ResourceNotFoundError

pytestmark = pytest.mark.unit


def api_error(code: int) -> ApiError:
    request = httpx2.Request("GET", "https://127.0.0.1/x")
    response = httpx2.Response(
        code, request=request, json={"kind": "Status", "code": code, "message": f"HTTP {code}"}
    )
    return ApiError(request=request, response=response)


@pytest.mark.parametrize(
    ("code", "exc"),
    [(404, ResourceNotFoundError), (403, PermissionDenied), (500, ApiRequestError)],
)
def test_get_errors_are_flow_api_exceptions(code: int, exc: type[Exception]) -> None:
    inner = mock.Mock()
    inner.get.side_effect = api_error(code)
    client = LightkubeClient("ns", client=inner)
    with pytest.raises(exc, match=f"Failed to get Flow ns/f: HTTP {code}"):
        client.get_flow("f")


def test_create_conflict_is_already_exists() -> None:
    inner = mock.Mock()
    inner.create.side_effect = api_error(409)
    client = LightkubeClient("ns", client=inner)
    with pytest.raises(AlreadyExistsError):
        client.create_execution({"metadata": {"name": "x-1-1"}, "spec": {}})


def test_status_patches_use_the_status_subresource() -> None:
    inner = mock.Mock()
    inner.patch.return_value = {"metadata": {"name": "x"}}
    client = LightkubeClient("ns", client=inner)
    client.patch_execution_status("x", {"status": {"message": "m"}})
    client.json_patch_execution_status("x", [{"op": "add", "path": "/status/outputs", "value": {}}])
    client.patch_execution("x", {"spec": {"run": True}})
    calls: list[Any] = inner.patch.call_args_list
    assert (
        calls[0].args[0].__name__ != calls[2].args[0].__name__
        or calls[0].args[0] is not calls[2].args[0]
    )
    assert calls[0].args[0]._api_info.action == "status"
    assert calls[0].kwargs["patch_type"] is PatchType.MERGE
    assert calls[1].kwargs["patch_type"] is PatchType.JSON
    assert calls[2].args[0]._api_info.action is None
    assert calls[2].kwargs["patch_type"] is PatchType.MERGE


class _Clock:
    """An injected clock that the injected sleep advances (no real waiting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _client(inner: Any, clock: _Clock, retry_seconds: float = 60.0) -> LightkubeClient:
    return LightkubeClient(
        "ns", client=inner, retry_seconds=retry_seconds, sleep=clock.sleep, clock=clock
    )


def test_an_api_server_that_cannot_answer_yet_is_asked_again() -> None:
    """A restart of the API server: refused connections and 503s, then the answer."""
    request = httpx2.Request("GET", "https://127.0.0.1/x")
    inner = mock.Mock()
    inner.get.side_effect = [
        httpx2.ConnectError("Connection refused", request=request),
        api_error(503),
        api_error(429),
        {"metadata": {"name": "ex"}},
    ]
    clock = _Clock()
    assert _client(inner, clock).get_execution("ex") == {"metadata": {"name": "ex"}}
    assert inner.get.call_count == 4
    # Backing off, never more than a second at a time (SIGTERM stays prompt).
    assert clock.slept == [0.2, 0.4, 0.8]


def test_a_transient_failure_gives_up_after_the_retry_window() -> None:
    inner = mock.Mock()
    inner.get.side_effect = api_error(503)
    clock = _Clock()
    with pytest.raises(ApiRequestError, match="Failed to get Flow ns/f: HTTP 503"):
        _client(inner, clock, retry_seconds=5.0).get_flow("f")
    assert 4.9 <= clock.now <= 5.0
    assert max(clock.slept) <= 1.0


def test_an_unreachable_api_server_is_a_flow_api_error_in_the_end() -> None:
    request = httpx2.Request("GET", "https://127.0.0.1/x")
    inner = mock.Mock()
    inner.get.side_effect = httpx2.ConnectError("Connection refused", request=request)
    clock = _Clock()
    with pytest.raises(ApiRequestError, match="Failed to get Flow ns/f: Connection refused"):
        _client(inner, clock, retry_seconds=3.0).get_flow("f")
    assert inner.get.call_count > 2


@pytest.mark.parametrize("code", [400, 403, 404, 409, 422, 500])
def test_answers_that_will_not_change_are_not_retried(code: int) -> None:
    inner = mock.Mock()
    inner.get.side_effect = api_error(code)
    clock = _Clock()
    with pytest.raises(Exception, match=f"HTTP {code}"):
        _client(inner, clock).get_flow("f")
    assert inner.get.call_count == 1
    assert clock.slept == []
