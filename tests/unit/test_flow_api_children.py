"""Child executions: creation, joins, return_when, run=False, pause/cancel, waiting state."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kumulus.runner.client import ApiRequestError
from kumulus.runner.engine import Engine, ReturnWhen, evaluate_wait, owned_child
from kumulus.runner.fake import FakeClient
from kumulus.runner.main import run

pytestmark = pytest.mark.unit

ENV = {"KUMULUS_EXECUTION": "parent", "KUMULUS_NAMESPACE": "default", "KUMULUS_ATTEMPT": "1"}
Hook = Callable[[FakeClient, dict[str, Any]], None]


def finish_in_background(phase: str = "Succeeded", **status: Any) -> Hook:
    """Play the operator: end every started child from another thread."""

    def hook(fake: FakeClient, obj: dict[str, Any]) -> None:
        if obj["spec"].get("run") is False:
            return
        name = obj["metadata"]["name"]
        outputs = {"child": name, **(obj["spec"].get("inputs") or {})}
        threading.Thread(
            target=fake.update_status,
            args=(name,),
            kwargs={"phase": phase, "outputs": outputs, **status},
        ).start()

    return hook


@pytest.fixture
def fake() -> Iterator[FakeClient]:
    client = FakeClient(on_create=finish_in_background(), on_patch=finish_in_background())
    yield client
    client.close()


def run_parent(fake: FakeClient, code: str, watch_self: bool = False) -> tuple[int, dict[str, Any]]:
    fake.add_flow("parent", code)
    fake.add_flow("child", "def handler(s, t):\n    pass\n")
    fake.add_execution(
        "parent", {"type": "FLOW", "flowRef": {"name": "parent"}, "mode": "development"}
    )
    rc = run(ENV, fake, out=io.StringIO(), watch_self=watch_self)
    return rc, fake.executions["parent"].get("status") or {}


def test_sync_child_is_created_owned_and_its_outputs_are_read(fake: FakeClient) -> None:
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    child = this.flow('child', inputs={'a': 1}, b=2, name='The child')\n"
        "    assert child.get('status') == 'ENDED_SUCCESS'\n"
        "    this.save(output_value=child.get('output_value'))\n",
    )
    assert rc == 0, status["runner"]["result"]
    assert status["outputs"] == {"child": "parent-1-1", "a": 1, "b": 2}
    body = next(c[2] for c in fake.calls if c[0] == "create_execution")
    assert body["metadata"]["name"] == "parent-1-1"
    assert body["metadata"]["labels"]["kumulus.dev/parent"] == "parent"
    assert body["metadata"]["annotations"]["kumulus.dev/display-name"] == "The child"
    owner = body["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "name": "parent",
        "uid": "uid-parent",
        "controller": True,
    }
    assert body["spec"] == {
        "type": "FLOW",
        "flowRef": {"name": "child"},
        "inputs": {"a": 1, "b": 2},
        "run": True,
        "mode": "development",
    }


def test_ten_async_children_joined_with_wait_for(fake: FakeClient) -> None:
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    children = [this.flow('child', i=i, wait=False) for i in range(10)]\n"
        "    ended = this.wait_for(*children)\n"
        "    this.save(output_value={'sum': sum(c.get('output_value')['i'] for c in ended)})\n",
    )
    assert rc == 0, status["runner"]["result"]
    assert status["outputs"] == {"sum": 45}
    names = [c[1] for c in fake.calls if c[0] == "create_execution"]
    assert names == [f"parent-1-{i}" for i in range(1, 11)]


def test_failing_child_raises_dependency_failed_error(fake: FakeClient) -> None:
    fake.on_create = finish_in_background("Failed", statusMessage="ValueError: nope")
    rc, status = run_parent(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    try:\n"
        "        this.flow('child')\n"
        "    except flow_api.DependencyFailedError as exc:\n"
        "        this.success(str(exc))\n"
        "    this.error('not raised')\n",
    )
    assert rc == 0
    message = status["runner"]["result"]["message"]
    assert "default/parent-1-1" in message
    assert "ENDED_ERROR" in message
    assert "ValueError: nope" in message


def test_all_ended_does_not_raise(fake: FakeClient) -> None:
    fake.on_create = finish_in_background("Cancelled")
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    child = this.flow('child', wait=system.return_when.ALL_ENDED)\n"
        "    this.success(child.get('status'))\n",
    )
    assert rc == 0
    assert status["runner"]["result"]["message"] == "ENDED_CANCELLED"


def test_unhandled_dependency_failure_fails_the_parent(fake: FakeClient) -> None:
    fake.on_create = finish_in_background("Failed")
    rc, status = run_parent(fake, "def handler(system, this):\n    this.flow('child')\n")
    assert rc == 1
    assert "DependencyFailedError" in status["runner"]["result"]["traceback"]


def test_run_false_then_run(fake: FakeClient) -> None:
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    child = this.flow('child', run=False)\n"
        "    assert child.get('status') == 'PENDING'\n"
        "    child.run()\n"
        "    assert child.get('status') == 'ENDED_SUCCESS'\n"
        "    assert child.run() is child\n",
    )
    assert rc == 0, status["runner"]["result"]
    body = next(c[2] for c in fake.calls if c[0] == "create_execution")
    assert body["spec"]["run"] is False
    patches = [c[2] for c in fake.calls if c[0] == "patch_execution"]
    assert patches == [{"spec": {"run": True}}]


def test_pause_cancel_and_resume_children(fake: FakeClient) -> None:
    fake.on_create = None
    fake.on_patch = None
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    a = this.flow('child', wait=False)\n"
        "    b = this.flow('child', wait=False)\n"
        "    a.pause()\n"
        "    b.cancel()\n"
        "    a.run_async()\n",
    )
    assert rc == 0, status["runner"]["result"]
    patches = [(c[1], c[2]) for c in fake.calls if c[0] == "patch_execution"]
    assert patches == [
        ("parent-1-1", {"spec": {"desiredState": "Paused"}}),
        ("parent-1-2", {"spec": {"desiredState": "Cancelled"}}),
        ("parent-1-1", {"spec": {"desiredState": "Running"}}),
    ]


def test_waiting_is_reported_while_joined(fake: FakeClient) -> None:
    fake.on_create = None

    def operator() -> None:
        fake.wait_until(
            "parent", lambda o: o.get("status", {}).get("runner", {}).get("state") == "waiting"
        )
        fake.update_status("parent-1-1", phase="Succeeded")

    driver = threading.Thread(target=operator)
    driver.start()
    rc, status = run_parent(fake, "def handler(system, this):\n    this.flow('child')\n")
    driver.join()
    assert rc == 0, status["runner"]["result"]
    assert fake.runner_states("parent") == ["running", "waiting", "running", "ended"]


def test_wait_timeout_raises_dependency_timeout(fake: FakeClient) -> None:
    fake.on_create = None
    rc, status = run_parent(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    child = this.flow('child', wait=False)\n"
        "    try:\n"
        "        child.wait(timeout=0.05)\n"
        "    except flow_api.DependencyTimeoutError:\n"
        "        this.success('timed out')\n",
    )
    assert rc == 0
    assert status["runner"]["result"]["message"] == "timed out"


def test_first_ended_returns_the_ended_children(fake: FakeClient) -> None:
    fake.on_create = None

    def operator() -> None:
        fake.wait_until("parent-1-2", lambda o: True)
        fake.update_status("parent-1-2", phase="Succeeded")

    driver = threading.Thread(target=operator)
    driver.start()
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    a = this.flow('child', wait=False)\n"
        "    b = this.flow('child', wait=False)\n"
        "    ended = this.wait_for(a, b, return_when=system.return_when.FIRST_ENDED)\n"
        "    this.success(','.join(e.get('id') for e in ended))\n",
    )
    driver.join()
    assert rc == 0
    assert status["runner"]["result"]["message"] == "parent-1-2"


OURS = {"kind": "Execution", "name": "parent", "uid": "uid-parent", "controller": True}


def squat(fake: FakeClient, owners: list[dict[str, Any]], labels: dict[str, str] | None) -> None:
    """Pre-create the parent's first child name with a forged, finished status."""
    meta: dict[str, Any] = {"name": "parent-1-1", "namespace": "default", "uid": "uid-squat"}
    if owners:
        meta["ownerReferences"] = owners
    if labels is not None:
        meta["labels"] = labels
    fake.executions["parent-1-1"] = {
        "metadata": meta,
        "spec": {"type": "FLOW", "flowRef": {"name": "child"}},
        "status": {"phase": "Succeeded", "outputs": {"forged": True}},
    }


ADOPT = (
    "def handler(system, this):\n    this.success(str(this.flow('child').get('output_value')))\n"
)


def test_existing_child_of_ours_is_adopted(fake: FakeClient) -> None:
    fake.on_create = None
    squat(fake, [OURS], {"kumulus.dev/parent": "parent"})
    rc, status = run_parent(fake, ADOPT)
    assert rc == 0, status["runner"]["result"]
    assert status["runner"]["result"]["message"] == "{'forged': True}"


@pytest.mark.parametrize(
    ("owners", "labels"),
    [
        ([], {"kumulus.dev/parent": "parent"}),  # only the label
        ([{**OURS, "uid": "someone-else"}], {"kumulus.dev/parent": "parent"}),  # our name only
        ([{**OURS, "controller": False}], {"kumulus.dev/parent": "parent"}),  # not controller
        ([{**OURS, "kind": "Schedule"}], {"kumulus.dev/parent": "parent"}),  # another kind
        ([OURS], None),  # no parent label
        ([OURS], {"kumulus.dev/parent": "other"}),  # another parent's label
    ],
    ids=["label-only", "other-uid", "not-controller", "other-kind", "no-label", "other-label"],
)
def test_a_squatted_child_name_is_not_adopted(
    fake: FakeClient, owners: list[dict[str, Any]], labels: dict[str, str] | None
) -> None:
    fake.on_create = None
    squat(fake, owners, labels)
    before = dict(fake.executions["parent-1-1"])
    rc, status = run_parent(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    try:\n"
        "        child = this.flow('child')\n"
        "    except flow_api.ChildNameTaken as exc:\n"
        "        this.error('refused: ' + str(exc))\n"
        "    this.success(str(child.get('output_value')))\n",
    )
    assert rc == 1, status["runner"]["result"]
    message = status["runner"]["result"]["message"]
    assert message.startswith("refused: The child name default/parent-1-1 is taken"), message
    assert "does not own" in message and "forged" not in message
    # Nothing was adopted, nothing was patched: the squatter is as it was.
    assert fake.executions["parent-1-1"] == before
    assert not [c for c in fake.calls if c[0] == "patch_execution" and c[1] == "parent-1-1"]


def test_an_uncaught_squatted_name_fails_the_parent_with_the_reason(fake: FakeClient) -> None:
    fake.on_create = None
    squat(fake, [], {"kumulus.dev/parent": "parent"})
    rc, status = run_parent(fake, "def handler(system, this):\n    this.flow('child')\n")
    assert rc == 1
    assert "ChildNameTaken" in status["runner"]["result"]["message"]


def test_the_children_watch_ignores_objects_the_parent_does_not_control() -> None:
    # The watch selects by the parent label, which anyone may set: a forged object (even one
    # that takes a deleted child's name) must never become the child the flow reads.
    fake = FakeClient()
    engine = Engine(fake, fake.add_execution("parent", {"type": "FLOW"}), attempt=1)
    real = {
        "metadata": {
            "name": "parent-1-1",
            "labels": {"kumulus.dev/parent": "parent"},
            "ownerReferences": [OURS],
            "resourceVersion": "5",
        },
        "status": {"phase": "Running"},
    }
    forged = {
        "metadata": {
            "name": "parent-1-1",
            "labels": {"kumulus.dev/parent": "parent"},
            "ownerReferences": [{**OURS, "uid": "uid-squat"}],
            "resourceVersion": "7",
        },
        "status": {"phase": "Succeeded", "outputs": {"forged": True}},
    }
    engine._on_child("ADDED", real)
    engine._on_child("MODIFIED", forged)
    assert engine.cached_child("parent-1-1") == real
    engine._on_child("DELETED", real)
    engine._on_child("ADDED", forged)
    assert "parent-1-1" in engine._deleted  # the real child is gone; the squatter is not it
    engine._on_child("ADDED", {**forged, "metadata": {**forged["metadata"], "name": "p-x"}})
    assert engine.cached_child("p-x") is None
    assert owned_child(real, "parent", "uid-parent")
    assert not owned_child(real, "parent", None)


def test_connect_task_and_script_children(fake: FakeClient) -> None:
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n"
        "    this.connect('db', fetchval='SELECT 1')\n"
        "    this.connect(connector_type='REST', url='http://x')\n"
        "    this.task('REST', url='http://y')\n"
        "    this.script('def handler(s, t):\\n    pass\\n', inputs={'q': 1})\n",
    )
    assert rc == 0, status["runner"]["result"]
    specs = [c[2]["spec"] for c in fake.calls if c[0] == "create_execution"]
    assert specs[0]["connection"] == {"name": "db", "inputs": {"fetchval": "SELECT 1"}}
    assert specs[1]["connection"] == {"type": "REST", "inputs": {"url": "http://x"}}
    assert specs[2]["connection"] == {"type": "REST", "inputs": {"url": "http://y"}}
    assert {s["type"] for s in specs[:3]} == {"CONNECTION"}
    assert specs[3]["type"] == "SCRIPT" and specs[3]["inputs"] == {"q": 1}


def test_own_pause_blocks_until_resumed(fake: FakeClient) -> None:
    def user() -> None:
        fake.wait_until(
            "parent", lambda o: o.get("status", {}).get("runner", {}).get("state") == "paused"
        )
        fake.update_spec("parent", desiredState="Running")

    driver = threading.Thread(target=user)
    driver.start()
    rc, status = run_parent(
        fake,
        "def handler(system, this):\n    this.pause()\n    this.save(message='resumed')\n",
        watch_self=True,
    )
    driver.join()
    assert rc == 0, status["runner"]["result"]
    assert status["message"] == "resumed"
    assert fake.runner_states("parent") == ["running", "paused", "running", "ended"]


def test_own_watch_starts_at_the_running_report_without_a_list(fake: FakeClient) -> None:
    """The runner follows its own Execution from the version its first status patch returned:
    no list (a consistent read, the costliest request under load) before that watch."""
    test_own_pause_blocks_until_resumed(fake)
    own = [c for c in fake.calls if c[0] in ("list_executions", "watch_executions")]
    assert own and own[0][:2] == ("watch_executions", "parent")
    assert ("list_executions", "parent", None) not in own
    running = next(c for c in fake.calls if c[0] == "patch_execution_status")
    assert running[2]["status"]["runner"]["state"] == "running"
    # The version the "running" patch produced: the first event after it is the user's resume.
    versions = [int(v) for v, event, obj in fake._events if obj["metadata"]["name"] == "parent"]
    assert int(own[0][2]) in versions


class GoneOnce(FakeClient):
    """Its first watch fails like a watch from a compacted version (HTTP 410 Gone)."""

    failed = False

    def watch_executions(self, **kwargs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.failed:
            self.failed = True
            raise ApiRequestError("Failed to watch Executions: too old resource version")
        yield from super().watch_executions(**kwargs)


def test_own_watch_lists_again_after_an_error() -> None:
    fake = GoneOnce(on_create=finish_in_background(), on_patch=finish_in_background())
    try:
        test_own_pause_blocks_until_resumed(fake)
    finally:
        fake.close()
    assert fake.failed
    assert ("list_executions", "parent", None) in fake.calls


def test_paused_execution_blocks_until_resumed(fake: FakeClient) -> None:
    fake.add_flow("parent", "def handler(system, this):\n    this.save(message='ran')\n")
    fake.add_execution(
        "parent", {"type": "FLOW", "flowRef": {"name": "parent"}, "desiredState": "Paused"}
    )

    def user() -> None:
        fake.wait_until(
            "parent", lambda o: o.get("status", {}).get("runner", {}).get("state") == "paused"
        )
        assert fake.executions["parent"]["status"].get("message") is None
        fake.update_spec("parent", desiredState="Running")

    driver = threading.Thread(target=user)
    driver.start()
    rc = run(ENV, fake, out=io.StringIO(), watch_self=True)
    driver.join()
    assert rc == 0
    assert fake.executions["parent"]["status"]["message"] == "ran"
    assert fake.runner_states("parent") == ["running", "paused", "running", "ended"]


@pytest.mark.parametrize(
    ("phases", "return_when", "done", "failed"),
    [
        (["Succeeded", "Running"], ReturnWhen.ALL_SUCCEEDED, False, False),
        (["Succeeded", "Succeeded"], ReturnWhen.ALL_SUCCEEDED, True, False),
        (["Failed", "Running"], ReturnWhen.ALL_SUCCEEDED, True, True),
        (["Failed", "Running"], ReturnWhen.ALL_ENDED, False, False),
        (["Failed", "Cancelled"], ReturnWhen.ALL_ENDED, True, False),
        (["Running", None], ReturnWhen.FIRST_ENDED, False, False),
        (["Running", "Failed"], ReturnWhen.FIRST_ENDED, True, False),
        ([], ReturnWhen.FIRST_ENDED, True, False),
    ],
)
def test_return_when_logic(
    phases: list[str | None], return_when: ReturnWhen, done: bool, failed: bool
) -> None:
    objs = [None if p is None else {"status": {"phase": p}} for p in phases]
    got_done, got_failed = evaluate_wait(objs, return_when)
    assert got_done is done
    assert (got_failed is not None) is failed
