"""The pure parts of the SQLPG and SSH connectors: value conversion, validation, error mapping.

The calls themselves are tested against real servers in tests/e2e/test_connections_sqlpg_ssh.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import uuid
from typing import Any

import asyncpg
import asyncssh
import pytest

from kumulus.connectors import get_connector
from kumulus.connectors.base import CallContext, ConnectorError
from kumulus.connectors.sqlpg import SqlpgConnector, coerce_param, json_safe
from kumulus.connectors.ssh import SshConnector, outputs_of, parse_hostkeys

pytestmark = pytest.mark.unit

KEY = asyncssh.generate_private_key("ssh-ed25519")
PUBLIC = KEY.export_public_key().decode().strip()
PRIVATE = KEY.export_private_key().decode()


def test_registry_serves_both_types() -> None:
    assert isinstance(get_connector("SQLPG"), SqlpgConnector)
    assert isinstance(get_connector("SSH"), SshConnector)
    assert SqlpgConnector.secret_keys == {"password"}
    assert {"password", "key", "passphrase"} <= SshConnector.secret_keys


# --------------------------------------------------------------------------- SQLPG values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (decimal.Decimal("1.10"), "1.10"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2024-01-02T03:04:05+00:00"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.time(3, 4, 5), "03:04:05"),
        (dt.timedelta(minutes=1, seconds=30), 90.0),
        (b"\x00\xffhi", "AP9oaQ=="),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
        ([decimal.Decimal(1), None, [b"a"]], ["1", None, ["YQ=="]]),
        ({"k": dt.date(2024, 1, 1)}, {"k": "2024-01-01"}),
        (
            asyncpg.Range(1, 5),
            {"lower": 1, "upper": 5, "lower_inc": True, "upper_inc": False, "empty": False},
        ),
        (True, True),
        (7, 7),
    ],
)
def test_json_safe(value: Any, expected: Any) -> None:
    result = json_safe(value)
    assert result == expected
    json.dumps(result, allow_nan=False)  # really JSON


@pytest.mark.parametrize(
    ("value", "type_name", "expected"),
    [
        ("2024-01-02T03:04:05Z", "timestamptz", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ("2024-01-02 03:04:05", "timestamp", dt.datetime(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02", "date", dt.date(2024, 1, 2)),
        ("1.50", "numeric", decimal.Decimal("1.50")),
        (2, "numeric", decimal.Decimal(2)),
        (3.0, "int4", 3),
        ("42", "int8", 42),
        (5, "text", "5"),
        (True, "text", "true"),
        ("yes", "bool", True),
        ("aGk=", "bytea", b"hi"),
        ("00000000-0000-0000-0000-000000000001", "uuid", uuid.UUID(int=1)),
        ({"a": [1]}, "jsonb", {"a": [1]}),
        ([1, "2"], "_int4", [1, 2]),
        (None, "int4", None),
        ("plain", "unknown", "plain"),
    ],
)
def test_coerce_param(value: Any, type_name: str, expected: Any) -> None:
    assert coerce_param(value, type_name) == expected


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("abc", "int4"), (True, "int4"), ("2024-13-01", "date"), ("nope", "bool"), ("%%", "bytea")],
)
def test_coerce_param_rejects_clearly(value: Any, type_name: str) -> None:
    with pytest.raises(ConnectorError) as info:
        coerce_param(value, type_name, 1)
    assert info.value.reason == "InvalidInputs"
    assert f"params[1] ({type(value).__name__}) cannot be used as {type_name}" in info.value.message


# --------------------------------------------------------------------------- SQLPG validation


def test_sqlpg_validate_full_and_partial() -> None:
    c = SqlpgConnector()
    ok = {"host": "db", "user": "u", "fetchval": "SELECT 1"}
    assert c.validate(ok) == []
    assert c.validate({"host": "db"}, partial=True) == []
    assert c.validate({"host": "db", "user": "u"}) == [
        "give exactly one of fetch, fetchrow, fetchval, execute (got none)"
    ]
    problems = c.validate(
        {"port": "x", "fetch": "a", "execute": "b", "params": "no", "ssl": "sometimes"}
    )
    assert "input 'host' is required" in problems
    assert "input 'user' is required" in problems
    assert "input 'port' must be an integer" in problems
    assert "input 'params' must be a list" in problems
    assert any(p.startswith("input 'ssl' must be true, false or one of") for p in problems)
    assert "give exactly one of fetch, fetchrow, fetchval, execute (got fetch, execute)" in problems
    assert c.validate({"fetch": "  "}, partial=True) == [
        "input 'fetch' must be a non-empty SQL string"
    ]


def test_sqlpg_run_rejects_bad_inputs_before_connecting() -> None:
    ctx = CallContext(namespace="ns", execution="e", connection=None, timeout=5)
    with pytest.raises(ConnectorError) as info:
        asyncio.run(SqlpgConnector().run({"host": "127.0.0.1", "user": "u"}, ctx))
    assert info.value.reason == "InvalidInputs"


# --------------------------------------------------------------------------- SSH


def test_parse_hostkeys_accepts_key_and_known_hosts_lines() -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    keys = parse_hostkeys(f"# pinned\n{PUBLIC}\n[db.example]:2222,10.0.0.1 {other}\n")
    wanted = [asyncssh.import_public_key(k).public_data for k in (PUBLIC, other)]
    assert [k.public_data for k in keys] == wanted


@pytest.mark.parametrize("text", ["", "# only a comment", "ssh-ed25519 notbase64!!"])
def test_parse_hostkeys_rejects_non_keys(text: str) -> None:
    with pytest.raises(ConnectorError) as info:
        parse_hostkeys(text)
    assert info.value.reason == "InvalidInputs"


def test_ssh_validate() -> None:
    c = SshConnector()
    good = {"host": "h", "username": "u", "key": PRIVATE, "hostkey": PUBLIC, "script": "true"}
    assert c.validate(good) == []
    assert c.validate({"host": "h"}, partial=True) == []
    unchecked = {**good, "hostkey": None, "hostkey_check": False}
    assert c.validate(unchecked) == []
    problems = c.validate({"host": "h", "username": "u", "script": "x"})
    assert any("input 'hostkey' is required" in p for p in problems)
    assert "give 'password' or 'key' to log in" in problems
    bad_key = c.validate({**good, "key": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretstuff\n"})
    assert bad_key == [
        "input 'key' is not a usable private key (OpenSSH or PEM text; "
        "give 'passphrase' for an encrypted key)"
    ]
    assert "secretstuff" not in " ".join(bad_key)
    assert "input 'script_timeout' must be greater than 0" in c.validate(
        {**good, "script_timeout": 0}
    )
    assert "input 'hostkey_check' must be true or false" in c.validate(
        {**good, "hostkey_check": "maybe"}, partial=True
    )


def test_ssh_outputs() -> None:
    assert outputs_of(0, None, "out\n", "") == {
        "retcode": 0,
        "stdout": "out\n",
        "stderr": "",
        "report": "out\n",
    }
    killed = outputs_of(None, ("TERM", False, "", ""), b"\xffpartial", None)
    assert killed["retcode"] == -1 and killed["signal"] == "TERM"
    assert killed["stdout"] == "\ufffdpartial" and killed["stderr"] == ""
    long = outputs_of(0, None, "x" * 70000 + "END", "")
    assert long["stdout_truncated"] is True and long["stdout"].endswith("END")
    assert len(long["stdout"]) == 65536


def test_ssh_run_without_hostkey_refuses_before_connecting() -> None:
    ctx = CallContext(namespace="ns", execution="e", connection=None, timeout=5)
    inputs = {
        "host": "127.0.0.1",
        "port": 9,
        "username": "u",
        "password": "hunter2-secret",
        "script": "true",
    }
    with pytest.raises(ConnectorError) as info:
        asyncio.run(SshConnector().run(inputs, ctx))
    assert info.value.reason == "InvalidInputs"
    assert "hostkey" in info.value.message and "hunter2-secret" not in info.value.message
