"""Pure rules of Connections and CONNECTION executions: merging, redaction, decisions.

The connection executor (:mod:`kumulus.k8s.connection_executor`) and the Connection status
keeper (:mod:`kumulus.k8s.connections`) do I/O; every choice they make lives here so it can be
unit-tested without a cluster:

* which per-call inputs a call through a stored Connection may give at all: only those its
  connector type declares safe (``Connector.call_inputs``: what the call is about, never where
  it goes or with which credentials) plus the Connection's ``spec.allowedOverrides``, so flow
  code cannot send the Connection's Secret anywhere else;
* how a call's inputs are built: the Connection's ``spec.values``, then the keys of its Secret,
  then the Execution's ``spec.connection.inputs`` (top-level keys, later wins), with the
  ``timeout`` input taken out;
* which strings are secret and how they are scrubbed from anything written (messages,
  outputs, events, logs);
* what to do with a CONNECTION Execution (hold, start, cancel, fail after a restart), including
  the exactly-once rule: a call that was claimed (``status.startTime`` and ``status.executor``
  set) is never run again, because it may have had effects;
* the Ready condition of a Connection and the status patches of both kinds.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kumulus.domain import outputs as output_rules
from kumulus.domain.lifecycle import format_duration, normalise_type, set_condition
from kumulus.domain.timeutil import format_time, parse_time

__all__ = [
    "ALWAYS_CALL_INPUTS",
    "CLAIM_SLACK_SECONDS",
    "MIN_SECRET_LENGTH",
    "OVERRIDE_REFUSED",
    "REDACTED",
    "TIMEOUT_GRACE_SECONDS",
    "CallView",
    "Decision",
    "InputError",
    "Ready",
    "SecretState",
    "call_timeout",
    "check_outputs",
    "claim_patch",
    "connection_ready",
    "connection_status_patch",
    "decide_call",
    "decode_secret",
    "finish_event",
    "finish_patch",
    "hold_patch",
    "instance_host",
    "instance_pid",
    "is_connection_execution",
    "merge_inputs",
    "override_refused_message",
    "queued_patch",
    "redact",
    "redact_json",
    "refused_overrides",
    "secret_texts",
    "status_after",
]

REDACTED = "***"
"""What a secret value is replaced with."""

MIN_SECRET_LENGTH = 3
"""Shorter values are not scrubbed: they cannot be told apart from ordinary text."""

TIMEOUT_GRACE_SECONDS = 5.0
"""The executor cancels a call this long after its ``timeout`` (so the connector's own timeout
error, which is clearer, normally wins)."""

CLAIM_SLACK_SECONDS = 30.0
"""Added to a claim's deadline for writing the result; after it another executor may fail the
execution with ``ExecutorLost``."""

MAX_MESSAGE = 32000

OVERRIDE_REFUSED = "OverrideRefused"
"""The reason of a call through a stored Connection that gave an input it may not change."""

ALWAYS_CALL_INPUTS: frozenset[str] = frozenset({"timeout"})
"""Per-call inputs every call may give: the executor's own, not the connector's."""


class InputError(ValueError):
    """A call's inputs cannot be used (bad timeout, undecodable Secret key...)."""


# --------------------------------------------------------------------------- inputs


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's ``data`` (base64) as text; a key that is not UTF-8 text is an error.

    The error names the key only, never the value.
    """
    out: dict[str, str] = {}
    for key, raw in (data or {}).items():
        try:
            out[key] = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InputError(f"Secret key {key!r} is not UTF-8 text") from None
    return out


def merge_inputs(
    values: Mapping[str, Any] | None,
    secret: Mapping[str, str] | None,
    call_inputs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Stored values, then Secret keys, then per-call inputs (top-level keys; later wins)."""
    merged: dict[str, Any] = dict(values or {})
    merged.update(secret or {})
    merged.update(call_inputs or {})
    return merged


def _object_fields(value: object) -> Mapping[str, Any] | None:
    """An object input (or a JSON object string) as a mapping; ``None`` if it is neither."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, Mapping) else None


def refused_overrides(
    call_inputs: Mapping[str, Any] | None,
    *,
    allowed: Iterable[str],
    refused_fields: Mapping[str, Iterable[str]] | None = None,
    widened: Iterable[str] | None = None,
) -> list[str]:
    """The per-call inputs a call through a stored Connection may not give, sorted.

    ``allowed``: the connector type's ``call_inputs`` (``timeout`` is always allowed);
    ``refused_fields``: its ``call_refused_fields``, fields (case-insensitive) a call may not
    set inside an allowed object input, reported as ``input.Field``; ``widened``: the
    Connection's ``spec.allowedOverrides``, each an input name (then every field of it too)
    or an ``input.Field`` name as reported here. The rule holds whatever the value (even one
    equal to the stored value), so a refusal tells nothing about the stored values. Only for
    calls through a Connection: ad-hoc calls have no stored values and take every input.
    """
    permitted = set(allowed) | ALWAYS_CALL_INPUTS
    fields_of = {key: {f.lower() for f in names} for key, names in (refused_fields or {}).items()}
    wide_keys: set[str] = set()
    wide_fields: set[tuple[str, str]] = set()
    for entry in widened or ():
        wide_keys.add(str(entry))
        key, dot, field_name = str(entry).partition(".")
        if dot and field_name:
            wide_fields.add((key, field_name.strip().lower()))
    refused: list[str] = []
    for key, value in (call_inputs or {}).items():
        if key in wide_keys:
            continue
        if key not in permitted:
            refused.append(key)
            continue
        fields = fields_of.get(key)
        if not fields or value is None:
            continue
        given = _object_fields(value)
        if given is None:
            refused.append(key)  # not an object: its fields cannot be checked
            continue
        for name in given:
            lowered = str(name).strip().lower()
            if lowered in fields and (key, lowered) not in wide_fields:
                refused.append(f"{key}.{name}")
    return sorted(refused)


def override_refused_message(
    connection: str,
    type_: str,
    refused: Sequence[str],
    allowed: Iterable[str],
    refused_fields: Mapping[str, Iterable[str]] | None = None,
) -> str:
    """The error of a call that gave inputs its Connection keeps (names only, no values)."""
    names = ", ".join(refused)
    kept = refused_fields or {}
    may = ", ".join(
        f"{key} (without {', '.join(sorted(kept[key]))})" if kept.get(key) else key
        for key in sorted(set(allowed) | ALWAYS_CALL_INPUTS)
    )
    plural = "inputs" if len(refused) > 1 else "input"
    return (
        f"Connection {connection} refused the per-call {plural} {names}: a call through a "
        f"{type_} Connection may set only {may}; where the call goes and its credentials are "
        "the Connection's. To allow more, list the input names in the Connection's "
        "spec.allowedOverrides."
    )


def call_timeout(
    inputs: Mapping[str, Any], spec_timeout: object, default: float
) -> tuple[float, dict[str, Any]]:
    """The call's time limit and the inputs without ``timeout``.

    Precedence: the ``timeout`` input, then the Execution's ``spec.timeoutSeconds``, then the
    setting ``connection_timeout_seconds``.
    """
    rest = dict(inputs)
    raw = rest.pop("timeout", None)
    if raw is None:
        raw = spec_timeout
    if raw is None:
        return float(default), rest
    if isinstance(raw, bool):
        raise InputError("input 'timeout' must be a number of seconds")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InputError("input 'timeout' must be a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError("input 'timeout' must be greater than 0")
    return value, rest


# --------------------------------------------------------------------------- redaction


def secret_texts(
    secret: Mapping[str, str] | None,
    inputs: Mapping[str, Any] | None = None,
    secret_keys: Iterable[str] = (),
    derived: Iterable[str] = (),
) -> tuple[str, ...]:
    """Every string to scrub: each Secret value, each input named in ``secret_keys`` and each
    ``derived`` form (from ``Connector.derived_secrets``), with the forms it may take in a
    message (URL-quoted, JSON-escaped) and reversed. Longest first.

    This is a safety net, not the control: a server (or a script) that echoes a secret
    split, interleaved, hashed or encoded otherwise (base64 of the bare token, hex...) is not
    caught, and cannot be in general. What keeps a Secret from a flow is that a call through
    a Connection cannot change where it goes (``refused_overrides``)."""
    raw: set[str] = set(derived)
    for value in (secret or {}).values():
        raw.add(value)
    for key in secret_keys:
        given = (inputs or {}).get(key)
        if isinstance(given, str | int | float) and not isinstance(given, bool):
            raw.add(str(given))
    texts: set[str] = set()
    for value in raw:
        for form in (
            value,
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value, safe=""),
            json.dumps(value)[1:-1],
            value[::-1],
        ):
            if len(form) >= MIN_SECRET_LENGTH:
                texts.add(form)
        # Multi-line secrets (keys, certificates): each long line on its own too.
        for line in value.splitlines():
            if len(line.strip()) >= 16:
                texts.add(line.strip())
                texts.add(line.strip()[::-1])
    return tuple(sorted(texts, key=lambda t: (-len(t), t)))


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_json(value: Any, secrets: Sequence[str]) -> Any:
    """A copy of a JSON value with secrets scrubbed from every string (keys too)."""
    if not secrets:
        return value
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {redact(str(k), secrets): redact_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v, secrets) for v in value]
    return value


def check_outputs(outputs: object, limit_bytes: int) -> tuple[str, str] | None:
    """``(reason, message)`` when a connector's outputs cannot be stored, else ``None``."""
    if not isinstance(outputs, Mapping):
        return "InvalidOutputs", f"the connector returned {type(outputs).__name__}, not a dict"
    try:
        size = output_rules.stored_size(outputs)
    except (TypeError, ValueError) as err:
        return "InvalidOutputs", f"the connector's outputs are not JSON: {err}"
    if size > limit_bytes:
        return "OutputTooLarge", output_rules.too_large(size, limit_bytes)
    return None


# --------------------------------------------------------------------------- Connection Ready


class SecretState(enum.StrEnum):
    """What reading a Connection's Secret showed."""

    NONE = "None"
    """The Connection has no ``secretRef``."""
    PRESENT = "Present"
    MISSING = "Missing"
    FORBIDDEN = "Forbidden"
    INVALID = "Invalid"
    """Present, but a key is not UTF-8 text."""


@dataclass(frozen=True)
class Ready:
    """The Ready condition of a Connection."""

    status: bool
    reason: str
    message: str


def connection_ready(
    *,
    type_: str,
    type_problem: tuple[str, str] | None,
    secret_name: str | None,
    secret_state: SecretState,
    secret_detail: str = "",
    problems: Sequence[str] = (),
) -> Ready:
    """Ready when the type is known and loads, the Secret can be read and the values validate.

    ``type_problem`` is ``(reason, message)`` from loading the connector type
    (``UnknownType``, ``ConnectorUnavailable``); ``problems`` the connector's
    ``validate(..., partial=True)`` messages.
    """
    if type_problem is not None:
        return Ready(False, type_problem[0], type_problem[1])
    if secret_state is SecretState.MISSING:
        return Ready(False, "SecretNotFound", f"Secret {secret_name} does not exist.")
    if secret_state is SecretState.FORBIDDEN:
        return Ready(
            False,
            "SecretForbidden",
            f"The connection executor may not read Secret {secret_name}: {secret_detail}".rstrip(
                ": "
            ),
        )
    if secret_state is SecretState.INVALID:
        return Ready(False, "SecretInvalid", f"Secret {secret_name}: {secret_detail}")
    if problems:
        return Ready(False, "InvalidValues", "; ".join(problems))
    where = f" with Secret {secret_name}" if secret_state is SecretState.PRESENT else ""
    return Ready(True, "Valid", f"{type_} connection is valid{where}.")


def connection_status_patch(
    body: Mapping[str, Any], ready: Ready, now: datetime
) -> dict[str, Any] | None:
    """The status patch that records ``ready``; ``None`` when the status already says so."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    generation = meta.get("generation")
    gen = int(generation) if generation is not None else None
    conditions = list(status.get("conditions") or [])
    current = next((c for c in conditions if c.get("type") == "Ready"), None)
    want = "True" if ready.status else "False"
    if (
        current is not None
        and current.get("status") == want
        and current.get("reason") == ready.reason
        and current.get("message") == ready.message
        and current.get("observedGeneration") == gen
        and status.get("observedGeneration") == gen
    ):
        return None
    return {
        "observedGeneration": gen,
        "conditions": set_condition(
            conditions, "Ready", ready.status, ready.reason, ready.message, gen, now
        ),
    }


# --------------------------------------------------------------------------- CONNECTION calls


def instance_host(instance_id: str) -> str:
    """The host part of an executor id ``<host>/<pid>-<random>``."""
    return instance_id.split("/", 1)[0]


def instance_pid(instance_id: str) -> int | None:
    """The process id part of an executor id ``<host>/<pid>-<random>`` (``None`` if absent)."""
    _, _, rest = instance_id.partition("/")
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class CallView:
    """A CONNECTION Execution as the executor sees it."""

    namespace: str
    name: str
    phase: str
    desired: str
    run: bool
    started: bool
    claim_id: str | None
    claim_deadline: datetime | None
    connection: str | None
    type: str | None
    inputs: Mapping[str, Any]
    timeout_seconds: object
    generation: int | None
    conditions: Sequence[Mapping[str, Any]]
    start_time: datetime | None

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> CallView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        call = spec.get("connection") or {}
        claim = status.get("executor") or {}
        gen = meta.get("generation")
        return cls(
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            phase=str(status.get("phase") or ""),
            desired=str(spec.get("desiredState") or "Running"),
            run=bool(spec.get("run", True)),
            started=bool(status.get("startTime")) or bool(claim),
            claim_id=str(claim["id"]) if claim.get("id") else None,
            claim_deadline=parse_time(claim.get("deadline")),
            connection=str(call["name"]) if call.get("name") else None,
            type=str(call["type"]) if call.get("type") else None,
            inputs=dict(call.get("inputs") or {}),
            timeout_seconds=spec.get("timeoutSeconds"),
            generation=int(gen) if gen is not None else None,
            conditions=list(status.get("conditions") or []),
            start_time=parse_time(status.get("startTime")),
        )

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def via(self) -> str:
        """``through Connection my-api`` or ``ad hoc``, for messages."""
        return f"through Connection {self.connection}" if self.connection else "ad hoc"

    def started_reason(self) -> str | None:
        for cond in self.conditions:
            if cond.get("type") == "Started":
                return str(cond.get("reason"))
        return None


def is_connection_execution(body: Mapping[str, Any]) -> bool:
    """Whether the Execution is a CONNECTION (or TASK) execution."""
    return normalise_type((body.get("spec") or {}).get("type")) == "CONNECTION"


TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})


class Decision(enum.Enum):
    """What the executor does with a CONNECTION Execution now."""

    NOTHING = "nothing"
    HOLD = "hold"
    """Not to be started (``run: false`` or Paused): phase Pending, Started=False."""
    CANCEL_UNSTARTED = "cancel-unstarted"
    START = "start"
    """Queue the call (it is claimed when a slot is free)."""
    INTERRUPT = "interrupt"
    """Cancel the call running in this process."""
    FAIL_RESTARTED = "fail-restarted"
    FAIL_LOST = "fail-lost"
    WAIT_FOR_CLAIM = "wait-for-claim"
    """Another executor runs it: look again at its deadline."""


def _hold_reason(view: CallView) -> tuple[str, str]:
    if not view.run:
        return "NotStarted", "Execution was created with run: false."
    return "Paused", "Execution is paused before its start."


def decide_call(
    view: CallView,
    *,
    local: bool,
    queued: bool,
    claimer_alive: bool,
    now: datetime,
) -> tuple[Decision, float | None]:
    """What to do with a CONNECTION Execution; the float is a delay for ``WAIT_FOR_CLAIM``.

    ``local``: the call runs in this process; ``queued``: a task of this process waits for a
    slot for it or is claiming it; ``claimer_alive``: the process in ``status.executor`` may
    still be running it (another process on this host that exists, or any process on another
    host: only its deadline tells).
    """
    if view.phase in TERMINAL:
        return Decision.NOTHING, None
    if local:
        if view.desired == "Cancelled":
            return Decision.INTERRUPT, None
        return Decision.NOTHING, None
    if queued:
        # Its task here owns it (it may be claiming it right now); only a cancel before the
        # start is acted on at once.
        if not view.started and view.desired == "Cancelled":
            return Decision.CANCEL_UNSTARTED, None
        return Decision.NOTHING, None
    if not view.started:
        if view.desired == "Cancelled":
            return Decision.CANCEL_UNSTARTED, None
        if not view.run or view.desired == "Paused":
            reason, _ = _hold_reason(view)
            if view.phase == "Pending" and view.started_reason() == reason:
                return Decision.NOTHING, None
            return Decision.HOLD, None
        return Decision.START, None
    # Claimed, and not running here.
    if not claimer_alive:
        return Decision.FAIL_RESTARTED, None
    deadline = view.claim_deadline
    if deadline is None or now >= deadline:
        return Decision.FAIL_LOST, None
    return Decision.WAIT_FOR_CLAIM, max((deadline - now).total_seconds(), 0.5)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def hold_patch(view: CallView, now: datetime) -> dict[str, Any]:
    """Pending with ``Started=False`` (NotStarted / Paused)."""
    reason, message = _hold_reason(view)
    return {
        "phase": "Pending",
        "statusMessage": message,
        "observedGeneration": view.generation,
        "conditions": set_condition(
            view.conditions, "Started", False, reason, message, view.generation, now
        ),
    }


def queued_patch(view: CallView, position: int, now: datetime) -> dict[str, Any]:
    """Pending with ``Started=False, reason=Queued``: every executor slot is busy."""
    message = f"Waiting for a free connection executor slot ({position} queued)."
    return {
        "phase": "Pending",
        "observedGeneration": view.generation,
        "conditions": set_condition(
            view.conditions, "Started", False, "Queued", message, view.generation, now
        ),
    }


def claim_patch(
    view: CallView, *, instance_id: str, timeout: float, connector_type: str, now: datetime
) -> dict[str, Any]:
    """Running: the call is claimed by ``instance_id`` (sent guarded by resourceVersion)."""
    deadline = now + timedelta(seconds=timeout + TIMEOUT_GRACE_SECONDS + CLAIM_SLACK_SECONDS)
    message = f"Calling {connector_type} {view.via} (timeout {timeout:g}s)."
    return {
        "phase": "Running",
        "startTime": format_time(now),
        "attempts": 1,
        "statusMessage": None,
        "executor": {"id": instance_id, "deadline": format_time(deadline)},
        "observedGeneration": view.generation,
        "conditions": set_condition(
            view.conditions, "Started", True, "Called", message, view.generation, now
        ),
    }


def finish_patch(
    view: CallView,
    *,
    phase: str,
    reason: str,
    message: str,
    now: datetime,
    outputs: Mapping[str, Any] | None = None,
    duration_seconds: float | None = None,
) -> dict[str, Any]:
    """The terminal status patch (Succeeded / Failed / Cancelled)."""
    message = _clip(message)
    patch: dict[str, Any] = {
        "phase": phase,
        "statusMessage": message,
        "endTime": format_time(now),
        "observedGeneration": view.generation,
        "conditions": set_condition(
            view.conditions, "Finished", True, reason, message, view.generation, now
        ),
    }
    if outputs is not None:
        patch["outputs"] = dict(outputs)
    if duration_seconds is None and view.start_time is not None:
        duration_seconds = (now - view.start_time).total_seconds()
    if duration_seconds is not None:
        patch["duration"] = format_duration(duration_seconds)
    return patch


def status_after(status: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` with a patch's top-level keys applied (``None`` removes a key).

    The terminal status is written whole (a JSON patch), not as a merge patch, because a merge
    patch would drop every ``null`` inside ``outputs`` (e.g. REST's ``json: null``).
    """
    result = dict(status)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def finish_event(view: CallView, phase: str, reason: str, message: str) -> tuple[str, str, str]:
    """``(type, reason, message)`` of the Event recorded when a call ends."""
    verb = {"Succeeded": "Succeeded", "Failed": "Failed", "Cancelled": "Cancelled"}[phase]
    text = f"Execution {view.name} {verb.lower()}"
    if phase == "Succeeded":
        text += "."
    else:
        text += f" ({reason}): {message}"
    return ("Normal" if phase == "Succeeded" else "Warning"), verb, text[:1024]
