"""SQLPG and SSH connections against real servers started by the test session.

Two layers: the connectors called directly against PostgreSQL and sshd (every failure mode, fast,
no cluster needed), then CONNECTION Executions through the real operator and a real flow Pod,
with the credentials in Secrets, asserting that the SQL password never shows up in the flow
Pod, its logs, any Execution (inputs or status), Events or the operator's log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from tests.e2e.servers import PostgresServer, SshServer

from kumulus.connectors.base import CallContext, ConnectorError
from kumulus.connectors.sqlpg import SqlpgConnector
from kumulus.connectors.ssh import SshConnector

pytestmark = pytest.mark.e2e

TERMINAL = ("Succeeded", "Failed", "Cancelled")


def ctx(connection: str | None = "ns/db", timeout: float = 30) -> CallContext:
    namespace, _, name = (connection or "ns/").partition("/")
    return CallContext(namespace=namespace, execution="e", connection=name or None, timeout=timeout)


def call(connector: Any, inputs: dict[str, Any], context: CallContext | None = None) -> Any:
    return asyncio.run(connector.run(inputs, context or ctx()))


def failure(connector: Any, inputs: dict[str, Any], context: CallContext | None = None) -> Any:
    with pytest.raises(ConnectorError) as info:
        call(connector, inputs, context)
    return info.value


# --------------------------------------------------------------------------- SQLPG, direct


@pytest.fixture
def pg(postgres_server: PostgresServer) -> dict[str, Any]:
    return {**postgres_server.values(), "password": postgres_server.password}


def test_sqlpg_fetch_fetchrow_fetchval_execute(pg: dict[str, Any]) -> None:
    async def scenario() -> list[Any]:
        c = SqlpgConnector()
        context = ctx("ns/db")
        run = c.run
        try:
            results = [
                await run({**pg, "execute": "DROP TABLE IF EXISTS items"}, context),
                await run(
                    {
                        **pg,
                        "execute": "CREATE TABLE items (id serial PRIMARY KEY, name text, "
                        "price numeric(8,2), seen timestamptz, tags text[], meta jsonb, "
                        "blob bytea, ref uuid)",
                    },
                    context,
                ),
                await run(
                    {
                        **pg,
                        "execute": "INSERT INTO items (name, price, seen, tags, meta, blob, ref) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        "params": [
                            "apple",
                            "1.50",
                            "2024-05-06T07:08:09Z",
                            ["red", "fruit"],
                            {"origin": "AT", "sizes": [1, 2]},
                            base64.b64encode(b"\x00\x01").decode(),
                            "12345678-1234-5678-1234-567812345678",
                        ],
                    },
                    context,
                ),
                await run(
                    {
                        **pg,
                        "execute": "INSERT INTO items (name, price) VALUES ($1, $2)",
                        "params": ["pear", 2],
                    },
                    context,
                ),
                await run({**pg, "fetch": "SELECT * FROM items ORDER BY id"}, context),
                await run(
                    {**pg, "fetchrow": "SELECT name FROM items WHERE price > $1", "params": [1.9]},
                    context,
                ),
                await run(
                    {**pg, "fetchrow": "SELECT name FROM items WHERE id = $1", "params": [99]},
                    context,
                ),
                await run({**pg, "fetchval": "SELECT count(*) FROM items"}, context),
                await run(
                    {
                        **pg,
                        "execute": "UPDATE items SET price = price + 1 WHERE name = $1",
                        "params": ["pear"],
                    },
                    context,
                ),
            ]
            pools = len(c._pools)
        finally:
            await c.close()
        return [*results, pools]

    (drop, create, insert1, insert2, rows, row, none, count, update, pools) = asyncio.run(
        scenario()
    )
    assert drop == {"result": "DROP TABLE"}
    assert create == {"result": "CREATE TABLE"}
    assert insert1 == insert2 == {"result": "INSERT 0 1"}
    assert rows["result"] == [
        {
            "id": 1,
            "name": "apple",
            "price": "1.50",
            "seen": "2024-05-06T07:08:09+00:00",
            "tags": ["red", "fruit"],
            "meta": {"origin": "AT", "sizes": [1, 2]},
            "blob": "AAE=",
            "ref": "12345678-1234-5678-1234-567812345678",
        },
        {
            "id": 2,
            "name": "pear",
            "price": "2.00",
            "seen": None,
            "tags": None,
            "meta": None,
            "blob": None,
            "ref": None,
        },
    ]
    assert row == {"result": {"name": "pear"}}
    assert none == {"result": None}
    assert count == {"result": 2}
    assert update == {"result": "UPDATE 1"}
    assert pools == 1  # every call of the Connection went through one pool
    json.dumps(rows, allow_nan=False)


def test_sqlpg_pool_is_discarded_when_the_connection_changes(pg: dict[str, Any]) -> None:
    async def scenario() -> tuple[int, int, int]:
        c = SqlpgConnector()
        await c.run({**pg, "fetchval": "SELECT 1"}, ctx("ns/db"))
        await c.run({**pg, "fetchval": "SELECT 1"}, ctx("ns/other"))
        before = len(c._pools)
        await c.discard("ns", "db")
        after = len(c._pools)
        await c.run({**pg, "fetchval": "SELECT 1"}, ctx(None))  # ad hoc: no pool
        adhoc = len(c._pools)
        await c.close()
        return before, after, adhoc

    assert asyncio.run(scenario()) == (2, 1, 1)


def test_sqlpg_refused_connection(pg: dict[str, Any]) -> None:
    from tests.local_servers import free_port

    port = free_port(pg["host"])
    err = failure(SqlpgConnector(), {**pg, "port": port, "fetchval": "SELECT 1"}, ctx(None))
    assert err.reason == "ConnectionRefused"
    assert f"connection refused by {pg['host']}:{port}" in err.message


def test_sqlpg_bad_credentials(pg: dict[str, Any]) -> None:
    err = failure(SqlpgConnector(), {**pg, "password": "wrong-pw-123", "fetchval": "SELECT 1"})
    assert err.reason == "AuthenticationFailed"
    assert 'password authentication failed for user "kumulus"' in err.message
    assert "wrong-pw-123" not in err.message


def test_sqlpg_sql_error(pg: dict[str, Any]) -> None:
    err = failure(SqlpgConnector(), {**pg, "fetch": "SELECT nosuchcolumn FROM pg_class"}, ctx(None))
    assert err.reason == "QueryFailed"
    assert err.message == 'SQL error 42703: column "nosuchcolumn" does not exist'


def test_sqlpg_query_timeout(pg: dict[str, Any]) -> None:
    err = failure(SqlpgConnector(), {**pg, "fetchval": "SELECT pg_sleep(30)"}, ctx(timeout=1))
    assert err.reason == "Timeout"
    assert "did not answer in time" in err.message


def test_sqlpg_param_mismatch_is_an_input_error(pg: dict[str, Any]) -> None:
    err = failure(SqlpgConnector(), {**pg, "fetchval": "SELECT $1::int", "params": []}, ctx(None))
    assert err.reason == "InvalidInputs"
    assert "1 placeholder(s) but 0 param(s)" in err.message
    err = failure(
        SqlpgConnector(), {**pg, "fetchval": "SELECT $1::int", "params": ["x"]}, ctx(None)
    )
    assert err.reason == "InvalidInputs"
    assert "params[0] (str) cannot be used as int4" in err.message


# --------------------------------------------------------------------------- SSH, direct


@pytest.fixture
def ssh(ssh_server: SshServer) -> dict[str, Any]:
    return {**ssh_server.values(), "key": ssh_server.key}


def test_ssh_script_retcode_stdout_stderr(ssh: dict[str, Any]) -> None:
    script = "echo out-line\necho err-line >&2\nprintf 'x=%s' \"$((6*7))\"\nexit 3\n"
    out = call(SshConnector(), {**ssh, "script": script})
    assert out == {
        "retcode": 3,
        "stdout": "out-line\nx=42",
        "stderr": "err-line\n",
        "report": "out-line\nx=42",
    }
    checked = failure(SshConnector(), {**ssh, "script": "exit 4", "check": True})
    assert checked.reason == "NonZeroExit"
    assert checked.outputs is not None and checked.outputs["retcode"] == 4


def test_ssh_wrong_password(ssh: dict[str, Any]) -> None:
    err = failure(
        SshConnector(), {**ssh, "key": None, "password": "not-the-password", "script": "true"}
    )
    assert err.reason == "AuthenticationFailed"
    assert "rejected the login of user" in err.message
    assert "not-the-password" not in err.message


def test_ssh_unknown_host_key_is_rejected(ssh: dict[str, Any], ssh_server: SshServer) -> None:
    err = failure(SshConnector(), {**ssh, "hostkey": ssh_server.other_hostkey, "script": "true"})
    assert err.reason == "HostKeyMismatch"
    assert "does not match 'hostkey'" in err.message
    # Only an explicit hostkey_check: false skips the check.
    unchecked = {**ssh, "hostkey": None, "hostkey_check": False, "script": "echo ok"}
    assert call(SshConnector(), unchecked)["stdout"] == "ok\n"


def test_ssh_script_timeout(ssh: dict[str, Any]) -> None:
    err = failure(SshConnector(), {**ssh, "script": "echo started; sleep 60", "script_timeout": 1})
    assert err.reason == "Timeout"
    assert "did not finish within 1 s" in err.message
    # What the script printed so far is kept (how much, depends on the machine's speed).
    assert err.outputs is not None and err.outputs["retcode"] == -1
    assert "started\n".startswith(err.outputs["stdout"])


def test_ssh_refused(ssh: dict[str, Any]) -> None:
    from tests.local_servers import free_port

    err = failure(SshConnector(), {**ssh, "port": free_port(), "script": "true"})
    assert err.reason == "ConnectionRefused"


# --------------------------------------------------------------------------- through the operator


def _doc(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    api = "v1" if kind == "Secret" else "kumulus.dev/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **fields}


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return _doc("Secret", name, stringData=data)


def _connection_execution(name: str, connection: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return _doc(
        "Execution",
        name,
        spec={"type": "CONNECTION", "connection": {"name": connection, "inputs": inputs}},
    )


FLOW = """
def handler(system, this):
    child = this.connect('pg', fetchrow='SELECT $1::int + 1 AS n, current_user AS who', params=[41])
    row = child.get('output_value')['result']
    this.log(row=row, values=system.connection('pg').get('values'))
    print('the row is', row)
    this.set_output('row', row)
"""


def test_sqlpg_connection_from_a_flow_keeps_the_password_out_of_the_flow(
    operator: Any,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    kubectl: Callable[..., Any],
    namespace: str,
    postgres_server: PostgresServer,
) -> None:
    password = postgres_server.password
    apply(
        [
            _secret("pg-credentials", {"password": password}),
            _doc(
                "Connection",
                "pg",
                spec={
                    "type": "SQLPG",
                    "values": postgres_server.values(),
                    "secretRef": {"name": "pg-credentials"},
                },
            ),
            _doc("Flow", "query", spec={"code": textwrap.dedent(FLOW)}),
            _doc("Execution", "q", spec={"type": "FLOW", "flowRef": {"name": "query"}}),
        ],
        namespace,
    )
    ex = wait_phase("q", namespace, TERMINAL, timeout=180)
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["outputs"] == {"row": {"n": 42, "who": postgres_server.user}}

    # The secret is nowhere a flow (or anyone without Secret access) can see it.
    pods = kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    assert json.loads(pods)["items"], "the flow Pod is gone"
    logs = kubectl("logs", "-n", namespace, "q-a1").stdout
    assert "the row is" in logs
    executions = kubectl("get", "executions", "-n", namespace, "-o", "json").stdout
    assert len(json.loads(executions)["items"]) == 2  # the flow and its CONNECTION child
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    for where, text in (
        ("flow Pod", pods),
        ("flow logs", logs),
        ("Executions", executions),
        ("Events", events),
        ("operator log", operator.log_path.read_text(errors="replace")),
    ):
        assert password not in text, f"the SQL password leaked into the {where}"


def test_sqlpg_failures_through_the_operator(
    operator: Any,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
    postgres_server: PostgresServer,
) -> None:
    wrong = "definitely-wrong-password"
    apply(
        [
            _secret("good", {"password": postgres_server.password}),
            _secret("bad", {"password": wrong}),
            _doc(
                "Connection",
                "pg",
                spec={
                    "type": "SQLPG",
                    "values": postgres_server.values(),
                    "secretRef": {"name": "good"},
                },
            ),
            _doc(
                "Connection",
                "pg-bad",
                spec={
                    "type": "SQLPG",
                    "values": postgres_server.values(),
                    "secretRef": {"name": "bad"},
                },
            ),
            _connection_execution("creds", "pg-bad", {"fetchval": "SELECT 1"}),
            _connection_execution("sql", "pg", {"execute": "SELECT nosuch FROM nowhere"}),
            _connection_execution(
                "ok", "pg", {"fetchval": "SELECT $1::text || '!'", "params": ["hi"]}
            ),
        ],
        namespace,
    )
    creds = wait_phase("creds", namespace, TERMINAL, timeout=120)
    assert creds["status"]["phase"] == "Failed"
    assert "rejected the credentials" in creds["status"]["statusMessage"]
    assert wrong not in json.dumps(creds)
    sql = wait_phase("sql", namespace, TERMINAL, timeout=120)
    assert sql["status"]["phase"] == "Failed"
    assert 'relation "nowhere" does not exist' in sql["status"]["statusMessage"]
    ok = wait_phase("ok", namespace, TERMINAL, timeout=120)
    assert ok["status"]["phase"] == "Succeeded", ok["status"]
    assert ok["status"]["outputs"] == {"result": "hi!"}


def test_ssh_connection_through_the_operator(
    operator: Any,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
    ssh_server: SshServer,
) -> None:
    apply(
        [
            _secret("ssh-key", {"key": ssh_server.key}),
            _doc(
                "Connection",
                "box",
                spec={
                    "type": "SSH",
                    "values": ssh_server.values(),
                    "secretRef": {"name": "ssh-key"},
                },
            ),
            _connection_execution("run", "box", {"script": "echo hello; echo warn >&2; exit 2"}),
        ],
        namespace,
    )
    ex = wait_phase("run", namespace, TERMINAL, timeout=120)
    assert ex["status"]["phase"] == "Succeeded", ex["status"]
    assert ex["status"]["outputs"] == {
        "retcode": 2,
        "stdout": "hello\n",
        "stderr": "warn\n",
        "report": "hello\n",
    }
    assert "PRIVATE KEY" not in json.dumps(ex)
