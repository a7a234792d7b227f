"""Observability end to end: the Events of each Execution and the operator's /metrics.

One run covers the transitions a user sees in ``kubectl get events``: a parent FLOW starts a
child with ``run=False`` and waits for it (the test starts the child only once the parent is
``Waiting``, so that phase is certain), and a SCRIPT fails, is retried once and fails again.
The operator's counters are cumulative over the session, so the test waits until no Execution
is active (other tests' leftovers settle), then compares the counters before and after.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.polling import eventually

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., Any]
Operator = Any  # tests/e2e/conftest.py:Operator
Apply = Callable[..., None]
WaitPhase = Callable[..., dict[str, Any]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PARENT = """
def handler(system, this):
    child = this.flow('obs-child', run=False, wait=False)
    this.wait_for(child)
    return this.success('child done')
"""

CHILD = """
def handler(system, this):
    this.save(output_value={'ok': True})
"""

FAILING = """
def handler(system, this):
    raise RuntimeError('fails on purpose')
"""


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def event_reasons(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    out = kubectl(
        "get", "events", "-n", namespace,
        "--field-selector", f"involvedObject.name={name},involvedObject.kind=Execution",
        "-o", "json",
    ).stdout  # fmt: skip
    return [str(e["reason"]) for e in json.loads(out)["items"]]


def test_events_and_metrics_follow_each_transition(
    operator: Operator, namespace: str, apply: Apply, wait_phase: WaitPhase, kubectl: Kubectl
) -> None:
    def quiet() -> Samples | None:
        samples = scrape(operator.metrics_url)
        active = sum(v for (n, _), v in samples.items() if n == "kumulus_executions_active")
        return samples if active == 0 else None

    # The metrics endpoint may not answer yet while the operator starts.
    before = eventually(
        "no active Executions in the operator", quiet, timeout=120, tolerate=(OSError,)
    )

    apply(
        [
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Flow",
                "metadata": {"name": name},
                "spec": {"code": code},
            }
            for name, code in (("obs-parent", PARENT), ("obs-child", CHILD))
        ],
        namespace,
    )
    apply(
        [
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Execution",
                "metadata": {"name": "obs-parent"},
                "spec": {"flowRef": {"name": "obs-parent"}},
            },
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Execution",
                "metadata": {"name": "obs-fail"},
                "spec": {
                    "type": "SCRIPT",
                    "script": FAILING,
                    "retry": {"limit": 1, "backoffSeconds": 1, "factor": 1},
                },
            },
        ],
        namespace,
    )
    parent = wait_phase("obs-parent", namespace, "Waiting", timeout=120)
    (child_ref,) = parent["status"]["children"]
    child = child_ref["name"]
    kubectl(
        "patch", "execution", child, "-n", namespace, "--type", "merge",
        "-p", '{"spec": {"run": true}}',
    )  # fmt: skip
    assert (
        wait_phase("obs-parent", namespace, ("Succeeded", "Failed"), 120)["status"]["phase"]
        == "Succeeded"
    )
    assert wait_phase(child, namespace, ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
    failed = wait_phase("obs-fail", namespace, ("Succeeded", "Failed"), 120)
    assert failed["status"]["phase"] == "Failed" and failed["status"]["attempts"] == 2

    # Events: posted in the background, so wait until each story is complete.
    # Each transition the test forced, once; the ones it did not force (the short child seen
    # Running, the parent Running again after the wait) may or may not have been seen.
    forced = {
        "obs-parent": ["CreatedPod", "Started", "Waiting", "Succeeded"],
        child: ["NotStarted", "CreatedPod", "Succeeded"],
        "obs-fail": ["CreatedPod", "Retrying", "CreatedPod", "Failed"],
    }
    # FlowNotChecked: an Execution decided before the operator checked its new Flow waits for it.
    optional = {
        "obs-parent": {"Running", "FlowNotChecked"},
        child: {"Started"},
        "obs-fail": {"Started"},
    }
    for name, reasons in forced.items():

        def complete(name: str = name, reasons: list[str] = reasons) -> Counter[str] | None:
            seen = Counter(event_reasons(kubectl, namespace, name))
            return seen if seen >= Counter(reasons) else None

        seen = eventually(f"the Events of Execution {name}", complete, timeout=60)
        extra = seen - Counter(forced[name])
        assert set(extra) <= optional[name], (name, seen)
    selector = "involvedObject.name=obs-fail,reason=Failed"
    out = kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json")
    failed_events = json.loads(out.stdout)["items"]
    assert "FlowError" in failed_events[0]["message"] and failed_events[0]["type"] == "Warning"

    # Metrics: the counters moved by exactly what this test ran.
    after = scrape(operator.metrics_url)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("kumulus_executions_created_total", type="FLOW") == 2
    assert moved("kumulus_executions_created_total", type="SCRIPT") == 1
    assert moved("kumulus_executions_created_total", type="CONNECTION") == 0
    assert (
        moved(
            "kumulus_executions_finished_total", type="FLOW", phase="Succeeded", reason="Succeeded"
        )
        == 2
    )
    assert (
        moved(
            "kumulus_executions_finished_total", type="SCRIPT", phase="Failed", reason="FlowError"
        )
        == 1
    )
    assert moved("kumulus_execution_retries_total", type="SCRIPT") == 1
    assert moved("kumulus_execution_retries_total", type="FLOW") == 0
    # The first Pod of each Execution (not the retry's).
    assert moved("kumulus_execution_create_to_pod_seconds_count", type="FLOW") == 2
    assert moved("kumulus_execution_create_to_pod_seconds_count", type="SCRIPT") == 1
    # The parent certainly ran (it waited); the short child may end before it is seen running.
    assert 1 <= moved("kumulus_execution_create_to_running_seconds_count", type="FLOW") <= 2
    assert moved("kumulus_execution_duration_seconds_count", type="FLOW", phase="Succeeded") == 2
    assert moved("kumulus_execution_duration_seconds_count", type="SCRIPT", phase="Failed") == 1
    assert moved("kumulus_execution_duration_seconds_sum", type="FLOW", phase="Succeeded") > 0
    # The scrape-time gauges and the process metrics are served too.
    assert ("kumulus_engine_queue_depth", frozenset()) in after
    assert ("process_resident_memory_bytes", frozenset()) in after
    active = [v for (n, _), v in after.items() if n == "kumulus_executions_active"]
    assert len(active) == 12  # every type x live phase, at 0 or more
