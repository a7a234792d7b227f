"""Schedules end to end: real dev cluster, real operator(s), seconds-level schedules.

Each test checks outcomes, never speed: every instant gets exactly one Execution with the
right name, labels and owner; Forbid holds runs back, Replace cancels; suspend, edit and
delete act at once; catch-up after downtime follows catchUp; two operator processes never
start an instant twice. Lags (intended instant -> Execution seen by a watch) are printed.
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from tests.polling import eventually

from kumulus.domain.cron import CronSchedule

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "04-schedule"
Kubectl = Callable[..., Any]
Apply = Callable[..., None]
Operator = Any  # tests/e2e/conftest.py:Operator

Execution = create_namespaced_resource("kumulus.dev", "v1alpha1", "Execution", "executions")

QUICK = "def handler(system, this):\n    return this.success('ok')\n"
SUSPEND = '{"spec":{"suspend":true}}'
SLEEPER = """
import time
def handler(system, this):
    time.sleep(int(this.get('input_value').get('seconds', 30)))
    return this.success('slept')
"""


def flow(name: str, code: str = QUICK) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Flow",
        "metadata": {"name": name},
        "spec": {"code": code},
    }


def schedule(name: str, flow_name: str = "quick", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": name},
        "spec": {"flowRef": {"name": flow_name}, **spec},
    }


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


def runs_of(kubectl: Kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    items = get_json(kubectl, "executions", "-n", ns, "-l", f"kumulus.dev/schedule={name}")
    return sorted(items["items"], key=instant_of)


def instant_of(ex: dict[str, Any]) -> int:
    return int(ex["metadata"]["labels"]["kumulus.dev/scheduled-time"])


def sched_status(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json(kubectl, "schedule", name, "-n", ns).get("status") or {}
    return status


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def events(kubectl: Kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    out = get_json(
        kubectl,
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.kind=Schedule,involvedObject.name={name}",
    )
    return list(out["items"])


def started_names(kubectl: Kubectl, ns: str, name: str) -> list[str]:
    """Names from the Started Events: one per Execution the operator(s) created."""
    return [e["message"].split()[2] for e in events(kubectl, ns, name) if e["reason"] == "Started"]


def check_identity(ex: dict[str, Any], sched_name: str, uid: str) -> None:
    meta = ex["metadata"]
    unix = instant_of(ex)
    assert meta["name"] == f"{sched_name}-{unix}"
    assert meta["labels"]["kumulus.dev/schedule"] == sched_name
    stamp = datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert meta["annotations"]["kumulus.dev/scheduled-time"] == stamp
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Schedule",
        sched_name,
        uid,
        True,
    )


class Seen:
    """Watches Executions in a namespace and records when each one first appeared."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.at: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(client, namespace), daemon=True)
        self._thread.start()

    def _run(self, client: Client, namespace: str) -> None:
        while not self._stop:
            try:
                for _, obj in client.watch(Execution, namespace=namespace):
                    self.at.setdefault(obj.metadata.name, time.time())
                    if self._stop:
                        return
            except Exception:
                time.sleep(0.2)

    def lags(self, names: list[str]) -> list[float]:
        """Seen minus intended instant (the name's ``-<unix seconds>`` suffix)."""
        return [self.at[n] - int(n.rsplit("-", 1)[1]) for n in names if n in self.at]

    def stop(self) -> None:
        self._stop = True


@pytest.fixture
def seen(client: Client, namespace: str) -> Iterator[Seen]:
    watcher = Seen(client, namespace)
    yield watcher
    watcher.stop()


def print_lags(label: str, lags: list[float]) -> None:
    if lags:
        print(
            f"\n{label}: {len(lags)} executions, lag instant->seen p50 "
            f"{statistics.median(lags):.3f}s max {max(lags):.3f}s"
        )


# --------------------------------------------------------------------------- tests


def test_example_and_seconds_schedule_run_on_time_exactly_once(
    operator: Operator, namespace: str, kubectl: Kubectl, apply: Apply, seen: Seen
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / "flow.yaml"))
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLE / "schedule.yaml"))
    apply(flow("quick"), namespace)
    apply(
        schedule(
            "every2",
            schedule="*/2 * * * * *",
            catchUp="All",
            successfulHistoryLimit=2,
        ),
        namespace,
    )
    # The example (every 10 s, Europe/Vienna) lists the next times on the 10-second marks.
    status = eventually(
        "the example's status",
        lambda: (s := sched_status(kubectl, namespace, "heartbeat")).get("nextScheduleTimes") and s,
    )
    assert ready(status)["status"] == "True"
    nexts = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in status["nextScheduleTimes"]]
    assert len(nexts) == 3 and all(t.second % 10 == 0 for t in nexts)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(nexts)] == [10, 10]

    # The 2-second schedule: wait for 5 starts, then for the history limit to apply.
    eventually("5 starts", lambda: len(started_names(kubectl, namespace, "every2")) >= 5, 60)
    example_runs = eventually(
        "a succeeded heartbeat",
        lambda: [
            r
            for r in runs_of(kubectl, namespace, "heartbeat")
            if (r.get("status") or {}).get("phase") == "Succeeded"
        ],
        60,
    )
    assert example_runs[0]["status"]["outputs"] == {"source": "examples/04-schedule"}
    kubectl("patch", "schedule", "every2", "-n", namespace, "--type=merge", "-p", SUSPEND)
    eventually(
        "every2 suspended",
        lambda: ready(sched_status(kubectl, namespace, "every2")).get("reason") == "Suspended",
    )
    started = started_names(kubectl, namespace, "every2")
    instants = sorted(int(n.rsplit("-", 1)[1]) for n in started)
    # Exactly once, none lost: one start per 2-second instant, contiguous.
    assert len(set(started)) == len(started)
    assert instants == list(range(instants[0], instants[-1] + 1, 2))
    uid = get_json(kubectl, "schedule", "every2", "-n", namespace)["metadata"]["uid"]
    runs = runs_of(kubectl, namespace, "every2")
    for r in runs:
        check_identity(r, "every2", uid)
    print_lags(
        "every2 + heartbeat", seen.lags(started + [r["metadata"]["name"] for r in example_runs])
    )
    # History: only the 2 newest succeeded executions are kept.
    eventually(
        "history pruning",
        lambda: (
            len(
                [
                    r
                    for r in runs_of(kubectl, namespace, "every2")
                    if (r.get("status") or {}).get("phase") == "Succeeded"
                ]
            )
            <= 2
        ),
        60,
    )
    status = sched_status(kubectl, namespace, "every2")
    assert status["lastScheduleTime"] == datetime.fromtimestamp(instants[-1], UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert status.get("lastSuccessfulTime")
    assert ready(status)["reason"] == "Suspended"


def test_forbid_holds_back_and_replace_cancels(
    operator: Operator, namespace: str, kubectl: Kubectl, apply: Apply
) -> None:
    apply(flow("sleeper", SLEEPER), namespace)
    apply(
        schedule(
            "forbid",
            "sleeper",
            schedule="*/3 * * * * *",
            concurrencyPolicy="Forbid",
            catchUp="None",
            inputs={"seconds": 7},
        ),
        namespace,
    )
    apply(
        schedule(
            "replace",
            "sleeper",
            schedule="*/3 * * * * *",
            concurrencyPolicy="Replace",
            inputs={"seconds": 120},
        ),
        namespace,
    )
    # Replace: the second run cancels the first (desiredState: Cancelled).
    replaced = eventually(
        "two Replace runs", lambda: (r := runs_of(kubectl, namespace, "replace"))[1:] and r
    )
    first = replaced[0]["metadata"]["name"]
    ex = eventually(
        "the replaced run to be cancelled",
        lambda: (
            get_json(kubectl, "execution", first, "-n", namespace)
            if get_json(kubectl, "execution", first, "-n", namespace).get("status", {}).get("phase")
            == "Cancelled"
            else None
        ),
        90,
    )
    assert ex["spec"]["desiredState"] == "Cancelled"
    assert any(e["reason"] == "Replaced" for e in events(kubectl, namespace, "replace"))
    kubectl("delete", "schedule", "replace", "-n", namespace, "--wait=false")

    # Forbid: while the 7-second run is active, later instants are skipped (catchUp None).
    runs = eventually(
        "two Forbid runs",
        lambda: (r := runs_of(kubectl, namespace, "forbid")) and len(r) >= 2 and r,
        120,
    )
    a, b = runs[0], runs[1]
    assert instant_of(b) - instant_of(a) >= 6  # at least one instant was held back
    end_a = eventually(
        "the first Forbid run to end",
        lambda: (
            get_json(kubectl, "execution", a["metadata"]["name"], "-n", namespace)
            .get("status", {})
            .get("endTime")
        ),
    )
    assert b["metadata"]["creationTimestamp"] >= end_a  # never two at once
    # Reported as a Warning Event (Skipped Events are batched: at most one per 30 s).
    skipped = eventually(
        "a Skipped Event naming Forbid",
        lambda: [
            e
            for e in events(kubectl, namespace, "forbid")
            if e["reason"] == "Skipped" and "concurrencyPolicy Forbid" in e["message"]
        ],
        60,
    )
    assert skipped[0]["type"] == "Warning"
    assert "was still running" in skipped[0]["message"]


def test_edit_suspend_resume_and_delete(
    operator: Operator, namespace: str, kubectl: Kubectl, apply: Apply
) -> None:
    apply(flow("quick"), namespace)
    apply(
        schedule("cal", schedule="0 0 1 1 *", timeZone="Europe/Vienna", successfulHistoryLimit=100),
        namespace,
    )
    status = eventually(
        "next times",
        lambda: (s := sched_status(kubectl, namespace, "cal")).get("nextScheduleTimes") and s,
    )
    expected = CronSchedule.of("0 0 1 1 *", "Europe/Vienna").upcoming(datetime.now(UTC), 3)
    assert status["nextScheduleTimes"] == [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in expected]
    assert status["nextScheduleTimes"][0].endswith("-12-31T23:00:00Z")  # midnight in Vienna

    # Editing the schedule recomputes the next times at once.
    patch = {"spec": {"schedule": "*/2 * * * * *", "timeZone": "UTC", "catchUp": "Latest"}}
    kubectl("patch", "schedule", "cal", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    status = eventually(
        "recomputed next times",
        lambda: (s := sched_status(kubectl, namespace, "cal")).get("observedGeneration") == 2 and s,
        30,
    )
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in status["nextScheduleTimes"]]
    assert all(t.second % 2 == 0 for t in times)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [2, 2]
    eventually("a run", lambda: runs_of(kubectl, namespace, "cal"), 30)

    # Suspend: no new runs, no next times.
    kubectl("patch", "schedule", "cal", "-n", namespace, "--type=merge", "-p", SUSPEND)
    eventually(
        "suspended status",
        lambda: ready(sched_status(kubectl, namespace, "cal")).get("reason") == "Suspended",
        30,
    )
    suspended_at = time.time()
    assert "nextScheduleTimes" not in sched_status(kubectl, namespace, "cal")
    time.sleep(5)
    resumed_at = time.time()
    during = [
        r for r in runs_of(kubectl, namespace, "cal") if suspended_at < instant_of(r) <= resumed_at
    ]
    assert during == []

    # Resume: catchUp Latest starts the newest instant missed while suspended, then on time.
    kubectl(
        "patch",
        "schedule",
        "cal",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    caught = eventually(
        "the catch-up run",
        lambda: [
            r
            for r in runs_of(kubectl, namespace, "cal")
            if r["metadata"].get("annotations", {}).get("kumulus.dev/catch-up") == "true"
            and instant_of(r) > suspended_at
        ],
        30,
    )
    assert len(caught) == 1 and instant_of(caught[0]) <= time.time()
    eventually(
        "an on-time run after resuming",
        lambda: [r for r in runs_of(kubectl, namespace, "cal") if instant_of(r) > resumed_at + 1],
        30,
    )

    # Delete: the executions go with it (ownerReferences) and no new instant fires.
    kubectl("delete", "schedule", "cal", "-n", namespace)
    deleted_at = time.time()
    time.sleep(4)
    late = [r for r in runs_of(kubectl, namespace, "cal") if instant_of(r) > deleted_at + 0.5]
    assert late == []


def test_invalid_cron_and_time_zone_give_ready_false(
    operator: Operator, namespace: str, kubectl: Kubectl, apply: Apply
) -> None:
    apply(schedule("badcron", schedule="61 * * * *"), namespace)
    apply(schedule("badzone", schedule="@hourly", timeZone="Europe/Atlantis"), namespace)
    for name, reason, text in (
        ("badcron", "InvalidSchedule", "minute field: 61 is out of range 0-59"),
        ("badzone", "InvalidTimeZone", "'Europe/Atlantis' is not a known IANA time zone"),
    ):
        cond = eventually(
            f"{name} Ready=False",
            lambda name=name: (
                (c := ready(sched_status(kubectl, namespace, name))).get("status") == "False" and c
            ),
            30,
        )
        assert cond["reason"] == reason and text in cond["message"]
        evs = eventually(
            f"{name} event",
            lambda name=name, reason=reason: [
                e for e in events(kubectl, namespace, name) if e["reason"] == reason
            ],
        )
        assert evs[0]["type"] == "Warning" and text in evs[0]["message"]
    time.sleep(3)  # no retry storm: still one Event, no executions
    assert (
        len([e for e in events(kubectl, namespace, "badcron") if e["reason"] == "InvalidSchedule"])
        == 1
    )
    assert runs_of(kubectl, namespace, "badcron") == []
    kubectl(
        "patch",
        "schedule",
        "badcron",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"schedule":"1 * * * *"}}',
    )
    eventually(
        "Ready after the fix",
        lambda: ready(sched_status(kubectl, namespace, "badcron")).get("status") == "True",
        30,
    )


def test_catch_up_after_operator_downtime(
    operator: Operator, namespace: str, kubectl: Kubectl, apply: Apply
) -> None:
    apply(flow("quick"), namespace)
    operator.stop()
    try:
        for name, policy in (
            ("none", {"catchUp": "None"}),
            ("latest", {"catchUp": "Latest"}),
            ("all", {"catchUp": "All", "maxCatchUp": 3}),
        ):
            # Keep every run: the default history limit (3) could prune the
            # oldest catch-up run before the assertions below list them.
            apply(
                schedule(name, schedule="*/2 * * * * *", successfulHistoryLimit=100, **policy),
                namespace,
            )
        time.sleep(11)  # 5 instants are missed while no operator runs
    finally:
        restarted_at = time.time()
        operator.start()
    for name in ("none", "latest", "all"):
        eventually(
            f"on-time runs of {name}",
            lambda name=name: [
                r
                for r in runs_of(kubectl, namespace, name)
                if "kumulus.dev/catch-up" not in r["metadata"].get("annotations", {})
            ],
            90,
        )

    def catch_up(runs: list[dict[str, Any]]) -> list[int]:
        return [
            instant_of(r)
            for r in runs
            if r["metadata"].get("annotations", {}).get("kumulus.dev/catch-up") == "true"
        ]

    none, latest, all_ = (runs_of(kubectl, namespace, n) for n in ("none", "latest", "all"))
    assert catch_up(none) == []
    assert all(instant_of(r) > restarted_at for r in none)
    assert len(catch_up(latest)) == 1
    assert instant_of(latest[0]) == catch_up(latest)[0]  # nothing older ran
    got = catch_up(all_)
    assert len(got) == 3 and got == [got[0], got[0] + 2, got[0] + 4]
    assert instant_of(all_[0]) == got[0]
    for runs in (none, latest, all_):
        instants = [instant_of(r) for r in runs]
        assert len(set(instants)) == len(instants)


def test_two_operator_processes_never_start_an_instant_twice(
    operator: Operator, namespace: str, kubectl: Kubectl, apply: Apply, tmp_path: Path
) -> None:
    second = type(operator)(operator.kubeconfig, tmp_path / "operator-2.log", operator.env)
    apply(flow("quick"), namespace)
    second.start()
    try:
        apply(
            schedule(
                "twice",
                schedule="*/2 * * * * *",
                catchUp="All",
                successfulHistoryLimit=100,
            ),
            namespace,
        )
        eventually("4 runs", lambda: len(runs_of(kubectl, namespace, "twice")) >= 4, 60)
        operator.kill()  # fail-over: the second process carries on alone
        killed_at = time.time()
        eventually(
            "runs after the fail-over",
            lambda: (
                len(
                    [
                        r
                        for r in runs_of(kubectl, namespace, "twice")
                        if instant_of(r) > killed_at + 1
                    ]
                )
                >= 2
            ),
            60,
        )
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
    time.sleep(3)  # both processes again
    kubectl("patch", "schedule", "twice", "-n", namespace, "--type=merge", "-p", SUSPEND)
    eventually(
        "twice suspended",
        lambda: ready(sched_status(kubectl, namespace, "twice")).get("reason") == "Suspended",
    )
    second.stop()
    runs = runs_of(kubectl, namespace, "twice")
    instants = [instant_of(r) for r in runs]
    assert len(set(instants)) == len(instants)
    assert instants == list(range(instants[0], instants[-1] + 1, 2))  # none lost
    started = started_names(kubectl, namespace, "twice")
    assert sorted(started) == sorted(r["metadata"]["name"] for r in runs)  # each created once
    logs = operator.log_path.read_text(errors="replace") + (tmp_path / "operator-2.log").read_text(
        errors="replace"
    )
    raced = logs.count("already created; did not start it twice")
    print(f"\ntwo operators: {len(runs)} executions, {raced} lost create races")
    assert "Failed a round of Schedule" not in logs
