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
stale decision fails with a conflict, the Execution is read again and decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Mapping
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
    Requeue,
)
from kumulus.domain.outcome import PodView
from kumulus.domain.podspec import owner_execution
from kumulus.domain.settings import Settings
from kumulus.k8s import events, executions, pods, rbac

log = logging.getLogger("kumulus.engine")

Key = tuple[str, str]


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _rv(body: Mapping[str, Any] | None) -> int:
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


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
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._rbac_done: set[str] = set()
        self._rbac_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ watch input

    def watched(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def on_execution(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an Execution (``None`` type = initial listing)."""
        key = _key(body)
        if not self.watched(key[0]):
            return
        parent = _parent(body)
        if event_type == "DELETED":
            self.executions.pop(key, None)
            self.pods.pop(key, None)
            self.children.pop(key, None)
            self._cancel_timer(key)
            if parent:
                self.children.get((key[0], parent), set()).discard(key[1])
                self.trigger((key[0], parent))
            return
        if _rv(body) >= _rv(self.executions.get(key)):
            self.executions[key] = copy.deepcopy(dict(body))
        if parent:
            self.children.setdefault((key[0], parent), set()).add(key[1])
            self.trigger((key[0], parent))
        self.trigger(key)

    def on_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a runner Pod: cache it under its Execution and re-decide."""
        owner = owner_execution(body)
        if owner is None:
            return
        namespace, name = _key(body)
        if not self.watched(namespace):
            return
        key = (namespace, owner)
        bucket = self.pods.setdefault(key, {})
        if event_type == "DELETED":
            bucket.pop(name, None)
        elif _rv(body) >= _rv(bucket.get(name)):
            bucket[name] = copy.deepcopy(dict(body))
        self.trigger(key)

    def on_flow(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a Flow: keep the cache used when Executions start."""
        key = _key(body)
        if event_type == "DELETED":
            self.flows.pop(key, None)
        else:
            self.flows[key] = copy.deepcopy(dict(body))

    # ------------------------------------------------------------------ scheduling

    def trigger(self, key: Key) -> None:
        """Reconcile ``key`` soon; bursts of triggers coalesce into one more run."""
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        task = asyncio.get_running_loop().create_task(self._loop(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _loop(self, key: Key) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    await self.reconcile(key)
                except Exception:
                    log.exception("Failed to reconcile Execution %s/%s; retrying.", *key)
                    self.requeue(key, self.settings.requeue_error_seconds)
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)

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
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------------ reconcile

    async def _current_pod(self, key: Key, body: Mapping[str, Any]) -> PodView | None:
        name = (body.get("status") or {}).get("podName")
        if not name:
            return None
        cached = self.pods.get(key, {}).get(str(name))
        if cached is None:
            # The cache may lag (start-up, a Pod just created): ask the API server.
            cached = await pods.get_pod(key[0], str(name))
            if cached is not None:
                self.pods.setdefault(key, {})[str(name)] = cached
        return PodView.from_dict(cached) if cached is not None else None

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
        phase = (body.get("status") or {}).get("phase") or ""
        live = phase not in lifecycle.TERMINAL
        pod = await self._current_pod(key, body) if live else None
        flow = await self._flow(key, body) if phase in lifecycle.UNSTARTED else None
        children = [
            ChildView.from_dict(self.executions[(key[0], child)])
            for child in sorted(self.children.get(key, set()))
            if (key[0], child) in self.executions
        ]
        now = datetime.now(UTC)
        actions = lifecycle.decide(body, pod, children, now, flow=flow, settings=self.settings)
        for action in actions:
            if not await self._apply(key, body, action):
                break

    async def _apply(self, key: Key, body: dict[str, Any], action: lifecycle.Action) -> bool:
        """Apply one action; ``False`` stops the remaining ones (the decision was stale)."""
        namespace, name = key
        if isinstance(action, CreatePod):
            await self._ensure_rbac(namespace, action.manifest)
            created = await pods.create_pod(action.manifest)
            self.pods.setdefault(key, {})[created["metadata"]["name"]] = created
        elif isinstance(action, PatchStatus):
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                patched = await executions.patch_execution_status(namespace, name, rv, action.patch)
            except executions.Conflict:
                fresh = await executions.get_execution(namespace, name)
                if fresh is None:
                    self.executions.pop(key, None)
                else:
                    self.executions[key] = fresh
                    self._dirty.add(key)
                log.info("Re-read Execution %s/%s after a conflicting update.", namespace, name)
                return False
            if patched is None:
                self.executions.pop(key, None)
                return False
            self.executions[key] = patched
            new_phase = action.patch.get("phase")
            if new_phase and new_phase != (body.get("status") or {}).get("phase"):
                log.info("Moved Execution %s/%s to phase %s.", namespace, name, new_phase)
        elif isinstance(action, EmitEvent):
            task = asyncio.get_running_loop().create_task(
                events.post_event(body, action.type, action.reason, action.message)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(action, DeletePod):
            await pods.delete_pod(namespace, action.name, action.grace_seconds)
        elif isinstance(action, PatchChild):
            await executions.patch_execution_spec(namespace, action.name, action.spec)
            log.info(
                "Patched child Execution %s/%s of %s with %s.",
                namespace,
                action.name,
                name,
                action.spec,
            )
        elif isinstance(action, Requeue):
            self.requeue(key, action.after)
        elif isinstance(action, DeleteExecution):
            await executions.delete_execution(namespace, name)
            log.info("Deleted finished Execution %s/%s after its TTL.", namespace, name)
            return False
        return True

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
