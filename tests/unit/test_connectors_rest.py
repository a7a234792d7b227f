"""The REST connector against a real aiohttp server on 127.0.0.1 (started by each test)."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kumulus.connectors.base import CallContext, ConnectorError
from kumulus.connectors.rest import RestConnector, build_request

pytestmark = pytest.mark.unit


def ctx(timeout: float = 10.0) -> CallContext:
    return CallContext(namespace="ns", execution="e", connection="api", timeout=timeout)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": {k: request.query.getall(k) for k in request.query},
            "auth": request.headers.get("Authorization"),
            "x": request.headers.get("X-Thing"),
            "cookie": request.headers.get("Cookie"),
            "content_type": request.headers.get("Content-Type"),
            "body": body.decode(),
        },
        headers={"X-Multi": "one"},
    )


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="nope")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo/after-redirect")


async def set_cookie(request: web.Request) -> web.Response:
    response = web.Response(text="set")
    response.set_cookie("session", "abc")
    return response


async def plain(request: web.Request) -> web.Response:
    return web.Response(text="hello", content_type="text/plain")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/cookie", set_cookie)
    app.router.add_get("/plain", plain)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def rest() -> AsyncIterator[RestConnector]:
    connector = RestConnector()
    yield connector
    await connector.close()


async def test_get_with_query_headers_and_json_output(server: str, rest: RestConnector) -> None:
    out = await rest.run(
        {
            "url": f"{server}/echo/v1",
            "path": "items",
            "query": {"a": 1, "tags": ["x", "y"]},
            "headers": {"X-Thing": "t"},
        },
        ctx(),
    )
    assert out["status_code"] == 200
    assert out["json"]["path"] == "/echo/v1/items"
    assert out["json"]["query"] == {"a": ["1"], "tags": ["x", "y"]}
    assert out["json"]["x"] == "t"
    assert out["headers"]["x-multi"] == "one"
    assert out["encoding"] == "utf-8"
    assert '"method": "GET"' in out["text"]


async def test_url_from_parts(server: str, rest: RestConnector) -> None:
    port = int(server.rsplit(":", 1)[1])
    out = await rest.run(
        {
            "scheme": "http",
            "host": "127.0.0.1",
            "port": port,
            "base_path": "/echo/api",
            "path": "x",
        },
        ctx(),
    )
    assert out["json"]["path"] == "/echo/api/x"


@pytest.mark.parametrize(
    ("body", "content_type", "sent"),
    [
        ({"json": {"k": [1, 2]}}, "application/json", '{"k":[1,2]}'),
        ({"text": "raw text"}, None, "raw text"),
        ({"data": {"a": "1", "b": "2"}}, "application/x-www-form-urlencoded", "a=1&b=2"),
    ],
)
async def test_post_bodies(
    server: str, rest: RestConnector, body: dict[str, Any], content_type: str | None, sent: str
) -> None:
    out = await rest.run({"url": f"{server}/echo/", "method": "post", **body}, ctx())
    assert out["json"]["method"] == "POST"
    assert out["json"]["body"].replace(" ", "") == sent.replace(" ", "")
    if content_type:
        assert out["json"]["content_type"].startswith(content_type)


async def test_basic_and_bearer_auth(server: str, rest: RestConnector) -> None:
    basic = await rest.run(
        {"url": f"{server}/echo/", "username": "bob", "password": "s3cret"}, ctx()
    )
    assert basic["json"]["auth"] == "Basic " + base64.b64encode(b"bob:s3cret").decode()
    bearer = await rest.run({"url": f"{server}/echo/", "bearer_token": "tok"}, ctx())
    assert bearer["json"]["auth"] == "Bearer tok"
    token = await rest.run({"url": f"{server}/echo/", "token": "tok2"}, ctx())
    assert token["json"]["auth"] == "Bearer tok2"


async def test_unexpected_status_fails_with_the_response(server: str, rest: RestConnector) -> None:
    with pytest.raises(ConnectorError) as err:
        await rest.run({"url": f"{server}/status/500"}, ctx())
    assert err.value.reason == "UnexpectedStatus"
    assert "returned 500 Internal Server Error, expected 200, 201, 202, 204" in err.value.message
    assert "nope" in err.value.message
    assert err.value.outputs is not None and err.value.outputs["status_code"] == 500


async def test_expected_status_code_forms(server: str, rest: RestConnector) -> None:
    for expected in (404, [404, 410], "404,500"):
        out = await rest.run(
            {"url": f"{server}/status/404", "expected_status_code": expected}, ctx()
        )
        assert out["status_code"] == 404
        assert out["json"] is None
        assert out["text"] == "nope"


async def test_redirects_followed_or_not(server: str, rest: RestConnector) -> None:
    followed = await rest.run({"url": f"{server}/redirect"}, ctx())
    assert followed["json"]["path"] == "/echo/after-redirect"
    kept = await rest.run(
        {"url": f"{server}/redirect", "allow_redirects": False, "expected_status_code": 302},
        ctx(),
    )
    assert kept["status_code"] == 302
    assert kept["headers"]["location"] == "/echo/after-redirect"


async def test_refused_connection(rest: RestConnector) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectorError) as err:
        await rest.run({"url": f"http://127.0.0.1:{port}/x?token=abc"}, ctx())
    assert err.value.reason == "ConnectionRefused"
    assert err.value.message == (
        f"GET http://127.0.0.1:{port}/x failed: connection refused by 127.0.0.1:{port}."
    )


async def test_timeout(server: str, rest: RestConnector) -> None:
    with pytest.raises(ConnectorError) as err:
        await rest.run({"url": f"{server}/slow"}, ctx(timeout=0.3))
    assert err.value.reason == "Timeout"
    assert "did not answer within 0.3s" in err.value.message


async def test_cookies_are_sent_and_never_shared_between_calls(
    server: str, rest: RestConnector
) -> None:
    await rest.run({"url": f"{server}/cookie"}, ctx())
    after = await rest.run({"url": f"{server}/echo/"}, ctx())
    assert after["json"]["cookie"] is None
    sent = await rest.run({"url": f"{server}/echo/", "cookies": {"c": "1"}}, ctx())
    assert sent["json"]["cookie"] == "c=1"


async def test_plain_text_has_no_json(server: str, rest: RestConnector) -> None:
    out = await rest.run({"url": f"{server}/plain"}, ctx())
    assert (out["text"], out["json"]) == ("hello", None)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "input 'url' or 'host' is required"),
        ({"url": "ftp://x"}, "absolute http:// or https:// URL"),
        ({"url": "http://x", "method": "FETCH"}, "input 'method' must be one of"),
        ({"url": "http://x", "json": {}, "text": "t"}, "at most one body input"),
        ({"url": "http://x", "token": "t", "username": "u", "password": "p"}, "not both"),
        ({"url": "http://x", "username": "u"}, "go together"),
        ({"url": "http://x", "expected_status_code": "abc"}, "status codes"),
        ({"url": "http://x", "headers": "not json"}, "JSON object string"),
        ({"host": "a", "port": 70000}, "at most 65535"),
    ],
)
def test_invalid_inputs(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConnectorError, match=message) as err:
        build_request(inputs)
    assert err.value.reason == "InvalidInputs"
    assert RestConnector().validate(inputs) != []


def test_partial_validation_allows_missing_url_but_not_wrong_values() -> None:
    rest = RestConnector()
    assert rest.validate({"headers": {"Accept": "application/json"}}, partial=True) == []
    problems = rest.validate(
        {"url": "nope", "method": "FETCH", "expected_status_code": [99]}, partial=True
    )
    assert len(problems) == 3


def test_headers_from_a_json_string_and_safe_url() -> None:
    req = build_request(
        {"url": "https://u:p@example.test:8443/a?b=c", "headers": '{"X-API-Key": "k"}'}
    )
    assert req.headers == {"X-API-Key": "k"}
    assert req.safe_url == "https://example.test:8443/a"
