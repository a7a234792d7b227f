"""The ``SQLPG`` connector: one query against PostgreSQL (asyncpg), results as JSON.

Cloudomation's SQLPG inputs: ``host``, ``port`` (5432), ``database``, ``user``, ``password``
and exactly one of ``fetch`` (all rows, a list of objects), ``fetchrow`` (the first row as an
object, or null), ``fetchval`` (the first column of the first row) or ``execute`` (the
command status, e.g. ``INSERT 0 1``), with ``params`` (a list bound to ``$1``, ``$2``...).
Optional ``ssl``: an asyncpg/libpq sslmode (``disable``, ``prefer``, ``require``,
``verify-ca``, ``verify-full``) or a boolean. Output: ``{"result": ...}``.

A call through a stored Connection may set only the query (``fetch``...) and ``params``
(``SqlpgConnector.call_inputs``).

Values are made JSON-safe both ways (also documented in ``docs/connectors-sqlpg-ssh.md``):

* results: ``Decimal`` (``numeric``) -> string (exact; ``float(...)`` it if you need a number),
  ``datetime``/``date``/``time`` -> ISO 8601 string, ``timedelta`` (``interval``) -> seconds
  as a float, ``bytes`` (``bytea``) -> base64 string, ``UUID``/network types -> string,
  ``json``/``jsonb`` -> the decoded value, arrays -> lists, records -> objects, a float NaN or
  infinity -> ``"NaN"``/``"Infinity"``/``"-Infinity"``;
* params: each is converted to the type PostgreSQL infers for its placeholder, so JSON inputs
  work without casts: an ISO string for a date/timestamp/time, a number or numeric string for
  ``numeric``, a base64 string for ``bytea``, any value for ``json``/``jsonb``, a number for a
  ``text`` placeholder becomes its text.

Calls through a Connection share a pool (asyncpg, created lazily, at most ``POOL_SIZE``
connections) keyed by the Connection and the values that define the target (host, port,
database, user, a hash of the password, ssl): changed values get a new pool, and the executor's
``discard`` (the Connection changed or was deleted) closes the Connection's pools. Ad-hoc calls
(``this.task('SQLPG', ...)``) use one connection and close it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import asyncpg  # type: ignore[import-untyped]  # no type hints; used as Any

from kumulus.connectors.base import (
    CallContext,
    Connector,
    ConnectorError,
    input_bool,
    input_int,
    input_str,
)

log = logging.getLogger(__name__)

QUERY_KEYS = ("fetch", "fetchrow", "fetchval", "execute")
SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
POOL_SIZE = 10
"""Most connections one pool opens (the executor bounds concurrency too)."""
MAX_POOLS = 32
"""Pools kept at once; the least recently used one is closed beyond that."""
CLOSE_TIMEOUT = 10.0


# --------------------------------------------------------------------------- JSON conversion


def json_safe(value: Any) -> Any:
    """A query result value as JSON (see the module docstring for the rules)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, asyncpg.Record):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, asyncpg.Range):
        return {
            "lower": json_safe(value.lower),
            "upper": json_safe(value.upper),
            "lower_inc": value.lower_inc,
            "upper_inc": value.upper_inc,
            "empty": value.isempty,
        }
    return str(value)  # network addresses, geometric types, bit strings, ...


def _bad_param(index: int, type_name: str, value: Any) -> ConnectorError:
    return ConnectorError(
        f"params[{index}] ({type(value).__name__}) cannot be used as {type_name} "
        f"(placeholder ${index + 1})",
        reason="InvalidInputs",
    )


def _parse_datetime(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T", 1))


def coerce_param(value: Any, type_name: str, index: int = 0) -> Any:
    """A JSON param as the Python value asyncpg encodes for a placeholder of ``type_name``.

    ``type_name`` is PostgreSQL's type name (``int4``, ``timestamptz``, ``_text`` for arrays).
    Values that already fit are returned unchanged; impossible ones raise ``InvalidInputs``.
    """
    if value is None:
        return None
    if type_name.startswith("_") and isinstance(value, list):  # arrays: element-wise
        return [coerce_param(v, type_name[1:], index) for v in value]
    try:
        return _coerce(value, type_name)
    except (ValueError, TypeError, decimal.InvalidOperation, OverflowError):
        raise _bad_param(index, type_name, value) from None


def _coerce(value: Any, type_name: str) -> Any:
    if type_name in ("json", "jsonb"):
        return value  # the connection's codec serialises any JSON value
    if type_name in ("text", "varchar", "bpchar", "name", "char", "citext", "unknown"):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str):
            return str(value)
        return json.dumps(value)
    if type_name in ("int2", "int4", "int8", "oid"):
        if isinstance(value, bool):
            raise TypeError("bool")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(value) if isinstance(value, int | str) else value
    if type_name in ("float4", "float8"):
        if isinstance(value, bool):
            raise TypeError("bool")
        return float(value) if isinstance(value, int | float | str) else value
    if type_name == "numeric":
        if isinstance(value, bool):
            raise TypeError("bool")
        if isinstance(value, int | float | str):
            return decimal.Decimal(str(value))
        return value
    if type_name == "bool":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "t", "yes", "on", "1"):
                return True
            if lowered in ("false", "f", "no", "off", "0"):
                return False
            raise ValueError(value)
        return value
    if isinstance(value, str):
        return _coerce_text(value, type_name)
    return value


def _coerce_text(value: str, type_name: str) -> Any:
    if type_name == "timestamptz":
        stamp = _parse_datetime(value)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    if type_name == "timestamp":
        stamp = _parse_datetime(value)
        return stamp.astimezone(dt.UTC).replace(tzinfo=None) if stamp.tzinfo else stamp
    if type_name == "date":
        return dt.date.fromisoformat(value.strip())
    if type_name in ("time", "timetz"):
        return dt.time.fromisoformat(value.strip())
    if type_name == "uuid":
        return uuid.UUID(value)
    if type_name == "bytea":
        return base64.b64decode(value, validate=True)
    if type_name in ("inet", "cidr"):
        return ipaddress.ip_interface(value) if "/" in value else ipaddress.ip_address(value)
    if type_name == "interval":
        return dt.timedelta(seconds=float(value))
    return value


# --------------------------------------------------------------------------- the connector


def _ssl(inputs: Mapping[str, Any]) -> str | bool | None:
    """The ``ssl`` input: an sslmode name, a boolean, or ``None`` (asyncpg's default)."""
    value = inputs.get("ssl")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in SSL_MODES:
        return value.strip().lower()
    try:
        return input_bool(inputs, "ssl", False)
    except ConnectorError:
        raise ConnectorError(
            f"input 'ssl' must be true, false or one of {', '.join(sorted(SSL_MODES))}",
            reason="InvalidInputs",
        ) from None


def _target(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The connection arguments of a call (validated); includes the password."""
    return {
        "host": input_str(inputs, "host"),
        "port": input_int(inputs, "port", 5432, minimum=1, maximum=65535),
        "database": input_str(inputs, "database", None),
        "user": input_str(inputs, "user"),
        "password": input_str(inputs, "password", None),
        "ssl": _ssl(inputs),
    }


def _pool_key(connection: str, target: Mapping[str, Any]) -> tuple[Any, ...]:
    password = target.get("password")
    digest = hashlib.sha256(password.encode()).hexdigest() if password is not None else None
    return (
        connection,
        target["host"],
        target["port"],
        target["database"],
        target["user"],
        digest,
        target["ssl"],
    )


def _query(inputs: Mapping[str, Any]) -> tuple[str, str]:
    given = [k for k in QUERY_KEYS if inputs.get(k) is not None]
    if len(given) != 1:
        raise ConnectorError(
            f"give exactly one of {', '.join(QUERY_KEYS)} (got {', '.join(given) or 'none'})",
            reason="InvalidInputs",
        )
    kind = given[0]
    sql = inputs[kind]
    if not isinstance(sql, str) or not sql.strip():
        raise ConnectorError(
            f"input {kind!r} must be a non-empty SQL string", reason="InvalidInputs"
        )
    return kind, sql


def _params(inputs: Mapping[str, Any]) -> list[Any]:
    params = inputs.get("params")
    if params is None:
        return []
    if not isinstance(params, list):
        raise ConnectorError("input 'params' must be a list", reason="InvalidInputs")
    return list(params)


async def _init_connection(conn: asyncpg.Connection) -> None:
    """json/jsonb as JSON values in both directions (asyncpg's default is text)."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


def _describe(target: Mapping[str, Any]) -> str:
    where = f"{target['host']}:{target['port']}"
    return f"{where}/{target['database']}" if target.get("database") else where


def _map_error(exc: BaseException, target: Mapping[str, Any]) -> ConnectorError:
    """A clear ConnectorError for what asyncpg or the network raised (never the password)."""
    where = _describe(target)
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return ConnectorError(
            f"PostgreSQL at {where} rejected the credentials: {exc}",
            reason="AuthenticationFailed",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConnectorError(f"PostgreSQL at {where}: {exc}", reason="DatabaseNotFound")
    if isinstance(exc, asyncpg.PostgresError):
        return ConnectorError(_postgres_message(exc), reason="QueryFailed")
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.DataError):
        return ConnectorError(f"SQL call rejected: {exc}", reason="InvalidInputs")
    if isinstance(exc, TimeoutError):
        return ConnectorError(f"PostgreSQL at {where} did not answer in time", reason="Timeout")
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return ConnectorError(
            f"connection refused by {target['host']}:{target['port']}", reason="ConnectionRefused"
        )
    if isinstance(exc, OSError):
        return ConnectorError(
            f"could not connect to {target['host']}:{target['port']}: {exc.strerror or exc}",
            reason="ConnectionFailed",
        )
    return ConnectorError(f"PostgreSQL call failed: {type(exc).__name__}: {exc}")


def _postgres_message(exc: asyncpg.PostgresError) -> str:
    code = getattr(exc, "sqlstate", None)
    text = f"SQL error {code}: {exc}" if code else f"SQL error: {exc}"
    for attr, label in (("detail", "Detail"), ("hint", "Hint")):
        extra = getattr(exc, attr, None)
        if extra:
            text += f" {label}: {extra}"
    return text


async def _call(
    conn: asyncpg.Connection, kind: str, sql: str, raw: list[Any], seconds: float
) -> Any:
    if kind == "execute" and not raw:
        # The simple query protocol: several statements separated by ";" are allowed.
        return await conn.execute(sql, timeout=seconds)
    stmt = await conn.prepare(sql, timeout=seconds)
    types = [t.name for t in stmt.get_parameters()]
    if len(types) != len(raw):
        raise ConnectorError(
            f"the query has {len(types)} placeholder(s) but {len(raw)} param(s) were given",
            reason="InvalidInputs",
        )
    args = [coerce_param(v, t, i) for i, (v, t) in enumerate(zip(raw, types, strict=True))]
    if kind == "fetch":
        return [json_safe(row) for row in await stmt.fetch(*args, timeout=seconds)]
    if kind == "fetchrow":
        row = await stmt.fetchrow(*args, timeout=seconds)
        return None if row is None else json_safe(row)
    if kind == "fetchval":
        return json_safe(await stmt.fetchval(*args, timeout=seconds))
    await stmt.fetch(*args, timeout=seconds)
    return stmt.get_statusmsg()


class SqlpgConnector(Connector):
    """PostgreSQL through asyncpg; a pool per Connection."""

    type: ClassVar[str] = "SQLPG"
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password"})
    call_inputs: ClassVar[frozenset[str]] = frozenset({*QUERY_KEYS, "params"})
    """A call through a stored Connection gives the query and its parameters; the server,
    database, user, password and ``ssl`` are the Connection's."""

    def __init__(self) -> None:
        self._pools: OrderedDict[tuple[Any, ...], asyncpg.Pool] = OrderedDict()
        self._lock = asyncio.Lock()

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> list[str]:
        problems: list[str] = []
        checks = (
            lambda: input_str(values, "host", None) if partial else input_str(values, "host"),
            lambda: input_str(values, "user", None) if partial else input_str(values, "user"),
            lambda: input_str(values, "database", None),
            lambda: input_str(values, "password", None),
            lambda: input_int(values, "port", None, minimum=1, maximum=65535),
            lambda: _params(values),
            lambda: _ssl(values),
        )
        for check in checks:
            try:
                check()
            except ConnectorError as exc:
                problems.append(exc.message)
        given = [k for k in QUERY_KEYS if values.get(k) is not None]
        if len(given) > 1 or (not partial and not given):
            problems.append(
                f"give exactly one of {', '.join(QUERY_KEYS)} (got {', '.join(given) or 'none'})"
            )
        for key in given:
            if not isinstance(values[key], str) or not values[key].strip():
                problems.append(f"input {key!r} must be a non-empty SQL string")
        return problems

    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        target = _target(inputs)
        kind, sql = _query(inputs)
        raw = _params(inputs)
        timeout = max(ctx.timeout, 0.1)
        try:
            if ctx.connection_key is None:
                conn = await asyncpg.connect(**target, timeout=timeout)
                try:
                    await _init_connection(conn)
                    result = await _call(conn, kind, sql, raw, timeout)
                finally:
                    await conn.close(timeout=CLOSE_TIMEOUT)
            else:
                pool = await self._pool(ctx.connection_key, target, timeout)
                async with pool.acquire(timeout=timeout) as conn:
                    result = await _call(conn, kind, sql, raw, timeout)
        except ConnectorError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _map_error(exc, target) from None
        return {"result": result}

    async def _pool(
        self, connection: str, target: Mapping[str, Any], seconds: float
    ) -> asyncpg.Pool:
        key = _pool_key(connection, target)
        async with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = await asyncpg.create_pool(
                **target,
                min_size=0,
                max_size=POOL_SIZE,
                timeout=seconds,
                init=_init_connection,
                max_inactive_connection_lifetime=300.0,
            )
            self._pools[key] = pool
            log.info(
                "Created a PostgreSQL pool for Connection %s (%s).", connection, _describe(target)
            )
            evicted = []
            while len(self._pools) > MAX_POOLS:
                evicted.append(self._pools.popitem(last=False))
        for old_key, old in evicted:
            await _close_pool(old)
            log.info("Closed the least recently used PostgreSQL pool of Connection %s.", old_key[0])
        return pool

    async def discard(self, namespace: str, name: str) -> None:
        connection = f"{namespace}/{name}"
        async with self._lock:
            doomed = [k for k in self._pools if k[0] == connection]
            pools = [self._pools.pop(k) for k in doomed]
        for pool in pools:
            await _close_pool(pool)
        if pools:
            log.info("Closed %d PostgreSQL pool(s) of Connection %s.", len(pools), connection)

    async def close(self) -> None:
        async with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            await _close_pool(pool)


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    except (TimeoutError, Exception):
        pool.terminate()
