"""The ``REST`` connector: one HTTP request with httpx, Cloudomation's input and output names.

Inputs (all optional unless said; a Connection's values, its Secret and the call merge):

==========================  ==========================================================
``url``                     the full URL; or the parts ``scheme`` (default ``https``),
                            ``host``, ``port``, ``base_path`` (one of both is required)
``path``                    appended to ``url`` or to ``base_path`` (no ``.``/``..``
                            segments, so it stays under the stored path)
``method``                  GET (default), POST, PUT, PATCH, DELETE, HEAD, OPTIONS
``query`` / ``params``      query parameters: a dict (list values repeat) or a string
``headers``, ``cookies``    dicts (``headers`` may also be a JSON object string, so a
                            Secret key can hold it)
``json`` / ``text`` /       the body, at most one: any JSON value / a string / a dict sent
``data``                    as a form (or a string sent as is)
``username``, ``password``  basic authentication
``bearer_token`` / ``token``  bearer authentication (not together with basic)
``expected_status_code``    an int, a list of ints or ``"200,201"``; default 200, 201,
                            202, 204. Another status fails the call (reason
                            ``UnexpectedStatus``) with the response still in the outputs
``allow_redirects``         follow redirects (default true)
``verify``                  verify TLS certificates (default true)
``proxy``                   an HTTP(S) proxy URL (environment proxy variables are not used)
``timeout``                 seconds for the whole call (taken by the executor; default 30)
==========================  ==========================================================

A call through a stored Connection may set only ``CALL_INPUTS`` (the request: path, query,
body, method, headers but ``AUTH_HEADERS``, expected status); the rest is the Connection's.

Outputs: ``status_code``, ``headers`` (a dict; repeated headers joined with ``", "``),
``json`` (the parsed body, ``None`` when it is not JSON), ``text``, ``encoding``.

httpx transports (connection pools) are shared per (``verify``, ``proxy``) and closed when
the executor stops; each call gets its own client, so cookies never pass between calls.
"""

from __future__ import annotations

import base64
import json as jsonlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from kumulus.connectors.base import (
    CallContext,
    Connector,
    ConnectorError,
    connection_refused,
    input_bool,
    input_int,
    input_str,
)

__all__ = ["DEFAULT_EXPECTED", "METHODS", "RestConnector", "RestRequest", "build_request"]

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
DEFAULT_EXPECTED: tuple[int, ...] = (200, 201, 202, 204)
BODY_KEYS = ("json", "text", "data")

CALL_INPUTS = frozenset(
    {"path", "method", "query", "params", "headers", *BODY_KEYS, "expected_status_code"}
)
"""What a call through a stored Connection may set: the request, not its target (``url``,
``scheme``, ``host``, ``port``, ``base_path``, ``proxy``), its TLS check (``verify``), its
redirect policy or its credentials (``username``, ``password``, ``bearer_token``, ``token``,
``cookies``)."""
AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "host"})
"""Headers a call through a stored Connection may not set: who the request is (credentials,
session cookies) and ``Host``, which picks the virtual host behind the stored address."""


def _invalid(message: str) -> ConnectorError:
    return ConnectorError(message, reason="InvalidInputs")


@dataclass
class RestRequest:
    """A REST call's inputs, checked and normalised (no I/O)."""

    method: str
    url: str
    params: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    body_kind: str | None = None
    body: Any = None
    auth: tuple[str, str] | None = None
    bearer: str | None = None
    expected: tuple[int, ...] = DEFAULT_EXPECTED
    allow_redirects: bool = True
    verify: bool = True
    proxy: str | None = None

    @property
    def safe_url(self) -> str:
        """The URL without user info and query, for messages."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _join(base: str, path: str) -> str:
    if not path:
        return base
    if not base:
        return path if path.startswith("/") else "/" + path
    return base.rstrip("/") + "/" + path.lstrip("/")


def _check_path(path: str) -> None:
    """A ``path`` may not climb out of the base path with ``.``/``..`` segments (also when
    percent-encoded, or with ``\\`` for ``/``, as some servers read them)."""
    decoded = path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(3):
        decoded = urllib.parse.unquote(decoded)
    segments = decoded.replace("\\", "/").split("/")
    if any(segment.strip() in (".", "..") for segment in segments):
        raise _invalid("input 'path' must not contain '.' or '..' segments")


def _url(inputs: Mapping[str, Any]) -> str:
    path = input_str(inputs, "path", None) or ""
    _check_path(path)
    url = input_str(inputs, "url", None)
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid("input 'url' must be an absolute http:// or https:// URL")
        if path:
            url = urllib.parse.urlunsplit(
                (parts.scheme, parts.netloc, _join(parts.path, path), parts.query, "")
            )
        return url
    host = input_str(inputs, "host", None)
    if not host:
        raise _invalid("input 'url' or 'host' is required")
    scheme = (input_str(inputs, "scheme", "https") or "https").lower()
    if scheme not in ("http", "https"):
        raise _invalid("input 'scheme' must be http or https")
    port = input_int(inputs, "port", None, minimum=1, maximum=65535)
    if "/" in host or "?" in host or "#" in host:
        raise _invalid("input 'host' must be a host name or address, not a URL")
    netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    base_path = input_str(inputs, "base_path", None) or ""
    return urllib.parse.urlunsplit((scheme, netloc, _join(_join("", base_path), path), "", ""))


def _expected(value: object) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_EXPECTED
    items: list[object]
    if isinstance(value, str):
        items = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    codes: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise _invalid("input 'expected_status_code' must be status codes")
        try:
            code = int(str(item))
        except ValueError:
            raise _invalid("input 'expected_status_code' must be status codes") from None
        if not 100 <= code <= 599:
            raise _invalid("input 'expected_status_code' must be between 100 and 599")
        codes.append(code)
    if not codes:
        raise _invalid("input 'expected_status_code' must name at least one status code")
    return tuple(codes)


def _str_dict(inputs: Mapping[str, Any], key: str, *, json_text: bool = False) -> dict[str, str]:
    value = inputs.get(key)
    if value is None:
        return {}
    if json_text and isinstance(value, str):
        try:
            value = jsonlib.loads(value)
        except ValueError:
            raise _invalid(f"input {key!r} must be an object (or a JSON object string)") from None
    if not isinstance(value, Mapping):
        raise _invalid(f"input {key!r} must be an object")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, Mapping | list) or v is None:
            raise _invalid(f"input {key!r}: the value of {str(k)!r} must be a string")
        out[str(k)] = "true" if v is True else "false" if v is False else str(v)
    return out


def _params(inputs: Mapping[str, Any]) -> Any:
    query = inputs.get("query")
    params = inputs.get("params")
    if query is not None and params is not None:
        if not (isinstance(query, Mapping) and isinstance(params, Mapping)):
            raise _invalid("inputs 'query' and 'params' can only be combined as objects")
        query = {**query, **params}
    value = query if query is not None else params
    if value is None:
        return None
    if isinstance(value, str):
        return value.lstrip("?")
    if not isinstance(value, Mapping):
        raise _invalid("input 'query' must be an object or a string")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, list | tuple):
            out[str(k)] = [str(x) for x in v]
        elif isinstance(v, Mapping):
            raise _invalid(f"input 'query': the value of {str(k)!r} must not be an object")
        elif v is not None:
            out[str(k)] = "true" if v is True else "false" if v is False else str(v)
    return out


def build_request(inputs: Mapping[str, Any]) -> RestRequest:
    """Check and normalise a call's inputs; raises ``ConnectorError(reason=InvalidInputs)``."""
    method = (input_str(inputs, "method", "GET") or "GET").upper()
    if method not in METHODS:
        raise _invalid(f"input 'method' must be one of {', '.join(sorted(METHODS))}")
    request = RestRequest(method=method, url=_url(inputs))
    request.params = _params(inputs)
    request.headers = _str_dict(inputs, "headers", json_text=True)
    request.cookies = _str_dict(inputs, "cookies")
    bodies = [k for k in BODY_KEYS if inputs.get(k) is not None]
    if len(bodies) > 1:
        raise _invalid(f"give at most one body input, not {' and '.join(bodies)}")
    if bodies:
        kind = bodies[0]
        value = inputs[kind]
        if kind == "text" and not isinstance(value, str):
            raise _invalid("input 'text' must be a string")
        if kind == "data" and not isinstance(value, str | Mapping):
            raise _invalid("input 'data' must be an object (a form) or a string")
        request.body_kind, request.body = kind, value
    bearer = input_str(inputs, "bearer_token", None) or input_str(inputs, "token", None)
    username = input_str(inputs, "username", None)
    password = input_str(inputs, "password", None)
    if bearer and (username or password):
        raise _invalid("give either username/password or bearer_token/token, not both")
    if (username is None) != (password is None):
        raise _invalid("inputs 'username' and 'password' go together")
    if username is not None and password is not None:
        request.auth = (username, password)
    request.bearer = bearer
    request.expected = _expected(inputs.get("expected_status_code"))
    request.allow_redirects = input_bool(inputs, "allow_redirects", True)
    request.verify = input_bool(inputs, "verify", True)
    proxy = input_str(inputs, "proxy", None)
    if proxy:
        parts = urllib.parse.urlsplit(proxy)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid("input 'proxy' must be an http:// or https:// URL")
    request.proxy = proxy or None
    return request


def _partial_checks(values: Mapping[str, Any]) -> list[str]:
    """Checks of stored values that may still lack the URL or credentials."""
    problems: list[str] = []
    checks = (
        lambda: input_str(values, "method", None),
        lambda: _expected(values.get("expected_status_code")),
        lambda: _str_dict(values, "headers", json_text=True),
        lambda: _str_dict(values, "cookies"),
        lambda: _params(values),
        lambda: input_bool(values, "allow_redirects", True),
        lambda: input_bool(values, "verify", True),
        lambda: input_int(values, "port", None, minimum=1, maximum=65535),
    )
    for check in checks:
        try:
            check()
        except ConnectorError as err:
            problems.append(err.message)
    method = values.get("method")
    if isinstance(method, str) and method.upper() not in METHODS:
        problems.append(f"input 'method' must be one of {', '.join(sorted(METHODS))}")
    url = values.get("url")
    if url is not None:
        try:
            _url({"url": url})
        except ConnectorError as err:
            problems.append(err.message)
    scheme = values.get("scheme")
    if isinstance(scheme, str) and scheme.lower() not in ("http", "https"):
        problems.append("input 'scheme' must be http or https")
    bearer = values.get("bearer_token") or values.get("token")
    if bearer and (values.get("username") or values.get("password")):
        problems.append("give either username/password or bearer_token/token, not both")
    bodies = [k for k in BODY_KEYS if values.get(k) is not None]
    if len(bodies) > 1:
        problems.append(f"give at most one body input, not {' and '.join(bodies)}")
    return problems


def _headers(response: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in response.headers.multi_items():
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def response_outputs(response: httpx.Response) -> dict[str, Any]:
    """The outputs of a response (JSON-safe)."""
    text = response.text
    parsed: Any = None
    if text.strip():
        try:
            parsed = jsonlib.loads(text)
        except ValueError:
            parsed = None
    return {
        "status_code": response.status_code,
        "headers": _headers(response),
        "json": parsed,
        "text": text,
        "encoding": response.encoding,
    }


class RestConnector(Connector):
    """HTTP requests (httpx)."""

    type: ClassVar[str] = "REST"
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password", "bearer_token", "token"})
    call_inputs: ClassVar[frozenset[str]] = CALL_INPUTS
    call_refused_fields: ClassVar[Mapping[str, frozenset[str]]] = {"headers": AUTH_HEADERS}

    def __init__(self) -> None:
        self._transports: dict[tuple[bool, str | None], httpx.AsyncHTTPTransport] = {}

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> list[str]:
        if partial:
            return _partial_checks(values)
        try:
            build_request(values)
        except ConnectorError as err:
            return [err.message]
        return []

    def derived_secrets(self, inputs: Mapping[str, Any]) -> list[str]:
        """The Basic credentials as sent (base64), so an echoing server cannot leak them."""
        username, password = inputs.get("username"), inputs.get("password")
        if username is None or password is None:
            return []
        raw = f"{username}:{password}".encode()
        return [base64.b64encode(raw).decode()]

    def _transport(self, verify: bool, proxy: str | None) -> httpx.AsyncHTTPTransport:
        key = (verify, proxy)
        transport = self._transports.get(key)
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=verify,
                proxy=proxy,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
            self._transports[key] = transport
        return transport

    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        request = build_request(inputs)
        headers = dict(request.headers)
        if request.bearer:
            headers["Authorization"] = f"Bearer {request.bearer}"
        client = httpx.AsyncClient(
            transport=self._transport(request.verify, request.proxy),
            follow_redirects=request.allow_redirects,
            timeout=httpx.Timeout(ctx.timeout),
            cookies=request.cookies or None,
            trust_env=False,
        )
        kwargs: dict[str, Any] = {"params": request.params, "headers": headers}
        if request.auth is not None:
            kwargs["auth"] = httpx.BasicAuth(*request.auth)
        if request.body_kind == "json":
            kwargs["json"] = request.body
        elif request.body_kind == "text":
            kwargs["content"] = str(request.body).encode()
        elif request.body_kind == "data":
            if isinstance(request.body, str):
                kwargs["content"] = request.body.encode()
            else:
                kwargs["data"] = {str(k): v for k, v in request.body.items()}
        where = f"{request.method} {request.safe_url}"
        try:
            response = await client.request(request.method, request.url, **kwargs)
        except httpx.TimeoutException as exc:
            raise ConnectorError(
                f"{where} did not answer within {ctx.timeout:g}s ({type(exc).__name__}).",
                reason="Timeout",
            ) from None
        except httpx.ConnectError as exc:
            netloc = urllib.parse.urlsplit(request.safe_url).netloc
            if connection_refused(exc):
                raise ConnectorError(
                    f"{where} failed: connection refused by {netloc}.", reason="ConnectionRefused"
                ) from None
            raise ConnectorError(
                f"{where} failed: could not connect to {netloc}: {exc}", reason="ConnectionFailed"
            ) from None
        except httpx.TooManyRedirects as exc:
            raise ConnectorError(f"{where} failed: {exc}", reason="TooManyRedirects") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ConnectorError(f"{where}: {exc}", reason="InvalidInputs") from None
        except httpx.HTTPError as exc:
            raise ConnectorError(
                f"{where} failed: {type(exc).__name__}: {exc}", reason="RemoteError"
            ) from None
        outputs = response_outputs(response)
        if response.status_code not in request.expected:
            snippet = response.text[:500]
            expected = ", ".join(str(c) for c in request.expected)
            raise ConnectorError(
                f"{where} returned {response.status_code} {response.reason_phrase}, "
                f"expected {expected}. Response: {snippet}",
                reason="UnexpectedStatus",
                outputs=outputs,
            )
        return outputs

    async def close(self) -> None:
        transports = list(self._transports.values())
        self._transports.clear()
        for transport in transports:
            await transport.aclose()
