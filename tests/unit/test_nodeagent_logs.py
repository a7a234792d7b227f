"""Unit tests of the node agent's log handling: CRI lines, query parsing, tail/since selection."""

from __future__ import annotations

import datetime as dt

import pytest

from kumulus.devcluster.nodeagent.logserver import (
    LogQuery,
    parse_line,
    parse_timestamp,
    select_lines,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, 0, 1, 0, tzinfo=dt.UTC)
RAW = [
    b"2026-01-01T00:00:00.000000000Z stdout F first",
    b"2026-01-01T00:00:30.500000000Z stderr F second",
    b"2026-01-01T00:00:59.000000000Z stdout P par",
]


def test_parse_line_and_render() -> None:
    line = parse_line(RAW[0])
    assert line is not None
    assert (line.stream, line.full, line.content) == ("stdout", True, b"first")
    assert line.render(False) == b"first\n"
    assert line.render(True) == b"2026-01-01T00:00:00.000000000Z first\n"
    partial = parse_line(RAW[2])
    assert partial is not None and partial.render(False) == b"par"
    empty = parse_line(b"2026-01-01T00:00:00.000000000Z stdout F ")
    assert empty is not None and empty.render(False) == b"\n"


def test_parse_timestamp_nanoseconds() -> None:
    assert parse_timestamp("2026-01-01T00:00:30.500000000Z") == dt.datetime(
        2026, 1, 1, 0, 0, 30, 500000, tzinfo=dt.UTC
    )


def test_query_parsing() -> None:
    query = LogQuery.from_params(
        {
            "follow": "true",
            "tailLines": "2",
            "limitBytes": "10",
            "timestamps": "true",
            "sinceSeconds": "30",
        },
        NOW,
    )
    assert query.follow and query.timestamps and not query.previous
    assert (query.tail_lines, query.limit_bytes) == (2, 10)
    assert query.since == NOW - dt.timedelta(seconds=30)
    with pytest.raises(ValueError):
        LogQuery.from_params({"tailLines": "-1"}, NOW)


def test_select_tail_and_since() -> None:
    contents = [line.content for line in select_lines(RAW, LogQuery(tail_lines=2))]
    assert contents == [b"second", b"par"]
    since = LogQuery.from_params({"sinceSeconds": "30"}, NOW)
    assert [line.content for line in select_lines(RAW, since)] == [b"second", b"par"]
    assert list(select_lines(RAW, LogQuery(tail_lines=0))) == []
