"""``system.setting(name)``: values in ConfigMaps, locks on Leases, against the in-memory client.

The real API server is exercised by tests/e2e/test_settings_locks.py; here the rules: names,
JSON values, clear errors, lock hand-over, expiry, renewal, release at the end of a flow, and
the operator's half (``ReleaseLocks`` when a lock-using Execution ends, ``release_held``).
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from kumulus.domain import lifecycle
from kumulus.domain.outcome import PodView
from kumulus.runner import settings as st
from kumulus.runner.errors import InvalidInputError, LockTimeoutError, ResourceNotFoundError
from kumulus.runner.fake import FakeClient
from kumulus.runner.main import run

pytestmark = pytest.mark.unit

ENV = {"KUMULUS_EXECUTION": "flow-a", "KUMULUS_NAMESPACE": "default", "KUMULUS_ATTEMPT": "1"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def fake() -> Iterator[FakeClient]:
    client = FakeClient()
    yield client
    client.close()


def run_flow(fake: FakeClient, code: str, name: str = "flow-a") -> tuple[int, dict[str, Any]]:
    fake.add_flow(name, code)
    fake.add_execution(name, {"type": "FLOW", "flowRef": {"name": name}})
    rc = run({**ENV, "KUMULUS_EXECUTION": name}, fake, out=io.StringIO(), watch_self=False)
    return rc, fake.executions[name].get("status") or {}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "setting",
    ["deploy-lock", "Deploy Lock", "a/b:c", "x" * 300, "日本語", "-", "Ünïcode ümlaut"],
)
def test_object_names_are_valid_and_deterministic(setting: str) -> None:
    for name in (st.configmap_name(setting), st.lease_name(setting)):
        assert len(name) <= 63
        assert DNS_1123.match(name), name
    assert st.configmap_name(setting).startswith("kumulus-setting-")
    assert st.lease_name(setting).startswith("kumulus-lock-")


def test_names_are_the_same_in_every_version() -> None:
    """Pinned: a setting saved by one runner version must be found by the next."""
    assert st.configmap_name("deploy-lock") == "kumulus-setting-deploy-lock-f64178b2c5"
    assert st.lease_name("Deploy Lock") == "kumulus-lock-deploy-lock-f1e089b707"


def test_names_differ_for_settings_that_slug_alike() -> None:
    assert st.configmap_name("Deploy Lock") != st.configmap_name("deploy-lock")
    assert st.configmap_name("deploy lock").startswith("kumulus-setting-deploy-lock-")


def test_runner_and_operator_agree_on_the_annotation() -> None:
    assert st.USES_LOCKS_ANNOTATION == lifecycle.USES_LOCKS_ANNOTATION


# --------------------------------------------------------------------------- values


def test_save_get_exists_in_a_flow(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "def handler(system, this):\n"
        "    s = system.setting('Deploy config')\n"
        "    assert not s.exists()\n"
        "    s.save(value={'hosts': ['a', 'b'], 'n': 1.5, 'on': True, 'none': None})\n"
        "    assert s.exists()\n"
        "    assert s.get('value') == {'hosts': ['a', 'b'], 'n': 1.5, 'on': True, 'none': None}\n"
        "    s.save(value='replaced')\n"
        "    assert system.setting('Deploy config').get('value') == 'replaced'\n"
        "    assert s.get('name', 'value') == {'name': 'Deploy config', 'value': 'replaced'}\n"
        "    system.setting('zero').save(value=0)\n"
        "    assert system.setting('zero').get('value') == 0\n",
    )
    assert rc == 0, status["runner"]["result"]
    cm = fake.configmaps[st.configmap_name("Deploy config")]
    assert cm["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "kumulus",
        "kumulus.dev/setting": "true",
    }
    assert cm["metadata"]["annotations"] == {"kumulus.dev/setting-name": "Deploy config"}
    assert cm["data"] == {"value": '"replaced"'}


def test_get_reads_a_cache_and_load_rereads(fake: FakeClient) -> None:
    setting = st.Setting(fake, "shared")
    setting.save(value=1)
    other = st.Setting(fake, "shared")
    assert other.get("value") == 1
    setting.save(value=2)
    assert other.get("value") == 1  # cached, as Cloudomation's get
    assert other.load("value") == 2


def test_missing_setting_raises_resource_not_found(fake: FakeClient) -> None:
    with pytest.raises(ResourceNotFoundError, match="Setting 'nope' does not exist"):
        st.Setting(fake, "nope").get("value")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.save(), "Give the value to save"),
        (lambda s: s.save(value={1, 2}), "must be JSON"),
        (lambda s: s.save(value=float("nan")), "must be JSON"),
        (lambda s: s.save(value=1, colour="red"), "no writable field"),
        (lambda s: s.get(), "Name at least one field"),
        (lambda s: s.get("colour"), "Unknown field 'colour'"),
    ],
)
def test_bad_calls_are_clear_errors(fake: FakeClient, call: Any, message: str) -> None:
    setting = st.Setting(fake, "s")
    with pytest.raises(InvalidInputError, match=message):
        call(setting)


@pytest.mark.parametrize("name", ["", None, 3])
def test_setting_name_must_be_a_string(fake: FakeClient, name: Any) -> None:
    with pytest.raises(InvalidInputError, match="non-empty string"):
        st.Setting(fake, name)


# --------------------------------------------------------------------------- locks


def lease(fake: FakeClient, setting: str) -> dict[str, Any]:
    return fake.leases[st.lease_name(setting)]


def test_acquire_creates_a_lease_and_marks_the_execution(fake: FakeClient) -> None:
    fake.add_execution("flow-a", {"type": "FLOW"})
    locks = st.Locks(fake, "flow-a")
    locks.acquire("deploy")
    obj = lease(fake, "deploy")
    assert obj["spec"]["holderIdentity"] == "flow-a"
    assert obj["spec"]["leaseDurationSeconds"] == st.LEASE_SECONDS
    assert obj["metadata"]["labels"]["kumulus.dev/lock"] == "true"
    assert obj["metadata"]["annotations"]["kumulus.dev/setting-name"] == "deploy"
    annotations = fake.executions["flow-a"]["metadata"]["annotations"]
    assert annotations[st.USES_LOCKS_ANNOTATION] == "true"
    locks.acquire("deploy")  # held already: returns at once
    assert locks.held() == ["deploy"]
    locks.release_all()


def test_second_holder_times_out_then_gets_the_released_lock(fake: FakeClient) -> None:
    for name in ("a", "b"):
        fake.add_execution(name, {"type": "FLOW"})
    first, second = st.Locks(fake, "a"), st.Locks(fake, "b")
    first.acquire("deploy")
    with pytest.raises(LockTimeoutError, match="held by Execution a"):
        second.acquire("deploy", timeout=0.3)
    assert second.release("deploy") is False  # not the holder: nothing happens
    assert lease(fake, "deploy")["spec"]["holderIdentity"] == "a"
    assert first.release("deploy") is True
    assert "holderIdentity" not in lease(fake, "deploy")["spec"]
    second.acquire("deploy", timeout=0)
    assert lease(fake, "deploy")["spec"]["holderIdentity"] == "b"
    assert lease(fake, "deploy")["spec"]["leaseTransitions"] == 1
    second.release_all()


def test_waiter_blocks_until_the_holder_releases(fake: FakeClient) -> None:
    for name in ("a", "b"):
        fake.add_execution(name, {"type": "FLOW"})
    first, second = st.Locks(fake, "a"), st.Locks(fake, "b")
    first.acquire("deploy")
    order: list[str] = []
    saw_it_held = threading.Event()
    get_lease = fake.get_lease

    def observed_get_lease(name: str) -> dict[str, Any]:
        obj = get_lease(name)
        if threading.current_thread().name == "contender" and obj["spec"].get("holderIdentity"):
            saw_it_held.set()
        return obj

    def contender() -> None:
        second.acquire("deploy")
        order.append("b acquired")
        second.release("deploy")

    with mock.patch.object(fake, "get_lease", side_effect=observed_get_lease):
        thread = threading.Thread(target=contender, name="contender")
        thread.start()
        assert saw_it_held.wait(timeout=30)  # b is waiting: it read the Lease held by a
        order.append("a releases")
        first.release("deploy")
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert order == ["a releases", "b acquired"]
    assert "holderIdentity" not in lease(fake, "deploy")["spec"]


def test_an_expired_lease_is_taken_over(fake: FakeClient) -> None:
    fake.add_execution("b", {"type": "FLOW"})
    old = datetime.now(UTC) - timedelta(seconds=120)
    fake.create_lease(
        {
            "metadata": {"name": st.lease_name("deploy"), "labels": {"kumulus.dev/lock": "true"}},
            "spec": {
                "holderIdentity": "crashed",
                "leaseDurationSeconds": 30,
                "renewTime": st.format_micro_time(old),
            },
        }
    )
    st.Locks(fake, "b").acquire("deploy", timeout=0)
    assert lease(fake, "deploy")["spec"]["holderIdentity"] == "b"


def test_lease_expiry_rule() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    fresh = {"spec": {"renewTime": "2029-12-31T23:59:50.000000Z", "leaseDurationSeconds": 30}}
    stale = {"spec": {"renewTime": "2029-12-31T23:59:00.000000Z", "leaseDurationSeconds": 30}}
    assert not st.lease_expired(fresh, now)
    assert st.lease_expired(stale, now)
    assert st.lease_expired({"spec": {}}, now)


def test_renew_updates_renew_time_and_notices_a_lost_lock(fake: FakeClient) -> None:
    fake.add_execution("a", {"type": "FLOW"})
    times = iter(datetime(2030, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(50))
    locks = st.Locks(fake, "a", clock=lambda: next(times))
    locks.acquire("deploy")
    before = lease(fake, "deploy")["spec"]["renewTime"]
    locks.renew()
    assert lease(fake, "deploy")["spec"]["renewTime"] > before
    taken = dict(lease(fake, "deploy"))
    taken["spec"] = {**taken["spec"], "holderIdentity": "intruder"}
    fake.replace_lease(st.lease_name("deploy"), taken)
    locks.renew()
    assert locks.held() == []
    locks.release_all()
    assert lease(fake, "deploy")["spec"]["holderIdentity"] == "intruder"


def test_negative_timeout_is_rejected(fake: FakeClient) -> None:
    with pytest.raises(InvalidInputError):
        st.Locks(fake, "a").acquire("deploy", timeout=-1)


def test_flow_locks_are_released_when_the_flow_ends_in_error(fake: FakeClient) -> None:
    rc, status = run_flow(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    lock = system.setting('deploy').acquire()\n"
        "    assert isinstance(lock, flow_api.Setting)\n"
        "    with system.setting('other'):\n"
        "        pass\n"
        "    raise RuntimeError('boom while holding the lock')\n",
    )
    assert rc == 1
    assert "boom while holding the lock" in status["runner"]["result"]["message"]
    assert "holderIdentity" not in lease(fake, "deploy")["spec"]
    assert "holderIdentity" not in lease(fake, "other")["spec"]


def test_lock_timeout_error_reaches_the_flow(fake: FakeClient) -> None:
    fake.add_execution("holder", {"type": "FLOW"})
    st.Locks(fake, "holder").acquire("deploy")
    rc, status = run_flow(
        fake,
        "import flow_api\n"
        "def handler(system, this):\n"
        "    try:\n"
        "        system.setting('deploy').acquire(timeout=0.2)\n"
        "    except flow_api.LockTimeoutError as exc:\n"
        "        this.set_output('error', str(exc))\n",
    )
    assert rc == 0, status["runner"]["result"]
    assert "held by Execution holder" in status["outputs"]["error"]
    assert lease(fake, "deploy")["spec"]["holderIdentity"] == "holder"


# --------------------------------------------------------------------------- the operator's half


def finished_execution(annotations: dict[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x", "namespace": "ns", "generation": 1}
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "metadata": meta,
        "spec": {"type": "FLOW", "flowRef": {"name": "f"}},
        "status": {
            "phase": "Running",
            "attempts": 1,
            "podName": "x-a1",
            "startTime": "2030-01-01T00:00:00Z",
        },
    }


def killed_pod() -> PodView:
    return PodView.from_dict(
        {
            "metadata": {"name": "x-a1", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "runner",
                        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    }
                ],
            },
        }
    )


@pytest.mark.parametrize(("annotated", "releases"), [(True, True), (False, False)])
def test_terminal_transition_releases_locks_of_lock_users(annotated: bool, releases: bool) -> None:
    annotations = {lifecycle.USES_LOCKS_ANNOTATION: "true"} if annotated else None
    actions = lifecycle.decide(
        finished_execution(annotations), killed_pod(), [], datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    )
    phases = [a.patch.get("phase") for a in actions if isinstance(a, lifecycle.PatchStatus)]
    assert phases == ["Failed"]
    released = [a for a in actions if isinstance(a, lifecycle.ReleaseLocks)]
    assert bool(released) is releases
    if releases:  # after the phase patch, so a conflicting (stale) decision releases nothing
        kinds = [type(a) for a in actions]
        assert kinds.index(lifecycle.ReleaseLocks) > kinds.index(lifecycle.PatchStatus)


class _FakeAsyncClient:
    """The two calls release_held makes, over a dict of Leases (a unit-test mock)."""

    def __init__(self, leases: dict[str, dict[str, Any]]) -> None:
        self.leases = leases
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def list(self, res: Any, namespace: str, labels: dict[str, str]) -> Any:
        assert labels == {"kumulus.dev/lock": "true"}
        for obj in list(self.leases.values()):
            yield obj

    async def patch(self, res: Any, name: str, patch: Any, **_: Any) -> Any:
        self.patches.append((name, patch))
        current = self.leases[name]
        assert patch["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        current["spec"]["holderIdentity"] = patch["spec"]["holderIdentity"]
        return current


def test_release_held_clears_only_the_executions_leases() -> None:
    from kumulus.k8s import leases

    def obj(name: str, holder: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "resourceVersion": "7"},
            "spec": {"holderIdentity": holder},
        }

    fake_api = _FakeAsyncClient({"l1": obj("l1", "x"), "l2": obj("l2", "y"), "l3": obj("l3", "x")})
    with mock.patch.object(leases, "client", return_value=fake_api):
        released = asyncio.run(leases.release_held("ns", "x"))
    assert released == ["l1", "l3"]
    assert fake_api.leases["l1"]["spec"]["holderIdentity"] is None
    assert fake_api.leases["l2"]["spec"]["holderIdentity"] == "y"
    assert [p[0] for p in fake_api.patches] == ["l1", "l3"]
