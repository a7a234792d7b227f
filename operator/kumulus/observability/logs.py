"""Structured logs: one JSON object per line (``KUMULUS_LOG_FORMAT=json``).

Log collectors (Loki, Elasticsearch, Cloud Logging) index fields, not prose. Each line has
``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message``, and ``object``
(``kind``, ``namespace``, ``name``) when the line is about one object: taken from kopf's object
loggers, from ``extra={"k8s_object": {...}}``, or else from the first ``<Kind> ns/name`` in the
message, which is how every Kumulus log line names its object (CONTRIBUTING.md). Exceptions
add ``exception`` (the formatted traceback).

:func:`configure` swaps the formatter of the handlers kopf installed on the root logger (it
runs when ``kumulus.handlers`` is imported, i.e. before kopf logs anything about objects);
``kopf run --log-format=json`` (the chart passes it too) makes even kopf's first lines JSON.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")

KINDS = ("Execution", "Flow", "Schedule", "Connection", "Webhook", "Pod", "Secret", "ConfigMap")
_OBJECT = re.compile(
    r"\b(" + "|".join(KINDS) + r") "
    r"([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)/([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)"
)

log = logging.getLogger("kumulus.logs")


def object_of(record: logging.LogRecord, message: str) -> dict[str, str] | None:
    """The object a log line is about, if it names one (see the module docstring)."""
    for attr in ("k8s_object", "k8s_ref"):
        ref = getattr(record, attr, None)
        if isinstance(ref, Mapping) and ref.get("name"):
            found = {k: str(ref[k]) for k in ("kind", "namespace", "name") if ref.get(k)}
            return found
    match = _OBJECT.search(message)
    if match is None:
        return None
    return {"kind": match.group(1), "namespace": match.group(2), "name": match.group(3)}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never more: newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        obj = object_of(record, message)
        if obj is not None:
            line["object"] = obj
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(log_format: str, root: logging.Logger | None = None) -> None:
    """Use :class:`JsonFormatter` on the root logger's handlers for ``json``; else no change.

    An unknown format is logged and ignored (plain text): a typo must not stop the operator.
    """
    root = root if root is not None else logging.getLogger()
    value = log_format.strip().lower()
    if value not in FORMATS:
        log.warning("Ignored KUMULUS_LOG_FORMAT=%r: expected one of %s.", log_format, FORMATS)
        return
    if value != "json":
        return
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
