"""The connector plugin interface and registry: how Kumulus calls third-party systems.

A CONNECTION execution (``this.connect(...)``, ``this.task('REST', ...)``) is run by the
connection executor inside Kumulus, never in the flow's Pod, so credentials stay out of
flow Pods. The executor does everything that is the same for every connector type and a
``Connector`` does only the call. The contract, in one place:

What the executor does (connectors must not repeat it):
  * refuses, for a call through a stored Connection, every per-call input the connector
    does not list in ``call_inputs`` (nor the Connection in ``spec.allowedOverrides``):
    reason ``OverrideRefused``, before the Secret is read (the rule is
    ``kumulus.domain.connection.refused_overrides``). Ad-hoc calls take every input;
  * merges the inputs: the Connection's ``spec.values``, then the keys of its
    ``spec.secretRef`` Secret (decoded to ``str``), then the Execution's per-call
    ``spec.connection.inputs`` (later wins);
  * takes the ``timeout`` input out of the inputs (default: the setting
    ``connection_timeout_seconds``, 30 s) and hands it over as ``CallContext.timeout``; it
    enforces it as a hard deadline a little later (a grace period) by cancelling the task,
    so a connector that honours ``timeout`` in its client library reports the clearer error;
  * calls ``validate(inputs, partial=False)`` first and fails the execution with reason
    ``InvalidInputs`` on any problem, then ``await run(inputs, ctx)``;
  * interrupts ``run`` with ``asyncio.CancelledError`` (and sets ``ctx.cancel``) when the
    execution's ``desiredState`` becomes ``Cancelled`` or the deadline passes: let the
    ``CancelledError`` propagate; release resources in ``finally``/``async with``;
  * writes the returned dict to ``status.outputs`` and the phase; scrubs every value that
    came from the Secret, and every input named in ``secret_keys``, out of error messages
    and outputs before they are written anywhere (status, events, logs).

What a connector does:
  * ``type``: the upper-case type name (``REST``); ``secret_keys``: the input keys whose
    values are secrets (``password``, ``token``...), scrubbed even when given per call;
    optionally ``derived_secrets(inputs)``: forms the call builds from secrets (scrubbed too);
  * ``call_inputs``: the input keys a call through a stored Connection may set, i.e. what the
    call is about (a path, a query, a message), never where it goes or who it is (host, port,
    URL, proxy, TLS verification, credentials); ``call_refused_fields``: fields a call may
    not set inside one of those object inputs (REST: the authentication headers). The
    default is none: a plugin that declares nothing keeps every stored value;
  * ``validate(values, partial=...)``: a static check without I/O returning human messages.
    ``partial=True`` is used for a Connection's stored values (Ready condition): flag wrong
    types and bad values, but not missing keys a call may still supply. ``partial=False``
    is used for the merged inputs of a call: required keys must be present;
  * ``run(inputs, ctx)``: do the call and return a JSON-safe ``dict`` (str keys; str, int,
    float, bool, None, list, dict values) that becomes ``status.outputs``. On failure raise
    ``ConnectorError(message, reason=...)``: the message is what the user reads in
    ``status.message`` (the remote error, e.g. ``connection refused to 127.0.0.1:5432``),
    never containing a secret value. Unexpected exceptions become reason ``ConnectorError``
    with their text (scrubbed), so prefer a deliberate ``ConnectorError``;
  * optionally ``discard(namespace, name)`` (a Connection changed or was deleted: drop its
    pooled clients) and ``close()`` (process shutdown: close every pool). Pools are keyed
    with ``ctx.connection_key`` plus whatever inputs define the target (host, user...).

One instance of each connector class serves every call of its type in a process, so keep
per-call state in local variables; ``run`` is awaited concurrently (bounded by the setting
``connection_concurrency``).

Registry: ``get_connector(type)`` returns that instance, loading the built-in types
(``BUILTIN_CONNECTORS``) and plugins registered under the entry point group
``kumulus.connectors`` (entry point name = type, object = a ``Connector`` subclass), e.g. in
a plugin's ``pyproject.toml``::

    [project.entry-points."kumulus.connectors"]
    FTP = "kumulus_ftp:FtpConnector"

A plugin cannot replace a built-in type. Built-ins are imported lazily, so a missing client
library only breaks its own type (Ready=False, reason ``ConnectorUnavailable``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, overload

__all__ = [
    "BUILTIN_CONNECTORS",
    "ENTRY_POINT_GROUP",
    "TYPE_PATTERN",
    "CallContext",
    "Connector",
    "ConnectorError",
    "ConnectorUnavailableError",
    "UnknownConnectorTypeError",
    "clear_registry",
    "connection_refused",
    "get_connector",
    "input_bool",
    "input_float",
    "input_int",
    "input_str",
    "input_str_list",
    "known_types",
    "loaded_connectors",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kumulus.connectors"
"""The entry point group plugins register connector classes under (name = type)."""

TYPE_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
"""What a connector type name looks like (the same rule as ``Connection.spec.type``)."""

BUILTIN_CONNECTORS: Mapping[str, str] = {
    "REST": "kumulus.connectors.rest:RestConnector",
    "SMTP": "kumulus.connectors.smtp:SmtpConnector",
    "SQLPG": "kumulus.connectors.sqlpg:SqlpgConnector",
    "SSH": "kumulus.connectors.ssh:SshConnector",
}
"""Built-in connector types and the ``module:Class`` implementing each (imported lazily)."""


class ConnectorError(Exception):
    """A connector call failed; ``message`` is shown to users and must hold no secret.

    ``reason`` is a CamelCase word for ``status.reason`` (e.g. ``ConnectionRefused``,
    ``Timeout``, ``AuthenticationFailed``, ``UnexpectedStatus``, ``InvalidInputs``,
    ``RemoteError``). ``outputs`` optionally carries partial, JSON-safe outputs that are
    still written to ``status.outputs`` (e.g. the response of an unexpected HTTP status).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "ConnectorError",
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.outputs: dict[str, Any] | None = dict(outputs) if outputs is not None else None


class UnknownConnectorTypeError(LookupError):
    """No built-in or plugin connector has this type."""


class ConnectorUnavailableError(RuntimeError):
    """The connector type is known but could not be loaded (missing library, bad plugin)."""


@dataclass(frozen=True)
class CallContext:
    """What a connector knows about the call besides its inputs."""

    namespace: str
    """Namespace of the Execution (and of the Connection, if any)."""
    execution: str
    """Name of the CONNECTION Execution being run."""
    connection: str | None
    """Name of the Connection whose values were used, ``None`` for an ad-hoc call."""
    timeout: float
    """Seconds the call may take; pass it to the client library's own timeouts."""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the call is cancelled or timed out; for code that cannot be interrupted by
    ``asyncio.CancelledError`` (e.g. work in a thread)."""

    @property
    def connection_key(self) -> str | None:
        """``namespace/name`` of the Connection, for keying pools; ``None`` when ad hoc."""
        return f"{self.namespace}/{self.connection}" if self.connection else None


class Connector(ABC):
    """A connector type: one instance per process serves every call of its type."""

    type: ClassVar[str]
    """The type name, e.g. ``REST``; matches ``TYPE_PATTERN``."""
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    """Input keys whose values are secrets: scrubbed from messages and outputs."""
    call_inputs: ClassVar[frozenset[str]] = frozenset()
    """Input keys a call through a stored Connection may set (``this.connect('name', ...)``).

    Only what the call is about: never the target (scheme, host, port, URL, base path,
    proxy), TLS verification or a credential, so flow code cannot send the Connection's
    Secret somewhere else. Any other key given per call fails the call (``OverrideRefused``)
    unless the Connection lists it in ``spec.allowedOverrides``; ``timeout`` is always
    allowed. Ad-hoc calls (no Connection, so no stored credentials) take every input."""
    call_refused_fields: ClassVar[Mapping[str, frozenset[str]]] = {}
    """For object inputs in ``call_inputs``: the fields (lower case, compared
    case-insensitively) a call may not set in them, e.g. ``{"headers":
    frozenset({"authorization"})}``. Such an input given per call must be an object (or a
    JSON object string); anything else is refused, since its fields cannot be checked."""

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> list[str]:
        """Return problems with ``values`` as human messages (no I/O, no secret in them).

        ``partial=True``: a Connection's stored values (missing keys are fine).
        ``partial=False``: the merged inputs of a call (required keys must be present).
        """
        return []

    def derived_secrets(self, inputs: Mapping[str, Any]) -> list[str]:
        """Secret forms the call creates from its inputs, scrubbed too (e.g. the base64 of
        ``user:password`` in a Basic auth header a server may echo). Default: none."""
        return []

    @abstractmethod
    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Make the call and return JSON-safe outputs; raise ``ConnectorError`` on failure."""

    async def discard(self, namespace: str, name: str) -> None:  # noqa: B027
        """Drop pooled clients of the Connection ``namespace/name`` (changed or deleted)."""

    async def close(self) -> None:  # noqa: B027
        """Close every pooled client; called once when the process shuts down."""


# --------------------------------------------------------------------------- registry

_lock = threading.Lock()
_instances: dict[str, Connector] = {}


def _load_class(target: str) -> type[Connector]:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return _check_class(obj, target)


def _check_class(obj: object, origin: str) -> type[Connector]:
    if not (isinstance(obj, type) and issubclass(obj, Connector)):
        raise ConnectorUnavailableError(f"{origin} is not a kumulus Connector subclass")
    return obj


def _plugin_entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_CONNECTORS:
            logger.warning(
                "Ignored connector plugin %s (%s): %s is a built-in type.",
                ep.name,
                ep.value,
                ep.name,
            )
            continue
        if not TYPE_PATTERN.match(ep.name):
            logger.warning(
                "Ignored connector plugin %s (%s): not a valid type name.", ep.name, ep.value
            )
            continue
        found[ep.name] = ep
    return found


def known_types() -> list[str]:
    """All connector types: built-ins and installed plugins (sorted; none loaded)."""
    return sorted(set(BUILTIN_CONNECTORS) | set(_plugin_entry_points()))


def get_connector(type_: str) -> Connector:
    """The process-wide connector instance for ``type_``.

    Raises ``UnknownConnectorTypeError`` when no built-in or plugin has the type and
    ``ConnectorUnavailableError`` when it cannot be imported or instantiated.
    """
    with _lock:
        existing = _instances.get(type_)
        if existing is not None:
            return existing
        try:
            if type_ in BUILTIN_CONNECTORS:
                cls = _load_class(BUILTIN_CONNECTORS[type_])
            else:
                ep = _plugin_entry_points().get(type_)
                if ep is None:
                    raise UnknownConnectorTypeError(
                        f"unknown connector type {type_!r} (known: {', '.join(known_types())})"
                    )
                cls = _check_class(ep.load(), f"entry point {ep.name} = {ep.value}")
            instance = cls()
        except (UnknownConnectorTypeError, ConnectorUnavailableError):
            raise
        except Exception as exc:
            raise ConnectorUnavailableError(
                f"connector type {type_} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if getattr(cls, "type", type_) != type_:
            raise ConnectorUnavailableError(
                f"connector class for {type_} declares type {cls.type!r}"
            )
        _instances[type_] = instance
        logger.info("Loaded connector type %s (%s).", type_, cls.__qualname__)
        return instance


def loaded_connectors() -> list[Connector]:
    """The connector instances created so far (for ``discard``/``close``)."""
    with _lock:
        return list(_instances.values())


def clear_registry() -> None:
    """Forget every instance (tests; after ``close``)."""
    with _lock:
        _instances.clear()


# --------------------------------------------------------------------------- input helpers
# Small typed accessors so every connector reports bad inputs the same way. They raise
# ConnectorError(reason="InvalidInputs"); their messages name the key, never the value of a
# key listed in ``secret_keys``.

_MISSING: Any = object()


def connection_refused(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception in its cause/context chain is a refused connection.

    Client libraries wrap the socket's ``ConnectionRefusedError`` (sometimes only as text), so
    the chain is searched; each exception is looked at once, even if the chain loops.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or "refused" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _invalid(message: str) -> ConnectorError:
    return ConnectorError(message, reason="InvalidInputs")


@overload
def input_str(inputs: Mapping[str, Any], key: str) -> str: ...
@overload
def input_str(inputs: Mapping[str, Any], key: str, default: str) -> str: ...
@overload
def input_str(inputs: Mapping[str, Any], key: str, default: None) -> str | None: ...
def input_str(inputs: Mapping[str, Any], key: str, default: str | None = _MISSING) -> str | None:
    """``inputs[key]`` as a string; numbers are converted. Missing: ``default`` or an error."""
    value = inputs.get(key)
    if value is None:
        if default is _MISSING:
            raise _invalid(f"input {key!r} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _invalid(f"input {key!r} must be a string, got {type(value).__name__}")
    return str(value)


@overload
def input_int(
    inputs: Mapping[str, Any],
    key: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int: ...
@overload
def input_int(
    inputs: Mapping[str, Any],
    key: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int: ...
@overload
def input_int(
    inputs: Mapping[str, Any],
    key: str,
    default: None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None: ...
def input_int(
    inputs: Mapping[str, Any],
    key: str,
    default: int | None = _MISSING,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """``inputs[key]`` as an int (integral strings accepted), optionally range-checked."""
    value = inputs.get(key)
    if value is None:
        if default is _MISSING:
            raise _invalid(f"input {key!r} is required")
        return default
    result: int
    if isinstance(value, bool):
        raise _invalid(f"input {key!r} must be an integer, got bool")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        result = int(value.strip())
    else:
        raise _invalid(f"input {key!r} must be an integer")
    if minimum is not None and result < minimum:
        raise _invalid(f"input {key!r} must be at least {minimum}")
    if maximum is not None and result > maximum:
        raise _invalid(f"input {key!r} must be at most {maximum}")
    return result


@overload
def input_float(inputs: Mapping[str, Any], key: str, *, positive: bool = False) -> float: ...
@overload
def input_float(
    inputs: Mapping[str, Any], key: str, default: float, *, positive: bool = False
) -> float: ...
@overload
def input_float(
    inputs: Mapping[str, Any], key: str, default: None, *, positive: bool = False
) -> float | None: ...
def input_float(
    inputs: Mapping[str, Any],
    key: str,
    default: float | None = _MISSING,
    *,
    positive: bool = False,
) -> float | None:
    """``inputs[key]`` as a finite float (numeric strings accepted)."""
    value = inputs.get(key)
    if value is None:
        if default is _MISSING:
            raise _invalid(f"input {key!r} is required")
        return default
    if isinstance(value, bool):
        raise _invalid(f"input {key!r} must be a number, got bool")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise _invalid(f"input {key!r} must be a number") from None
    if not math.isfinite(result):
        raise _invalid(f"input {key!r} must be a finite number")
    if positive and result <= 0:
        raise _invalid(f"input {key!r} must be greater than 0")
    return result


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def input_bool(inputs: Mapping[str, Any], key: str, default: bool) -> bool:
    """``inputs[key]`` as a bool (``"true"``/``"false"``/``1``/``0`` accepted, as from a Secret)."""
    value = inputs.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _invalid(f"input {key!r} must be true or false")


@overload
def input_str_list(inputs: Mapping[str, Any], key: str) -> list[str]: ...
@overload
def input_str_list(inputs: Mapping[str, Any], key: str, default: list[str]) -> list[str]: ...
@overload
def input_str_list(inputs: Mapping[str, Any], key: str, default: None) -> list[str] | None: ...
def input_str_list(
    inputs: Mapping[str, Any], key: str, default: list[str] | None = _MISSING
) -> list[str] | None:
    """``inputs[key]`` as a list of strings; a single string (comma-separated) is split."""
    value = inputs.get(key)
    if value is None:
        if default is _MISSING:
            raise _invalid(f"input {key!r} is required")
        return default
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise _invalid(f"input {key!r} must be a string or a list of strings")
