"""The reconciler: feeds watch events into :func:`kumulus.domain.lifecycle.decide` and applies
the resulting actions through the API adapters.

Why not plain kopf change handlers: at hundreds of concurrent Executions, kopf's per-object
progress annotations, finalizers and handler retries cost several extra API writes per
transition. Instead the engine keeps an in-memory cache of Executions and runner Pods (filled
from kopf's watch events), coalesces bursts of events per Execution into one reconcile, and
writes exactly one status patch per transition, guarded by ``resourceVersion`` (optimistic
concurrency). Delayed work (retry backoff, Pod start deadline, TTL) is an in-memory timer per
Execution; after a restart the initial listing re-triggers every Execution, so nothing is lost.

Correctness across restarts and duplicated operator processes comes from deterministic Pod
names (create is idempotent, ``AlreadyExists`` adopts) and the ``resourceVersion`` guard: a
stale decision fails with a conflict and is decided again on the newer version.

Built for bursts (measured by ``bench/throughput.py``; see docs/performance.md):

* A work queue with a fixed number of workers (``Settings.reconcile_workers``) reconciles
  Executions in arrival order, each key at most once at a time; a key triggered while queued is
  not queued twice. So a burst of thousands never opens more API connections than the client
  keeps alive (no TLS handshake per request, no pool timeouts) and the oldest work goes first.
  Events and lock releases go out in the background through a few slots of their own.
* After a conflict the engine does not read the Execution again: the newer version that caused
  the conflict is already on its way through the watch, and its event triggers a new decision.
  Only if it has not arrived after :data:`CONFLICT_WAIT_SECONDS` is the Execution read.
* The cache keeps what the decisions read, not whole objects: Pods as the few fields
  :class:`~kumulus.domain.outcome.PodView` needs, and finished Executions as the fields the TTL
  and their parent's children summary need (no inputs, outputs, script or conditions). A
  finished Execution's Pods are not cached at all: its decisions never look at them. This keeps
  the operator's memory flat with thousands of finished Executions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kumulus.domain import lifecycle, naming
from kumulus.domain.lifecycle import (
    ChildView,
    CreatePod,
    DeleteExecution,
    DeletePod,
    EmitEvent,
    PatchChild,
    PatchStatus,
    ReleaseLocks,
    Requeue,
)
from kumulus.domain.outcome import PodView
from kumulus.domain.podspec import owned_by, owner_execution
from kumulus.domain.settings import Settings
from kumulus.k8s import events, executions, leases, pods, rbac
from kumulus.k8s.resources import Key, object_key, resource_version
from kumulus.observability.metrics import EXECUTIONS as METRICS

log = logging.getLogger("kumulus.engine")


CONFLICT_WAIT_SECONDS = 2.0
"""After a conflict, how long to wait for the newer version from the watch before reading it."""

BACKGROUND_SLOTS = 8
"""API calls made in the background at once (Events, lock releases)."""

_POD_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "ownerReferences",
)
_POD_STATUS = ("phase", "reason", "message", "conditions", "containerStatuses")
_FINISHED_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "labels",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
)
_FINISHED_SPEC = ("type", "flowRef", "desiredState", "run", "ttlSecondsAfterFinished")
_FINISHED_STATUS = ("phase", "attempts", "podName", "startTime", "endTime", "children")


def _pick(body: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    body = body or {}
    return {k: body[k] for k in keys if k in body}


def pod_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine keeps of a runner Pod: the fields :class:`PodView` reads."""
    return {
        "metadata": _pick(body.get("metadata"), _POD_METADATA),
        "status": _pick(body.get("status"), _POD_STATUS),
    }


def finished_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine keeps of a finished Execution: what its TTL and its parent read."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": _pick(body.get("metadata"), _FINISHED_METADATA),
        "spec": _pick(body.get("spec"), _FINISHED_SPEC),
        "status": _pick(body.get("status"), _FINISHED_STATUS),
    }


def _finished(body: Mapping[str, Any] | None) -> bool:
    return ((body or {}).get("status") or {}).get("phase") in lifecycle.TERMINAL


def _parent(body: Mapping[str, Any]) -> str | None:
    name = owner_execution(body)
    if name:
        return name
    labels = (body.get("metadata") or {}).get("labels") or {}
    value = labels.get(naming.LABEL_PARENT)
    return str(value) if value else None


class Engine:
    """In-memory state of one operator process and the reconcile loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executions: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}
        self.children: dict[Key, set[str]] = {}
        self.flows: dict[Key, dict[str, Any]] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._stale: dict[Key, tuple[int, float]] = {}
        self._pod_seen: dict[Key, float] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._missing_sa: dict[Key, str] = {}
        self._foreign_warned: set[tuple[Key, str]] = set()
        self._rbac_done: set[str] = set()
        self._rbac_lock = asyncio.Lock()
        self._background_slots = asyncio.Semaphore(BACKGROUND_SLOTS)
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ watch input

    def watched(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def on_execution(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an Execution (``None`` type = initial listing)."""
        key = object_key(body)
        if not self.watched(key[0]):
            return
        parent = _parent(body)
        if event_type == "DELETED":
            self.executions.pop(key, None)
            self.pods.pop(key, None)
            self._pod_seen.pop(key, None)
            self._stale.pop(key, None)
            self.children.pop(key, None)
            self._missing_sa.pop(key, None)
            self._foreign_warned = {w for w in self._foreign_warned if w[0] != key}
            self._cancel_timer(key)
            METRICS.forget(key)
            if parent:
                self.children.get((key[0], parent), set()).discard(key[1])
                self.trigger((key[0], parent))
            return
        if resource_version(body) >= resource_version(self.executions.get(key)):
            self._store(key, body)
        METRICS.seen(key, body)
        if parent:
            self.children.setdefault((key[0], parent), set()).add(key[1])
            self.trigger((key[0], parent))
        self.trigger(key)

    def on_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a runner Pod: cache it under its Execution and re-decide.

        ``DELETED`` also means "left the watch": the operator watches unfinished Pods only
        (see ``kumulus.handlers.execution``), so a finished Pod arrives as ``DELETED`` with
        its previous state. Either way it leaves the cache, and the next decision reads the
        Pod from the API server (finished, or really gone).
        """
        owner = owner_execution(body)
        if owner is None:
            return
        namespace, name = object_key(body)
        if not self.watched(namespace):
            return
        key = (namespace, owner)
        if _finished(self.executions.get(key)):
            return  # a finished Execution's decisions never look at its Pods
        if event_type == "DELETED":
            bucket = self.pods.get(key)
            if bucket is not None:
                bucket.pop(name, None)
                if not bucket:
                    del self.pods[key]
        else:
            bucket = self.pods.setdefault(key, {})
            if resource_version(body) >= resource_version(bucket.get(name)):
                bucket[name] = pod_view(body)
            self._pod_seen[key] = time.monotonic()
        self.trigger(key)

    def _store(self, key: Key, body: Mapping[str, Any]) -> None:
        """Cache an Execution: whole while it runs, as :func:`finished_view` once finished."""
        if _finished(body):
            self.executions[key] = finished_view(body)
            self.pods.pop(key, None)
            self._pod_seen.pop(key, None)
        else:
            # Watch events and API responses are freshly parsed and never changed afterwards
            # (here or by kopf), so they are kept without a copy.
            self.executions[key] = dict(body)

    def on_flow(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a Flow: keep the cache used when Executions start."""
        key = object_key(body)
        if event_type == "DELETED":
            self.flows.pop(key, None)
        else:
            self.flows[key] = copy.deepcopy(dict(body))

    # ------------------------------------------------------------------ scheduling

    def trigger(self, key: Key) -> None:
        """Reconcile ``key`` soon: queue it once; triggered while running, once more after."""
        if key in self._running:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._worker(), name=f"kumulus reconcile worker {i}")
                for i in range(max(1, self.settings.reconcile_workers))
            ]

    @property
    def backlog(self) -> int:
        """Executions waiting for a worker."""
        return self._queue.qsize()

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            self._dirty.discard(key)
            try:
                await self.reconcile(key)
            except Exception:
                log.exception("Failed to reconcile Execution %s/%s; retrying.", *key)
                self.requeue(key, self.settings.requeue_error_seconds)
            finally:
                self._running.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.trigger(key)

    def _background(self, what: str, call: Callable[[], Awaitable[object]]) -> None:
        """Run an API call that nothing waits for, through the background slots."""

        async def run() -> None:
            async with self._background_slots:
                try:
                    await call()
                except Exception as exc:
                    log.warning("Failed to %s: %s", what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def requeue(self, key: Key, after: float) -> None:
        """Trigger ``key`` after ``after`` seconds (keeps the earliest pending timer)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(after, 0.05)
        current = self._timers.get(key)
        if current is not None and current[0] <= when:
            return
        if current is not None:
            current[1].cancel()
        handle = loop.call_at(when, self._fire, key)
        self._timers[key] = (when, handle)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.trigger(key)

    def _cancel_timer(self, key: Key) -> None:
        current = self._timers.pop(key, None)
        if current is not None:
            current[1].cancel()

    async def shutdown(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = [*self._workers, *self._tasks]
        self._workers = []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------------ reconcile

    async def _current_pod(self, key: Key, body: Mapping[str, Any]) -> PodView | None:
        name = (body.get("status") or {}).get("podName")
        if not name:
            return None
        cached = self.pods.get(key, {}).get(str(name))
        seen = self._pod_seen.get(key, 0.0)
        if cached is None or time.monotonic() - seen > self.settings.pod_resync_seconds:
            # The cache may lag (start-up, a Pod just created), a Pod that ended has left the
            # watch, or no event came for a long time (a watch broken by an API server restart
            # misses what happened meanwhile): ask the API server.
            cached = await pods.get_pod(key[0], str(name))
            self._pod_seen[key] = time.monotonic()
            if cached is not None:
                cached = pod_view(cached)
                self.pods.setdefault(key, {})[str(name)] = cached
        if cached is None:
            return None
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not owned_by(cached, uid) and (key, str(name)) not in self._foreign_warned:
            # The decision leaves it alone (lifecycle row pod-not-owned); say so once.
            self._foreign_warned.add((key, str(name)))
            log.warning(
                "Ignored Pod %s/%s named by the status of Execution %s/%s: "
                "the Execution does not control it.",
                key[0],
                name,
                *key,
            )
        return PodView.from_dict(cached)

    async def _flow(self, key: Key, body: Mapping[str, Any]) -> dict[str, Any] | None:
        spec = body.get("spec") or {}
        if lifecycle.normalise_type(spec.get("type")) != "FLOW":
            return None
        name = (spec.get("flowRef") or {}).get("name")
        if not name:
            return None
        fkey = (key[0], str(name))
        flow = self.flows.get(fkey)
        if flow is None:
            flow = await executions.get_flow(*fkey)
            if flow is not None:
                self.flows[fkey] = flow
        return flow

    async def reconcile(self, key: Key) -> None:
        """Decide on Execution ``key`` from the cache and apply the actions."""
        body = self.executions.get(key)
        if body is None:
            return
        stale = self._stale.get(key)
        if stale is not None:
            if resource_version(body) <= stale[0] and time.monotonic() < stale[1]:
                return  # the newer version is on its way through the watch
            del self._stale[key]
            if resource_version(body) <= stale[0]:
                fresh = await executions.get_execution(*key)
                if fresh is None:
                    self.executions.pop(key, None)
                    return
                self._store(key, fresh)
                body = self.executions[key]
        phase = (body.get("status") or {}).get("phase") or ""
        live = phase not in lifecycle.TERMINAL
        pod = await self._current_pod(key, body) if live else None
        flow = await self._flow(key, body) if phase in lifecycle.UNSTARTED else None
        children = [
            ChildView.from_dict(self.executions[(key[0], child)])
            for child in sorted(self.children.get(key, set()))
            if (key[0], child) in self.executions
        ]
        if pod is not None and not pod.finished:
            self.requeue(key, self.settings.pod_resync_seconds)  # see _current_pod
        now = datetime.now(UTC)
        missing_sa = self._missing_sa.pop(key, None)
        try:
            actions = lifecycle.decide(
                body,
                pod,
                children,
                now,
                flow=flow,
                settings=self.settings,
                missing_service_account=missing_sa,
            )
        except lifecycle.IllegalTransition as exc:
            # A bug in a rule, not a passing API error: nothing is applied and no error retry is
            # scheduled (the same inputs decide the same); the next event decides again.
            log.error("Refused a transition of Execution %s/%s: %s", *key, exc)
            return
        for action in actions:
            if not await self._apply(key, body, action):
                break

    async def _apply(self, key: Key, body: dict[str, Any], action: lifecycle.Action) -> bool:
        """Apply one action; ``False`` stops the remaining ones (the decision was stale)."""
        namespace, name = key
        if isinstance(action, CreatePod):
            await self._ensure_rbac(namespace, action.manifest)
            try:
                created = await pods.create_pod(action.manifest)
            except pods.ServiceAccountNotFound as exc:
                # Decided again at once, knowing why (lifecycle rows service-account-*).
                log.info(
                    "Could not create the Pod of Execution %s/%s yet: %s.", namespace, name, exc
                )
                self._missing_sa[key] = exc.account
                self.trigger(key)
                return False
            self.pods.setdefault(key, {})[created["metadata"]["name"]] = pod_view(created)
        elif isinstance(action, PatchStatus):
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                patched = await executions.patch_execution_status(namespace, name, rv, action.patch)
            except executions.Conflict:
                # The version that beat this patch comes through the watch and triggers a new
                # decision; read it only if it is late (see the module docstring).
                until = time.monotonic() + CONFLICT_WAIT_SECONDS
                self._stale[key] = (resource_version(body), until)
                self.requeue(key, CONFLICT_WAIT_SECONDS)
                log.debug("Deferred Execution %s/%s after a conflicting update.", namespace, name)
                return False
            if patched is None:
                self.executions.pop(key, None)
                return False
            if resource_version(patched) >= resource_version(self.executions.get(key)):
                self._store(key, patched)
            METRICS.status_written(key, body, action.patch)
            new_phase = action.patch.get("phase")
            if new_phase and new_phase != (body.get("status") or {}).get("phase"):
                log.info("Moved Execution %s/%s to phase %s.", namespace, name, new_phase)
        elif isinstance(action, EmitEvent):
            event = (body, action.type, action.reason, action.message)
            self._background(
                f"post Event {action.reason} of Execution {namespace}/{name}",
                lambda: events.post_event(*event),
            )
        elif isinstance(action, DeletePod):
            uid = str((body.get("metadata") or {}).get("uid") or "")
            try:
                await pods.delete_owned_pod(namespace, action.name, uid, action.grace_seconds)
            except pods.PodNotOwned:
                log.warning(
                    "Refused to delete Pod %s/%s for Execution %s/%s: "
                    "the Execution does not control it.",
                    namespace,
                    action.name,
                    namespace,
                    name,
                )
                message = (
                    f"Refused to delete Pod {action.name}: Execution {name} does not control it."
                )
                event = (body, "Warning", "PodNotOwned", message)
                self._background(
                    f"post Event PodNotOwned of Execution {namespace}/{name}",
                    lambda: events.post_event(*event),
                )
        elif isinstance(action, PatchChild):
            await executions.patch_execution_spec(namespace, action.name, action.spec)
            log.info(
                "Patched child Execution %s/%s of %s with %s.",
                namespace,
                action.name,
                name,
                action.spec,
            )
        elif isinstance(action, ReleaseLocks):
            self._background(
                f"release the locks of Execution {namespace}/{name}",
                lambda: self._release_locks(namespace, name),
            )
        elif isinstance(action, Requeue):
            self.requeue(key, action.after)
        elif isinstance(action, DeleteExecution):
            await executions.delete_execution(namespace, name)
            log.info("Deleted finished Execution %s/%s after its TTL.", namespace, name)
            return False
        return True

    async def _release_locks(self, namespace: str, name: str) -> None:
        """Free the lock Leases a finished Execution still holds (its runner could not)."""
        await leases.release_held(namespace, name)

    async def _ensure_rbac(self, namespace: str, manifest: Mapping[str, Any]) -> None:
        if not self.settings.manage_runner_rbac or namespace in self._rbac_done:
            return
        account = manifest["spec"].get("serviceAccountName")
        if account != self.settings.runner_service_account:
            return
        async with self._rbac_lock:
            if namespace in self._rbac_done:
                return
            await rbac.ensure_runner_rbac(
                namespace, self.settings.runner_service_account, self.settings.runner_cluster_role
            )
            self._rbac_done.add(namespace)
