"""The flow API end to end: real dev cluster, real operator, real runner processes.

Each test applies Flows and an Execution into a fresh namespace, waits (by watching) for the
Execution to end, and asserts on the phase, outputs and messages the runner and operator wrote.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource

pytestmark = pytest.mark.e2e

Execution: Any = create_namespaced_resource("kumulus.dev", "v1alpha1", "Execution", "executions")
TERMINAL = {"Succeeded", "Failed", "Cancelled"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _operator_running(operator: Any) -> None:
    """Every test here needs the operator (fixture from tests/e2e/conftest.py)."""


def apply_docs(kubectl: Any, namespace: str, docs: list[dict[str, Any]] | str) -> None:
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    kubectl("apply", "-n", namespace, "-f", "-", input=text)


def wait_ended(client: Client, namespace: str, name: str) -> dict[str, Any]:
    """Watch the Execution until its phase is terminal; return it (pytest-timeout bounds it)."""
    obj = client.get(Execution, name, namespace=namespace)
    if (obj.get("status") or {}).get("phase") in TERMINAL:
        return dict(obj)
    rv = obj["metadata"]["resourceVersion"]
    for _, event_obj in client.watch(
        Execution,
        namespace=namespace,
        fields={"metadata.name": name},
        resource_version=rv,
        server_timeout=60,
    ):
        if (event_obj.get("status") or {}).get("phase") in TERMINAL:
            return dict(event_obj)
    raise AssertionError("unreachable: the watch never ends by itself")


def flow(name: str, code: str) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Flow",
        "metadata": {"name": name},
        "spec": {"code": textwrap.dedent(code)},
    }


def execution(name: str, flow_name: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "FLOW", "flowRef": {"name": flow_name}}
    if inputs is not None:
        spec["inputs"] = inputs
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": spec,
    }


CHILD_OK = flow(
    "child-ok",
    """
    def handler(system, this, inputs):
        this.set_output('double', inputs.get('n', 0) * 2)
    """,
)
CHILD_FAIL = flow(
    "child-fail",
    """
    def handler(system, this):
        raise RuntimeError('child broke')
    """,
)


def run_parent(
    kubectl: Any, client: Client, namespace: str, code: str, inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    apply_docs(
        kubectl,
        namespace,
        [CHILD_OK, CHILD_FAIL, flow("parent", code), execution("parent", "parent", inputs)],
    )
    return wait_ended(client, namespace, "parent")


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def test_hello_flow_with_inputs_and_outputs(kubectl: Any, client: Client, namespace: str) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        import flow_api

        def handler(system: flow_api.System, this: flow_api.Execution, inputs):
            this.log('Greeting', who=inputs['who'])
            this.save(message='greeted', name='Greeter')
            this.save(output_value={'greeting': 'Hello ' + this.get('input_value')['who']})
            return this.success('done')
        """,
        inputs={"who": "e2e"},
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == {"greeting": "Hello e2e"}
    assert status["displayName"] == "Greeter"
    assert status["runner"]["result"]["status"] == "ENDED_SUCCESS"


def test_sync_child(kubectl: Any, client: Client, namespace: str) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        def handler(system, this):
            child = this.flow('child-ok', n=21)
            this.save(output_value={'got': child.get('output_value')['double'],
                                    'status': child.get('status')})
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == {"got": 42, "status": "ENDED_SUCCESS"}
    child = client.get(Execution, "parent-1-1", namespace=namespace)
    owners = child["metadata"]["ownerReferences"]
    assert owners[0]["name"] == "parent" and owners[0]["controller"] is True
    assert child["metadata"]["labels"]["kumulus.dev/parent"] == "parent"


def test_ten_async_children_joined_with_wait_for(
    kubectl: Any, client: Client, namespace: str
) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        def handler(system, this):
            children = [this.flow('child-ok', n=i, wait=False) for i in range(10)]
            ended = this.wait_for(*children)
            this.save(output_value={
                'ended': len(ended),
                'sum': sum(c.get('output_value')['double'] for c in children),
            })
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == {"ended": 10, "sum": 90}
    children = list(
        client.list(Execution, namespace=namespace, labels={"kumulus.dev/parent": "parent"})
    )
    assert sorted(c["metadata"]["name"] for c in children) == sorted(
        f"parent-1-{i}" for i in range(1, 11)
    )
    assert {c["status"]["phase"] for c in children} == {"Succeeded"}


def test_failing_child_raises_dependency_failed_error(
    kubectl: Any, client: Client, namespace: str
) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        import flow_api

        def handler(system, this):
            try:
                this.flow('child-fail')
            except flow_api.DependencyFailedError as exc:
                return this.success(str(exc))
            return this.error('no DependencyFailedError')
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    message = status["runner"]["result"]["message"]
    assert "parent-1-1" in message
    assert "ENDED_ERROR" in message
    assert "child broke" in message


def test_all_ended_does_not_raise(kubectl: Any, client: Client, namespace: str) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        def handler(system, this):
            child = this.flow('child-fail', wait=system.return_when.ALL_ENDED)
            this.save(output_value={'status': child.load('status'),
                                    'own': this.load('status')})
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == {"status": "ENDED_ERROR", "own": "RUNNING"}


def test_run_false_then_run(kubectl: Any, client: Client, namespace: str) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        def handler(system, this):
            child = this.flow('child-ok', n=5, run=False)
            before = child.load('status')
            child.run()
            this.save(output_value={'before': before, 'after': child.load('status'),
                                    'double': child.get('output_value')['double']})
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == {"before": "PENDING", "after": "ENDED_SUCCESS", "double": 10}


def test_unhandled_exception_fails_with_traceback(
    kubectl: Any, client: Client, namespace: str
) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        def handler(system, this):
            values = {}
            return values['missing']
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Failed", status
    assert "Traceback (most recent call last)" in status["statusMessage"]
    assert 'File "<flow parent>", line 4, in handler' in status["statusMessage"]
    assert "KeyError: 'missing'" in status["statusMessage"]


def test_outputs_over_the_limit_fail(kubectl: Any, client: Client, namespace: str) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        def handler(system, this):
            this.set_output('big', 'x' * 300000)
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Failed", status
    assert "over the limit of 262144 bytes" in status["statusMessage"]
    assert "big" not in (status.get("outputs") or {})


def test_outputs_are_measured_as_they_are_stored(
    kubectl: Any, client: Client, namespace: str
) -> None:
    # 100,000 x "é" is 200,011 bytes as the API server stores it (UTF-8) but 600,011 as
    # ASCII-escaped JSON. The runner and the operator measure alike, so what the flow was
    # allowed to save is kept (issue 11: it used to fail the Execution with OutputTooLarge).
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        import flow_api

        def handler(system, this):
            try:
                this.save(output_value={'text': 'é' * 100000})
            except flow_api.OutputLimitExceeded as exc:
                this.save(message=str(exc))
                raise
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status.get("statusMessage")
    assert status["outputs"] == {"text": "é" * 100000}


def test_a_flow_catches_the_output_limit_and_saves_less(
    kubectl: Any, client: Client, namespace: str
) -> None:
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        import flow_api

        def handler(system, this):
            try:
                this.save(output_value={'big': 'x' * 300000})
            except flow_api.OutputLimitExceeded as exc:
                this.save(output_value={'summary': 'too big'}, message=str(exc))
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status.get("statusMessage")
    assert status["outputs"] == {"summary": "too big"}
    assert "over the limit of 262144 bytes" in status["message"]


@pytest.mark.parametrize(
    ("folder", "name", "outputs"),
    [
        ("01-hello-flow", "hello-world", {"greeting": "Hello, Kumulus!"}),
        ("02-parallel-children", "sum-of-squares-1", {"sum": 55, "children": 5}),
    ],
)
def test_examples_succeed(
    kubectl: Any,
    client: Client,
    namespace: str,
    folder: str,
    name: str,
    outputs: dict[str, Any],
) -> None:
    for manifest in ("flow.yaml", "execution.yaml"):
        kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / folder / manifest))
    status = status_of(wait_ended(client, namespace, name))
    assert status["phase"] == "Succeeded", status
    assert status["outputs"] == outputs


def test_sync_child_round_trips(kubectl: Any, client: Client, namespace: str) -> None:
    """Five sequential sync children; prints the measured round trips (no timing assertion)."""
    obj = run_parent(
        kubectl,
        client,
        namespace,
        """
        import time

        def handler(system, this):
            took = []
            for i in range(5):
                start = time.monotonic()
                child = this.flow('child-ok', n=i)
                took.append(round(time.monotonic() - start, 3))
                assert child.get('output_value') == {'double': 2 * i}
            this.save(output_value={'seconds': took})
        """,
    )
    status = status_of(obj)
    assert status["phase"] == "Succeeded", status
    seconds = status["outputs"]["seconds"]
    assert len(seconds) == 5
    print(f"\nSync child round trips (s): {seconds}")
