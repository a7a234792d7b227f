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
