"""How the CLI shows things: tables, the tree of child executions, status lines, JSON/YAML.

Kept free of I/O (every function takes plain dicts and returns text) so the formatting is unit
tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed", "Cancelled")
OUTPUTS = ("table", "json", "yaml", "name")


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 time from the API (``2024-01-01T00:00:00Z``) as an aware datetime."""
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def short_duration(seconds: float) -> str:
    """kubectl's compact durations: ``42s``, ``3m5s``, ``2h4m``, ``3d2h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def age(obj: Mapping[str, Any], now: dt.datetime) -> str:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return short_duration((now - created).total_seconds()) if created else ""


def phase(obj: Mapping[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


def is_terminal(obj: Mapping[str, Any]) -> bool:
    return phase(obj) in TERMINAL


def duration(obj: Mapping[str, Any], now: dt.datetime) -> str:
    """The operator's ``status.duration``, else the time since the start (while running)."""
    status = obj.get("status") or {}
    if status.get("duration"):
        return str(status["duration"])
    start = parse_time(status.get("startTime"))
    if start is None:
        return ""
    end = parse_time(status.get("endTime")) or now
    return short_duration((end - start).total_seconds())


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces (like kubectl), no trailing blanks."""
    all_rows = [list(headers), *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for r in all_rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def one_line(text: Any, limit: int = 60) -> str:
    """First line of ``text``, cut to ``limit`` characters."""
    if text is None:
        return ""
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def parent_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the Execution that owns (started) this one, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Execution" and ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _created_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def tree_order(
    executions: Iterable[Obj], roots: Iterable[Obj] | None = None
) -> list[tuple[Obj, str]]:
    """Executions in tree order with their prefix (``├─ ``, ``└─ ``, ``│  ``).

    ``roots`` default to the executions whose parent is not among ``executions``; children are
    ordered by creation, so the tree reads top-down in the order the flow started them.
    """
    items = list(executions)
    by_uid = {_uid(e): e for e in items}
    children: dict[str, list[Obj]] = {}
    for e in items:
        parent = parent_uid(e)
        if parent is not None and parent in by_uid:
            children.setdefault(parent, []).append(e)
    for kids in children.values():
        kids.sort(key=_created_key)
    if roots is None:
        roots = [e for e in items if parent_uid(e) not in by_uid]
    ordered: list[tuple[Obj, str]] = []

    def walk(node: Obj, lead: str, branch: str) -> None:
        ordered.append((node, lead + branch))
        kids = children.get(_uid(node), [])
        deeper = lead + ("" if not branch else ("   " if branch == "└─ " else "│  "))
        for i, kid in enumerate(kids):
            walk(kid, deeper, "└─ " if i == len(kids) - 1 else "├─ ")

    for root in sorted(roots, key=_created_key):
        walk(root, "", "")
    return ordered


def descendants(root: Obj, executions: Iterable[Obj]) -> list[Obj]:
    """The root and every execution below it (by owner references)."""
    items = list(executions)
    by_parent: dict[str, list[Obj]] = {}
    for e in items:
        parent = parent_uid(e)
        if parent is not None:
            by_parent.setdefault(parent, []).append(e)
    found = [root]
    queue = [_uid(root)]
    while queue:
        uid = queue.pop()
        for kid in by_parent.get(uid, []):
            found.append(kid)
            queue.append(_uid(kid))
    return found


EXECUTION_HEADERS = ("NAME", "TYPE", "FLOW", "PHASE", "AGE", "DURATION", "MESSAGE")


def execution_row(
    obj: Obj, now: dt.datetime, prefix: str = "", namespace: bool = False
) -> list[str]:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    row = [
        prefix + str(meta.get("name", "")),
        str(spec.get("type") or "FLOW"),
        str((spec.get("flowRef") or {}).get("name") or ""),
        phase(obj) or "-",
        age(obj, now),
        duration(obj, now),
        one_line((obj.get("status") or {}).get("message")),
    ]
    return [str(meta.get("namespace", "")), *row] if namespace else row


def executions_table(
    executions: Iterable[Obj], now: dt.datetime, *, tree: bool = True, namespace: bool = False
) -> str:
    items = list(executions)
    flat = [(e, "") for e in sorted(items, key=_created_key)]
    ordered = tree_order(items) if tree else flat
    headers = ("NAMESPACE", *EXECUTION_HEADERS) if namespace else EXECUTION_HEADERS
    return table(headers, (execution_row(e, now, p, namespace) for e, p in ordered))


def _ready(obj: Obj) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return "Unknown"


def flows_table(flows: Iterable[Obj], now: dt.datetime, namespace: bool = False) -> str:
    rows = []
    for f in sorted(flows, key=_created_key):
        meta = f.get("metadata") or {}
        row = [
            str(meta.get("name")),
            _ready(f),
            one_line((f.get("spec") or {}).get("description")),
            age(f, now),
        ]
        rows.append([str(meta.get("namespace", "")), *row] if namespace else row)
    headers = ("NAME", "READY", "DESCRIPTION", "AGE")
    return table(("NAMESPACE", *headers) if namespace else headers, rows)


def schedules_table(schedules: Iterable[Obj], now: dt.datetime, namespace: bool = False) -> str:
    rows = []
    for s in sorted(schedules, key=_created_key):
        meta = s.get("metadata") or {}
        spec = s.get("spec") or {}
        status = s.get("status") or {}
        last = parse_time(status.get("lastScheduleTime"))
        row = [
            str(meta.get("name")),
            str((spec.get("flowRef") or {}).get("name") or ""),
            str(spec.get("schedule") or ""),
            str(spec.get("timeZone") or "UTC"),
            "True" if spec.get("suspend") else "False",
            str(len(status.get("active") or [])),
            short_duration((now - last).total_seconds()) + " ago" if last else "never",
            age(s, now),
        ]
        rows.append([str(meta.get("namespace", "")), *row] if namespace else row)
    headers = ("NAME", "FLOW", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "AGE")
    return table(("NAMESPACE", *headers) if namespace else headers, rows)


def children_summary(obj: Obj) -> str:
    """``3 children: 2 Succeeded, 1 Running`` from ``status.children`` (empty without any)."""
    kids = (obj.get("status") or {}).get("children") or []
    if not kids:
        return ""
    counts: dict[str, int] = {}
    for kid in kids:
        p = str(kid.get("phase") or "Pending")
        counts[p] = counts.get(p, 0) + 1
    parts = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    word = "child" if len(kids) == 1 else "children"
    return f"{len(kids)} {word}: {parts}"


def status_line(obj: Obj, now: dt.datetime) -> str:
    """One line for live status: name, phase, duration, message and children."""
    meta = obj.get("metadata") or {}
    parts = [str(meta.get("name", "")), phase(obj) or "Pending"]
    took = duration(obj, now)
    if took:
        parts.append(took)
    message = one_line((obj.get("status") or {}).get("message"), 50)
    if message:
        parts.append(message)
    kids = children_summary(obj)
    if kids:
        parts.append(f"({kids})")
    return "  ".join(parts)


def change_key(obj: Obj) -> tuple[str, ...]:
    """What makes a status line worth printing again: phase, message and children."""
    message = one_line((obj.get("status") or {}).get("message"), 50)
    return (phase(obj) or "Pending", message, children_summary(obj))


def describe_execution(obj: Obj, tree: Sequence[Obj], now: dt.datetime) -> str:
    """The details of one Execution and the tree of its children."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    what = {
        "FLOW": f"Flow {(spec.get('flowRef') or {}).get('name')}",
        "SCRIPT": "inline script",
    }.get(str(spec.get("type") or "FLOW"), f"connection {json.dumps(spec.get('connection'))}")
    lines = [
        f"Name:         {meta.get('name')}",
        f"Namespace:    {meta.get('namespace')}",
        f"Type:         {spec.get('type') or 'FLOW'} ({what})",
        f"Mode:         {spec.get('mode') or 'productive'}",
        f"Phase:        {phase(obj) or '-'}",
        f"Desired:      {spec.get('desiredState') or 'Running'}"
        + ("" if spec.get("run", True) else " (created with run=false)"),
        f"Attempts:     {status.get('attempts') or 0}",
        f"Pod:          {status.get('podName') or '-'}",
        f"Started:      {status.get('startTime') or '-'}",
        f"Ended:        {status.get('endTime') or '-'}",
        f"Duration:     {duration(obj, now) or '-'}",
        f"Message:      {status.get('message') or '-'}",
    ]
    if status.get("statusMessage") and status.get("statusMessage") != status.get("message"):
        lines.append("Status message:")
        lines.extend("  " + line for line in str(status["statusMessage"]).rstrip().splitlines())
    lines.append("Inputs:       " + json.dumps(spec.get("inputs") or {}, sort_keys=True))
    lines.append("Outputs:      " + json.dumps(status.get("outputs") or {}, sort_keys=True))
    if len(tree) > 1:
        lines.append("Children:")
        ordered = tree_order(tree, roots=[obj])
        body = table(EXECUTION_HEADERS, (execution_row(e, now, p) for e, p in ordered))
        lines.extend("  " + line for line in body.splitlines())
    return "\n".join(lines)


def clean(obj: Obj) -> Obj:
    """An object without ``managedFields`` (noise in -o yaml/json), like kubectl's default."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    return {**obj, "metadata": meta} if obj.get("metadata") is not None else obj


def dump(data: Any, output: str) -> str:
    """``data`` as JSON (indented) or YAML (block style)."""
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    return yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, allow_unicode=True
    ).rstrip("\n")


def as_list(items: Sequence[Obj]) -> Obj:
    """A kubectl-style ``List`` of objects for ``-o json|yaml``."""
    return {"apiVersion": "v1", "kind": "List", "items": [clean(i) for i in items], "metadata": {}}
