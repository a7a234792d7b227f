"""What a call through a stored Connection may change, per built-in connector type.

The rule is ``kumulus.domain.connection.refused_overrides`` fed with each connector's declared
``call_inputs`` / ``call_refused_fields`` (what the executor does). Each type: every input that
picks the target, its TLS check or a credential is refused; every declared safe input passes;
``spec.allowedOverrides`` widens. The executor path (and ad-hoc calls) is in
``test_connectors_executor.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kumulus.connectors.base import Connector, ConnectorError
from kumulus.connectors.rest import RestConnector, build_request
from kumulus.connectors.smtp import SmtpConnector
from kumulus.connectors.sqlpg import SqlpgConnector
from kumulus.connectors.ssh import SshConnector
from kumulus.domain import connection as rules

pytestmark = pytest.mark.unit

BUILTINS: dict[str, type[Connector]] = {
    "REST": RestConnector,
    "SQLPG": SqlpgConnector,
    "SSH": SshConnector,
    "SMTP": SmtpConnector,
}

FORBIDDEN: dict[str, list[str]] = {
    "REST": [
        "url",
        "scheme",
        "host",
        "port",
        "base_path",
        "proxy",
        "verify",
        "allow_redirects",
        "username",
        "password",
        "bearer_token",
        "token",
        "cookies",
    ],
    "SQLPG": ["host", "port", "database", "user", "password", "ssl"],
    "SSH": [
        "host",
        "port",
        "username",
        "password",
        "key",
        "passphrase",
        "hostkey",
        "hostkey_check",
        "connect_timeout",
    ],
    "SMTP": [
        "smtp_host",
        "smtp_port",
        "use_tls",
        "starttls",
        "validate_certs",
        "login",
        "username",
        "password",
        "from",
    ],
}

ALLOWED: dict[str, dict[str, Any]] = {
    "REST": {
        "path": "/users",
        "method": "POST",
        "query": {"state": "open"},
        "params": "a=1",
        "headers": {"Accept": "application/json", "X-Request-Id": "1"},
        "json": {"k": "v"},
        "text": "body",
        "data": {"field": "x"},
        "expected_status_code": [200, 404],
    },
    "SQLPG": {
        "fetch": "SELECT 1",
        "fetchrow": "SELECT 1",
        "fetchval": "SELECT 1",
        "execute": "DELETE FROM t",
        "params": [1],
    },
    "SSH": {"script": "uptime", "check": True, "script_timeout": 5},
    "SMTP": {
        "to": ["a@example.test"],
        "cc": "b@example.test",
        "bcc": ["c@example.test"],
        "subject": "Hi",
        "text": "plain",
        "html": "<p>html</p>",
        "reply_to": "d@example.test",
    },
}

CASES = [(t, key) for t, keys in FORBIDDEN.items() for key in keys]
SAFE = [(t, key, value) for t, inputs in ALLOWED.items() for key, value in inputs.items()]


def refused(type_: str, inputs: dict[str, Any], widened: list[str] | None = None) -> list[str]:
    cls = BUILTINS[type_]
    return rules.refused_overrides(
        inputs, allowed=cls.call_inputs, refused_fields=cls.call_refused_fields, widened=widened
    )


@pytest.mark.parametrize(("type_", "key"), CASES)
def test_target_tls_and_credentials_are_refused(type_: str, key: str) -> None:
    assert refused(type_, {key: "http://attacker.test/steal"}) == [key]
    # Whatever the value: even the stored value or nothing at all.
    assert refused(type_, {key: None}) == [key]


@pytest.mark.parametrize(("type_", "key"), CASES)
def test_allowed_overrides_widen_each_refused_input(type_: str, key: str) -> None:
    assert refused(type_, {key: "x"}, widened=[key]) == []
    assert refused(type_, {key: "x", "other": 1}, widened=[key]) == ["other"]


@pytest.mark.parametrize(("type_", "key", "value"), SAFE)
def test_declared_safe_inputs_pass(type_: str, key: str, value: Any) -> None:
    assert refused(type_, {key: value}) == []


@pytest.mark.parametrize("type_", sorted(BUILTINS))
def test_the_declared_sets_are_exactly_these(type_: str) -> None:
    cls = BUILTINS[type_]
    assert set(cls.call_inputs) == set(ALLOWED[type_])
    assert not cls.call_inputs & cls.secret_keys  # never a credential
    assert not cls.call_inputs & set(FORBIDDEN[type_])
    # Every call may set its time limit (the executor's input, not the connector's).
    assert refused(type_, {"timeout": 10, **ALLOWED[type_]}) == []


@pytest.mark.parametrize(
    "header", ["Authorization", "authorization", "PROXY-AUTHORIZATION", "Cookie", "Host", " host"]
)
def test_rest_authentication_headers_are_refused(header: str) -> None:
    inputs = {"headers": {"Accept": "text/plain", header: "Bearer mine"}}
    assert refused("REST", inputs) == [f"headers.{header}"]
    # A JSON object string (the form a Secret key may hold) is checked the same way.
    assert refused("REST", {"headers": json.dumps(inputs["headers"])}) == [f"headers.{header}"]


def test_rest_headers_that_cannot_be_checked_are_refused() -> None:
    assert refused("REST", {"headers": "Authorization: Bearer x"}) == ["headers"]
    assert refused("REST", {"headers": ["Authorization", "x"]}) == ["headers"]
    assert refused("REST", {"headers": None}) == []


def test_widening_one_header_or_all_of_them() -> None:
    inputs = {"headers": {"authorization": "Bearer mine", "Cookie": "s=1"}}
    assert refused("REST", inputs, widened=["headers.Authorization"]) == ["headers.Cookie"]
    assert refused("REST", inputs, widened=["headers"]) == []
    assert refused("REST", inputs, widened=["headers.authorization", "headers.COOKIE"]) == []


def test_several_refusals_are_named_sorted_in_one_message() -> None:
    names = refused("REST", {"url": "http://a", "proxy": "http://b", "path": "/x"})
    assert names == ["proxy", "url"]
    message = rules.override_refused_message(
        "my-api", "REST", names, RestConnector.call_inputs, RestConnector.call_refused_fields
    )
    assert message.startswith("Connection my-api refused the per-call inputs proxy, url: ")
    assert "headers (without authorization, cookie, host, proxy-authorization)" in message
    assert "http://" not in message  # names only, never values
    assert message.endswith("list the input names in the Connection's spec.allowedOverrides.")


def test_a_plugin_that_declares_nothing_keeps_every_stored_value() -> None:
    class Plain(Connector):
        type = "PLAIN"

        async def run(self, inputs: Any, ctx: Any) -> dict[str, Any]:
            return {}

    result = rules.refused_overrides(
        {"host": "x", "timeout": 3},
        allowed=Plain.call_inputs,
        refused_fields=Plain.call_refused_fields,
    )
    assert result == ["host"]


@pytest.mark.parametrize(
    "path", ["../admin", "a/../../b", "%2e%2e/x", "%252e%252E/x", "a\\..\\b", "./x", "x/.."]
)
def test_rest_path_cannot_climb_out_of_the_stored_base(path: str) -> None:
    with pytest.raises(ConnectorError, match=r"must not contain '\.' or '\.\.' segments") as err:
        build_request({"url": "https://api.example.test/v2/tenant-a", "path": path})
    assert err.value.reason == "InvalidInputs"


@pytest.mark.parametrize("path", ["users/..x", "a.b/c", "...", "x?next=../y"])
def test_rest_paths_with_dots_that_stay_below_the_base_pass(path: str) -> None:
    url = build_request({"url": "https://api.example.test/v2", "path": path}).url
    assert url.startswith("https://api.example.test/v2/")
