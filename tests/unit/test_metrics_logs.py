"""JSON logs (KUMULUS_LOG_FORMAT=json): each line one parseable object with the agreed fields."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest

from kumulus.observability import logs

pytestmark = pytest.mark.unit


def emit(logger: logging.Logger, *args: object, **kwargs: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_a_kumulus_line_names_its_object() -> None:
    (line,) = emit(
        logging.getLogger("kumulus.test.engine"),
        "Moved Execution %s/%s to phase %s.",
        "team-a",
        "hello-x1.2",
        "Running",
    )
    assert set(line) == {"time", "level", "logger", "message", "object"}
    assert line["level"] == "WARNING"
    assert line["logger"] == "kumulus.test.engine"
    assert line["message"] == "Moved Execution team-a/hello-x1.2 to phase Running."
    assert line["object"] == {"kind": "Execution", "namespace": "team-a", "name": "hello-x1.2"}
    parsed = datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None and str(line["time"]).endswith("Z")


def test_the_first_named_object_wins_and_kopf_references_win_over_the_text() -> None:
    (line,) = emit(
        logging.getLogger("kumulus.test.pods"), "Created Pod ns/x-a1 for Execution ns/x."
    )
    assert line["object"] == {"kind": "Pod", "namespace": "ns", "name": "x-a1"}
    ref = {"apiVersion": "kumulus.dev/v1alpha1", "kind": "Flow", "namespace": "ns", "name": "f"}
    (line,) = emit(
        logging.getLogger("kopf.objects.test"), "Handler succeeded.", extra={"k8s_ref": ref}
    )
    assert line["object"] == {"kind": "Flow", "namespace": "ns", "name": "f"}


def test_lines_without_an_object_and_with_a_traceback_stay_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("kumulus.test.exc")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logger.exception("Failed to reconcile:\nsee below.")
    finally:
        logger.removeHandler(handler)
    (raw,) = stream.getvalue().splitlines()
    line = json.loads(raw)
    assert "object" not in line
    assert line["level"] == "ERROR"
    assert "ValueError: bad" in line["exception"]


def test_configure_switches_the_root_handlers_only_for_json() -> None:
    root = logging.Logger("test-root")
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    logs.configure("text", root)
    assert not isinstance(handler.formatter, logs.JsonFormatter)
    logs.configure("yaml", root)  # unknown: warned about and ignored
    assert not isinstance(handler.formatter, logs.JsonFormatter)
    logs.configure(" JSON ", root)
    assert isinstance(handler.formatter, logs.JsonFormatter)
