"""The kumulus CLI's output: durations, tables, the tree of child executions, JSON/YAML."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import yaml

from kumulus.cli import render

pytestmark = pytest.mark.unit

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def ex(
    name: str,
    uid: str,
    parent: str | None = None,
    phase: str | None = None,
    created: str = "2024-05-01T11:59:00Z",
    **status: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "uid": uid,
        "creationTimestamp": created,
    }
    if parent:
        meta["ownerReferences"] = [
            {"kind": "Execution", "name": "p", "uid": parent, "controller": True}
        ]
    st = dict(status)
    if phase:
        st["phase"] = phase
    return {
        "metadata": meta,
        "spec": {"type": "FLOW", "flowRef": {"name": "f"}},
        "status": st,
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (42, "42s"),
        (60, "1m"),
        (185, "3m5s"),
        (7440, "2h4m"),
        (7200, "2h"),
        (266400, "3d2h"),
        (-5, "0s"),
    ],
)
def test_short_durations(seconds: float, text: str) -> None:
    assert render.short_duration(seconds) == text


def test_duration_prefers_the_operators_value_then_counts_from_the_start() -> None:
    assert render.duration(ex("a", "1", duration="1m20s"), NOW) == "1m20s"
    running = ex("a", "1", phase="Running", startTime="2024-05-01T11:59:30Z")
    assert render.duration(running, NOW) == "30s"
    assert render.duration(ex("a", "1"), NOW) == ""


def test_table_aligns_columns_without_trailing_blanks() -> None:
    text = render.table(("NAME", "PHASE"), [("a", "Running"), ("long-name", "")])
    assert text.splitlines() == [
        "NAME        PHASE",
        "a           Running",
        "long-name",
    ]


def test_children_are_drawn_as_a_tree_in_creation_order() -> None:
    items = [
        ex("root", "r", phase="Waiting", created="2024-05-01T11:00:00Z"),
        ex("root-1-2", "c2", parent="r", created="2024-05-01T11:00:02Z"),
        ex("root-1-1", "c1", parent="r", created="2024-05-01T11:00:01Z"),
        ex("root-1-1-1-1", "g1", parent="c1", created="2024-05-01T11:00:03Z"),
        ex("other", "o", created="2024-05-01T11:30:00Z"),
    ]
    ordered = [(e["metadata"]["name"], prefix) for e, prefix in render.tree_order(items)]
    assert ordered == [
        ("root", ""),
        ("root-1-1", "├─ "),
        ("root-1-1-1-1", "│  └─ "),
        ("root-1-2", "└─ "),
        ("other", ""),
    ]
    text = render.executions_table(items, NOW)
    assert text.splitlines()[2].startswith("├─ root-1-1 ")
    assert text.splitlines()[3].startswith("│  └─ root-1-1-1-1 ")


def test_an_orphan_whose_parent_is_not_listed_is_a_root() -> None:
    items = [ex("child", "c", parent="gone")]
    assert [p for _, p in render.tree_order(items)] == [""]


def test_descendants_follow_owner_references() -> None:
    root = ex("root", "r")
    items = [
        ex("a", "a", parent="r"),
        ex("b", "b", parent="a"),
        ex("x", "x", parent="elsewhere"),
    ]
    assert [e["metadata"]["name"] for e in render.descendants(root, items)] == ["root", "a", "b"]


def test_flat_list_has_no_tree_marks() -> None:
    items = [ex("root", "r"), ex("kid", "k", parent="r", created="2024-05-01T11:59:30Z")]
    text = render.executions_table(items, NOW, tree=False)
    assert "└─" not in text


def test_status_line_shows_phase_message_and_children() -> None:
    obj = ex(
        "run-1",
        "r",
        phase="Waiting",
        startTime="2024-05-01T11:59:50Z",
        message="started 3 children",
        children=[
            {"name": "a", "phase": "Succeeded"},
            {"name": "b", "phase": "Running"},
            {"name": "c"},
        ],
    )
    assert render.status_line(obj, NOW) == (
        "run-1  Waiting  10s  started 3 children  (3 children: 1 Pending, 1 Running, 1 Succeeded)"
    )


def test_change_key_ignores_the_ticking_duration() -> None:
    a = ex("r", "r", phase="Running", startTime="2024-05-01T11:59:50Z", message="m")
    b = ex("r", "r", phase="Running", startTime="2024-05-01T11:59:40Z", message="m")
    assert render.change_key(a) == render.change_key(b)
    assert render.change_key(ex("r", "r")) == ("Pending", "", "")


def test_describe_shows_failure_reason_and_children() -> None:
    root = ex(
        "root",
        "r",
        phase="Failed",
        message="working",
        statusMessage="Traceback ...\nValueError: boom",
        outputs={"x": 1},
    )
    kid = ex("root-1-1", "k", parent="r", phase="Failed")
    text = render.describe_execution(root, [root, kid], NOW)
    assert "Phase:        Failed" in text
    assert "  ValueError: boom" in text
    assert 'Outputs:      {"x": 1}' in text
    assert "  └─ root-1-1" in text


def test_flows_and_schedules_tables() -> None:
    flow = {
        "metadata": {"name": "hello", "creationTimestamp": "2024-05-01T11:00:00Z"},
        "spec": {"description": "Greets."},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert render.flows_table([flow], NOW).splitlines()[1].split() == [
        "hello",
        "True",
        "Greets.",
        "1h",
    ]
    schedule = {
        "metadata": {"name": "nightly", "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"flowRef": {"name": "hello"}, "schedule": "0 3 * * *"},
        "status": {"lastScheduleTime": "2024-05-01T11:55:00Z", "active": [{"name": "x"}]},
    }
    row = render.schedules_table([schedule], NOW).splitlines()[1]
    assert row.split() == [
        "nightly",
        "hello",
        "0",
        "3",
        "*",
        "*",
        "*",
        "UTC",
        "False",
        "1",
        "5m",
        "ago",
        "2h",
    ]


def test_dump_json_and_yaml_without_managed_fields() -> None:
    obj = ex("a", "1")
    obj["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    cleaned = render.clean(obj)
    assert "managedFields" not in cleaned["metadata"]
    assert json.loads(render.dump(cleaned, "json")) == cleaned
    assert yaml.safe_load(render.dump(cleaned, "yaml")) == cleaned
    listed = render.as_list([obj])
    assert listed["kind"] == "List" and "managedFields" not in listed["items"][0]["metadata"]
