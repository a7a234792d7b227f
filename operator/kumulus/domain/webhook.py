"""Pure rules of webhooks: who may call, what the flow sees, how fast, and what the caller gets.

The HTTP service (:mod:`kumulus.webhook`) and the operator's Webhook handler share these
decisions. Keeping them here, free of I/O, lets the unit tests cover every branch that matters
for security (credential checks, the reserved ``key``, dropped headers) and for robustness
(malformed bodies never raise anything but :class:`BadRequest`) without a server or a cluster.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import hashlib
import hmac
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kumulus.api.v1alpha1 import Webhook, WebhookSpec
from kumulus.domain import naming, outputs

LABEL_WEBHOOK = "kumulus.dev/webhook"
"""Label on every Execution a webhook call created: the Webhook's name (shortened if long)."""

SIGNATURE_HEADER = "x-hub-signature-256"
"""GitHub-compatible HMAC-SHA256 signature header: ``sha256=<hex digest of the raw body>``."""

RESERVED_QUERY = frozenset({"key", "async"})
"""Query parameters meant for the service, never passed to the flow."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one hop (RFC 9110 section 7.6.1), not the request: dropped."""

AUTH_HEADERS = frozenset({"authorization", SIGNATURE_HEADER, "x-hub-signature"})
"""Credential headers: dropped so that the flow never sees a token or a signature."""

MAX_JSON_DEPTH = 64
"""Deepest accepted nesting of a JSON body (deeper bodies are answered with 400)."""

PHASE_STATUS: Mapping[str, str] = {
    "Pending": "PENDING",
    "Running": "RUNNING",
    "Waiting": "WAITING_DEPENDENCY",
    "Paused": "PAUSED",
    "Succeeded": "ENDED_SUCCESS",
    "Failed": "ENDED_ERROR",
    "Cancelled": "ENDED_CANCELLED",
}
"""Cloudomation status strings of Execution phases (the runner uses the same table)."""

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})

_TRUE = frozenset({"1", "true", "yes", "on"})
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadRequest(ValueError):
    """The request body cannot be understood (answered with 400 and this message)."""


# --------------------------------------------------------------------------- text hygiene


def clean_text(value: str) -> str:
    """``value`` as valid Unicode: lone surrogates (from undecodable bytes) become U+FFFD.

    Execution inputs travel as JSON to the API server, which rejects invalid UTF-8; so every
    string taken from a request goes through here.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def _to_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _clean_json(value: Any, depth: int = 0) -> Any:
    """Checks the depth of parsed JSON and cleans its strings (keys included)."""
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v, depth + 1) for v in value]
    return value


# --------------------------------------------------------------------------- bodies


@dataclasses.dataclass(frozen=True)
class ParsedBody:
    """A request body as the flow sees it: ``json`` (parsed JSON or form) or ``text``."""

    kind: str
    """``empty``, ``json``, ``form`` or ``text``."""
    json: Any = None
    text: str | None = None


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in content_type.split(";")]
    media = parts[0].lower() if parts else ""
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return media, params


def _is_json_type(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and "+json" in media)


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"JSON body contains {name}, which is not JSON.")


def parse_json(body: bytes) -> Any:
    """Parse a JSON body strictly (no NaN/Infinity, bounded depth); :class:`BadRequest` if not."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadRequest("JSON body is not valid UTF-8.") from err
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except BadRequest:
        raise
    except RecursionError as err:
        raise BadRequest(f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels.") from err
    except ValueError as err:
        raise BadRequest(f"Malformed JSON body: {err}") from err
    return _clean_json(value)


def _form_value(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _parse_urlencoded(body: bytes, charset: str) -> dict[str, Any]:
    try:
        text = body.decode(charset or "utf-8", "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    fields: dict[str, list[str]] = {}
    for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        fields.setdefault(clean_text(name), []).append(clean_text(value))
    return {name: _form_value(values) for name, values in fields.items()}


def _parse_multipart(body: bytes, content_type: str, boundary: str | None) -> dict[str, Any]:
    if not boundary:
        raise BadRequest("multipart/form-data body without a boundary.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode(
        "utf-8", "surrogatepass"
    )
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("Malformed multipart/form-data body.")
    fields: dict[str, list[Any]] = {}
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition", "")
        name = part.get_param("name", header="content-disposition")
        if not name or "form-data" not in str(disposition).lower():
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        value: Any
        if filename is None:
            charset = part.get_content_charset() or "utf-8"
            try:
                value = clean_text(data.decode(charset, "replace"))
            except LookupError:
                value = clean_text(data.decode("utf-8", "replace"))
        else:
            value = {
                "filename": clean_text(str(filename)),
                "contentType": clean_text(part.get_content_type()),
                "size": len(data),
                "text": clean_text(data.decode("utf-8", "replace")),
            }
        fields.setdefault(clean_text(str(name)), []).append(value)
    return {name: _form_value(values) for name, values in fields.items()}


def parse_body(content_type: str, body: bytes) -> ParsedBody:
    """Parse a request body by its Content-Type.

    JSON types (``application/json``, ``application/*+json``) must parse (else
    :class:`BadRequest`); ``application/x-www-form-urlencoded`` and ``multipart/form-data``
    become a dict (a repeated field becomes a list; a file becomes ``{filename, contentType,
    size, text}``); a body without a Content-Type is taken as JSON when it parses as JSON;
    anything else is text (UTF-8, undecodable bytes replaced).
    """
    if not body:
        return ParsedBody("empty")
    media, params = _media_type(content_type)
    if _is_json_type(media):
        return ParsedBody("json", json=parse_json(body))
    if media == "application/x-www-form-urlencoded":
        return ParsedBody("form", json=_parse_urlencoded(body, params.get("charset", "utf-8")))
    if media == "multipart/form-data":
        try:
            return ParsedBody(
                "form", json=_parse_multipart(body, content_type, params.get("boundary"))
            )
        except BadRequest:
            raise
        except Exception as err:  # the stdlib parser is lenient; guard the rare surprise
            raise BadRequest(f"Malformed multipart/form-data body: {type(err).__name__}.") from err
    if not media:
        try:
            return ParsedBody("json", json=parse_json(body))
        except BadRequest:
            pass
    return ParsedBody("text", text=clean_text(body.decode("utf-8", "replace")))


def body_key(parsed: ParsedBody) -> str | None:
    """The Cloudomation-style ``key`` given in a JSON object body, if any."""
    if parsed.kind == "json" and isinstance(parsed.json, dict):
        value = parsed.json.get("key")
        if isinstance(value, str):
            return value
    return None


# --------------------------------------------------------------------------- authentication


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """What a webhook accepts. ``secrets`` holds the values found for configured methods.

    ``methods`` lists the configured methods (``key``, ``bearer``, ``hmac``); a configured
    method whose Secret or key is missing has no entry in ``secrets`` and never matches.
    """

    methods: frozenset[str] = frozenset()
    secrets: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    allow_unauthenticated: bool = False

    def __repr__(self) -> str:  # never show secret values, even in a debugger or a log
        return (
            f"AuthConfig(methods={sorted(self.methods)}, found={sorted(self.secrets)}, "
            f"allow_unauthenticated={self.allow_unauthenticated})"
        )


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a caller presented: candidate keys, the Authorization header, the signature."""

    keys: tuple[str, ...] = ()
    authorization: str | None = None
    signature: str | None = None
    body: bytes = b""

    def __repr__(self) -> str:
        return f"Credentials(keys={len(self.keys)}, authorization={self.authorization is not None})"


_DUMMY = b"kumulus-webhook-no-secret-configured"


def _equal(given: bytes, secret: bytes | None) -> bool:
    """Constant-time comparison; a missing (or empty) secret is compared against a dummy and
    never matches."""
    same = hmac.compare_digest(given, secret or _DUMMY)
    return same and bool(secret)


def signature_of(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(config: AuthConfig, creds: Credentials) -> str | None:
    """The method that admitted the call (``key``, ``bearer``, ``hmac``, ``unauthenticated``).

    ``None`` means 401. Every configured method is checked every time, whatever the caller
    sent, with constant-time comparisons, so neither the answer nor the time taken tells
    which part was wrong.
    """
    admitted: str | None = None
    if "key" in config.methods:
        secret = config.secrets.get("key")
        candidates = creds.keys[:2] or ("",)
        for candidate in candidates:
            if _equal(_to_bytes(candidate), secret) and admitted is None:
                admitted = "key"
    if "bearer" in config.methods:
        token = bearer_token(creds.authorization)
        ok = _equal(_to_bytes(token or ""), config.secrets.get("bearer"))
        if ok and token is not None and admitted is None:
            admitted = "bearer"
    if "hmac" in config.methods:
        secret = config.secrets.get("hmac")
        expected = signature_of(secret or _DUMMY, creds.body)
        given = (creds.signature or "").strip().lower()
        same = hmac.compare_digest(_to_bytes(given), expected.encode("ascii"))
        if same and secret and creds.signature is not None and admitted is None:
            admitted = "hmac"
    if admitted is None and config.allow_unauthenticated:
        admitted = "unauthenticated"
    return admitted


# --------------------------------------------------------------------------- inputs


def _pairs_to_dict(pairs: Iterable[tuple[str, str]], drop: frozenset[str]) -> dict[str, Any]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in drop:
            continue
        out.setdefault(clean_text(name), []).append(clean_text(value))
    return {name: values[0] if len(values) == 1 else values for name, values in out.items()}


def flow_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers the flow sees: lower-case names, repeats joined by ``, ``, without hop-by-hop
    headers (and those the Connection header names) and without credentials."""
    pairs = [(name.lower(), value) for name, value in headers]
    named_by_connection = {
        token.strip().lower()
        for name, value in pairs
        if name == "connection"
        for token in value.split(",")
        if token.strip()
    }
    drop = HOP_BY_HOP | AUTH_HEADERS | named_by_connection
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in drop:
            continue
        key = clean_text(name)
        text = clean_text(value)
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def build_inputs(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    parsed: ParsedBody,
) -> dict[str, Any]:
    """The Execution's inputs: ``{method, path, query, headers, json}`` (+ ``text``).

    ``path`` is the sub-path below ``.../call`` (``""`` when none); ``query`` maps names to a
    value (a list when repeated) without the reserved ``key`` and ``async``; the body's
    ``key`` (a credential) is removed from a JSON object body; a body that is neither JSON
    nor a form is given as ``text`` with ``json`` null.
    """
    body_json = parsed.json
    if isinstance(body_json, dict) and "key" in body_json:
        body_json = {k: v for k, v in body_json.items() if k != "key"}
    inputs: dict[str, Any] = {
        "method": clean_text(method),
        "path": clean_text(path),
        "query": _pairs_to_dict(query, RESERVED_QUERY),
        "headers": flow_headers(headers),
        "json": body_json,
    }
    if parsed.kind == "text":
        inputs["text"] = parsed.text
    return inputs


def inputs_size(inputs: Mapping[str, Any]) -> int:
    """Size in bytes of the inputs as the Execution will carry them (measured like outputs)."""
    return outputs.stored_size(inputs)


def wants_async(query: Sequence[tuple[str, str]]) -> bool:
    """Whether the caller asked for an immediate answer (``?async=1``, ``true``, ``yes``)."""
    return any(name == "async" and value.strip().lower() in _TRUE for name, value in query)


# --------------------------------------------------------------------------- rate limiting


@dataclasses.dataclass
class TokenBucket:
    """A token bucket: ``burst`` calls at once, refilled at ``rate`` calls per second."""

    rate: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        return cls(rate=rate, burst=max(1, burst), tokens=float(max(1, burst)), updated=now)

    def take(self, now: float) -> float:
        """Take one token: ``0.0`` if the call may go on, else seconds until one is there."""
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# --------------------------------------------------------------------------- executions


def generate_name(webhook: str) -> str:
    """``generateName`` of the Executions of ``webhook``: ``<webhook>-`` (shortened to fit)."""
    return naming.shorten(webhook, 57) + "-"


def execution_manifest(
    namespace: str, webhook: str, spec: WebhookSpec, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """The Execution one call creates: the webhook's Flow, mode and executionTemplate.

    No ownerReference (an Execution outlives the Webhook that started it); the label
    ``kumulus.dev/webhook`` finds them.
    """
    execution_spec: dict[str, Any] = {
        "type": "FLOW",
        "flowRef": {"name": spec.flow_ref.name},
        "inputs": dict(inputs),
        "mode": spec.mode.value,
    }
    if spec.execution_template is not None:
        execution_spec.update(spec.execution_template.to_k8s())
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {
            "generateName": generate_name(webhook),
            "namespace": namespace,
            "labels": {LABEL_WEBHOOK: naming.shorten(webhook, naming.MAX_NAME)},
        },
        "spec": execution_spec,
    }


def status_string(phase: str | None) -> str:
    """Cloudomation's status string of an Execution phase (``PENDING`` when unknown)."""
    return PHASE_STATUS.get(phase or "", "PENDING")


def is_terminal(execution: Mapping[str, Any]) -> bool:
    return (execution.get("status") or {}).get("phase") in TERMINAL_PHASES


@dataclasses.dataclass(frozen=True)
class Answer:
    """An HTTP answer: status code, content type and body (a JSON value or text)."""

    status: int
    content_type: str
    body: Any


def execution_summary(execution: Mapping[str, Any]) -> dict[str, Any]:
    """``{name, namespace, phase, status, outputs, message}`` of an Execution."""
    meta = execution.get("metadata") or {}
    status = execution.get("status") or {}
    phase = status.get("phase")
    message = status.get("message")
    if phase in ("Failed", "Cancelled") and status.get("statusMessage"):
        message = status.get("statusMessage")
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": phase or "Pending",
        "status": status_string(phase),
        "outputs": status.get("outputs") or {},
        "message": message,
    }


def final_answer(execution: Mapping[str, Any]) -> Answer:
    """The answer to a sync call whose Execution ended: its HTML or its summary (200)."""
    runner = (execution.get("status") or {}).get("runner") or {}
    html = runner.get("webhookResponse")
    if isinstance(html, dict) and isinstance(html.get("html"), str):
        code = html.get("statusCode")
        status = code if isinstance(code, int) and 100 <= code <= 599 else 200
        return Answer(status, "text/html", html["html"])
    return Answer(200, "application/json", execution_summary(execution))


def accepted_answer(execution: Mapping[str, Any]) -> Answer:
    """202 with the Execution's name and namespace (async calls and sync timeouts)."""
    return Answer(202, "application/json", execution_summary(execution))


def error_answer(status: int, error: str, message: str | None = None) -> Answer:
    body: dict[str, Any] = {"error": error}
    if message:
        body["message"] = message
    return Answer(status, "application/json", body)


UNAUTHORIZED = error_answer(401, "unauthorized")
"""The one 401 answer, whatever was missing or wrong."""

NOT_FOUND = error_answer(404, "not found")
"""The answer for an unknown or disabled webhook (the same for both)."""


# --------------------------------------------------------------------------- the resource


def webhook_path(namespace: str, name: str) -> str:
    """The path the service serves a Webhook at (valid in every namespace)."""
    return f"/namespaces/{namespace}/webhooks/{name}/call"


def webhook_url(base_url: str, namespace: str, name: str) -> str:
    """``status.url``: the path, prefixed by the service's base URL when one is configured."""
    return base_url.rstrip("/") + webhook_path(namespace, name)


def referenced_secrets(spec: WebhookSpec) -> list[tuple[str, str, str]]:
    """``(method, secret name, key)`` for each configured secret-backed auth method."""
    auth = spec.auth
    if auth is None:
        return []
    refs: list[tuple[str, str, str]] = []
    if auth.key_secret_ref is not None:
        refs.append(("key", auth.key_secret_ref.name, auth.key_secret_ref.key))
    if auth.bearer_token_secret_ref is not None:
        ref = auth.bearer_token_secret_ref
        refs.append(("bearer", ref.name, ref.key))
    if auth.hmac_secret_ref is not None:
        refs.append(("hmac", auth.hmac_secret_ref.name, auth.hmac_secret_ref.key))
    return refs


def parse_webhook(body: Mapping[str, Any]) -> Webhook:
    """Validate a Webhook object (as read from the API) into the model; ValueError if invalid."""
    return Webhook.model_validate(dict(body))


@dataclasses.dataclass(frozen=True)
class Readiness:
    """The Ready condition of a Webhook."""

    ok: bool
    reason: str
    message: str


def readiness(
    spec: WebhookSpec,
    flow_exists: bool,
    secret_keys: Mapping[str, frozenset[str] | None],
) -> Readiness:
    """Ready when enabled, the Flow exists and every referenced Secret has its key.

    ``secret_keys`` maps each referenced Secret name to the keys it has (``None``: no such
    Secret). Only key names are looked at, never values.
    """
    if not spec.enabled:
        return Readiness(False, "Disabled", "The webhook is disabled (spec.enabled: false).")
    if not flow_exists:
        return Readiness(False, "FlowNotFound", f"Flow {spec.flow_ref.name} does not exist.")
    problems: list[str] = []
    for method, name, key in referenced_secrets(spec):
        keys = secret_keys.get(name)
        if keys is None:
            problems.append(f"Secret {name} ({method}) does not exist")
        elif key not in keys:
            problems.append(f"Secret {name} has no key {key} ({method})")
    if problems:
        missing_secret = any("does not exist" in p for p in problems)
        reason = "SecretNotFound" if missing_secret else "SecretKeyNotFound"
        return Readiness(False, reason, "; ".join(problems) + ".")
    return Readiness(True, "Ready", f"Calls start Flow {spec.flow_ref.name}.")
