"""``kumulus logs``: finding an execution tree's Pods and streaming their logs to the end.

The API is faked here (a unit test): a Pod whose follow stream ends before its container ran,
or a stream that drops in the middle, must still be read to the end, without repeated lines.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from kumulus.cli.kube import CliError
from kumulus.cli.logs import LogFollower, LogPrinter

pytestmark = pytest.mark.unit


def pod(
    name: str, owner_uid: str, phase: str = "Running", terminated: bool = False, created: str = "00"
) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0}} if terminated else {"running": {}}
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": f"2024-05-01T00:00:{created}Z",
            "ownerReferences": [{"kind": "Execution", "uid": owner_uid, "controller": True}],
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "runner", "state": state}]},
    }


def execution(
    name: str, uid: str, parent: str | None = None, phase: str = "Succeeded"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid, "creationTimestamp": "2024-05-01T00:00:00Z"}
    if parent:
        meta["ownerReferences"] = [{"kind": "Execution", "uid": parent, "controller": True}]
    return {"metadata": meta, "status": {"phase": phase}}


class FakeKube:
    """Answers like the API: Pod states and log streams follow scripted sequences."""

    namespace = "default"

    def __init__(self) -> None:
        self.executions = [execution("root", "r"), execution("root-1-1", "c", parent="r")]
        self.pod_list = [pod("root-1-1-a1", "c", created="01"), pod("root-a1", "r", created="00")]
        # Per Pod: the states seen by successive pod() calls (the last one repeats) ...
        self.states: dict[str, list[dict[str, Any]]] = {}
        # ... and the lines of successive log requests (the last one repeats).
        self.logs: dict[str, list[list[str]]] = {}
        self.log_calls: list[tuple[str, bool]] = []

    def get(self, res: Any, name: str) -> dict[str, Any]:
        return next(e for e in self.executions if e["metadata"]["name"] == name)

    def list_objects(
        self, res: Any, labels: Any = None, all_namespaces: bool = False
    ) -> list[dict[str, Any]]:
        return [e for e in self.executions if e["metadata"].get("ownerReferences")]

    def pods(self, labels: Any) -> list[dict[str, Any]]:
        return self.pod_list

    def pod(self, name: str) -> dict[str, Any]:
        seq = self.states.get(name)
        if seq is None:
            raise CliError(f"Pod default/{name} not found.")
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def pod_log(self, name: str, follow: bool) -> Iterator[str]:
        self.log_calls.append((name, follow))
        seq = self.logs[name]
        return iter(seq.pop(0) if len(seq) > 1 else seq[0])


def test_print_once_prefixes_each_execution_and_covers_children() -> None:
    kube = FakeKube()
    kube.logs = {"root-a1": [["a\n", "b\n"]], "root-1-1-a1": [["c\n"]]}
    out = io.StringIO()
    LogFollower(kube, "root", LogPrinter(out), follow=False).run()  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == ["[root] a", "[root] b", "[root-1-1] c"]


def test_no_children_prints_only_the_execution_itself() -> None:
    kube = FakeKube()
    kube.logs = {"root-a1": [["a\n"]], "root-1-1-a1": [["c\n"]]}
    out = io.StringIO()
    LogFollower(kube, "root", LogPrinter(out), children=False).run()  # type: ignore[arg-type]
    assert out.getvalue() == "[root] a\n"


def test_stream_retries_until_the_container_ended_without_repeating_lines() -> None:
    kube = FakeKube()
    name = "root-1-1-a1"
    running = pod(name, "c")
    ended = pod(name, "c", phase="Succeeded", terminated=True)
    # Not started (empty stream), then a stream that drops after two lines, then ended.
    kube.states = {name: [running, running, ended]}
    kube.logs = {name: [[], ["one\n", "two\n"], ["one\n", "two\n", "three\n"]]}
    out = io.StringIO()
    follower = LogFollower(kube, "root", LogPrinter(out), follow=True)  # type: ignore[arg-type]
    follower._stream(kube.pod_list[0], "root-1-1")
    assert out.getvalue().splitlines() == ["[root-1-1] one", "[root-1-1] two", "[root-1-1] three"]
    # Followed while running; the last read, after the container ended, does not follow.
    assert kube.log_calls == [(name, True), (name, True), (name, False)]


def test_stream_stops_when_the_pod_is_gone() -> None:
    kube = FakeKube()
    out = io.StringIO()
    follower = LogFollower(kube, "root", LogPrinter(out), follow=True)  # type: ignore[arg-type]
    follower._stream(kube.pod_list[1], "root")
    assert out.getvalue() == "" and kube.log_calls == []


def test_follow_ends_once_the_tree_ended_and_streams_drained() -> None:
    kube = FakeKube()
    for p in kube.pod_list:
        name = p["metadata"]["name"]
        kube.states[name] = [pod(name, "x", phase="Succeeded", terminated=True)]
    kube.logs = {"root-a1": [["a\n"]], "root-1-1-a1": [["c\n"]]}
    out = io.StringIO()
    LogFollower(kube, "root", LogPrinter(out), follow=True).run()  # type: ignore[arg-type]
    assert sorted(out.getvalue().splitlines()) == ["[root-1-1] c", "[root] a"]
