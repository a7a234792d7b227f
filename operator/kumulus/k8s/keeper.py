"""The shared mechanism behind every "keep this resource's Ready condition true" loop.

Flows, Connections and Webhooks each have a status that depends on other objects the operator
does not watch (a Flow's ConfigMap, a Connection's or Webhook's Secrets). Each kind's keeper
caches the watched objects, checks one on every watch event, coalesces bursts of events into at
most one more check per object, and checks them all again every few seconds. Only ``check``
(and which objects the periodic pass visits) differ between kinds, so the rest lives here once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import copy
import logging
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from kumulus.k8s.resources import Key, object_key

log = logging.getLogger("kumulus.keeper")


def ready_condition(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's ``Ready`` condition, if it has one."""
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def ready_transition(before: Mapping[str, Any], ok: bool, reason: str) -> bool:
    """Whether ``Ready`` moves to another status or reason (worth a log line and an Event)."""
    cond = ready_condition(before)
    return cond is None or cond.get("status") != str(ok) or cond.get("reason") != reason


class StatusKeeper(abc.ABC):
    """Keeps a status of every watched object of one kind up to date.

    Subclasses name the ``kind`` (for log lines), give the re-check interval and implement
    :meth:`check`; they may narrow the periodic pass with :meth:`recheck_keys`.
    """

    kind: str = "object"

    def __init__(self, namespaces: Iterable[str], recheck_seconds: float) -> None:
        self.namespaces = frozenset(namespaces)
        self.recheck_seconds = max(recheck_seconds, 1.0)
        self.bodies: dict[Key, dict[str, Any]] = {}
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def watched(self, namespace: str) -> bool:
        """Whether the operator serves ``namespace`` (all when no namespaces are set)."""
        return not self.namespaces or namespace in self.namespaces

    def store(self, event_type: str | None, body: Mapping[str, Any]) -> Key | None:
        """Cache a watch event's object (``None`` type = initial listing); ``None`` if ignored.

        A deleted object is dropped from the cache and its key returned; the caller decides
        whether to check it (usually not).
        """
        key = object_key(body)
        if not self.watched(key[0]):
            return None
        if event_type == "DELETED":
            self.bodies.pop(key, None)
        else:
            self.bodies[key] = copy.deepcopy(dict(body))
        return key

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; :meth:`stop` cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def trigger(self, key: Key) -> None:
        """Check ``key`` soon; bursts of triggers coalesce into one more check."""
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        self.spawn(self._check_loop(key))

    async def _check_loop(self, key: Key) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    await self.check(key)
                except Exception as exc:
                    log.warning(
                        "Failed to check %s %s/%s: %s: %s.",
                        self.kind,
                        *key,
                        type(exc).__name__,
                        exc,
                    )
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)

    @abc.abstractmethod
    async def check(self, key: Key) -> None:
        """Evaluate one cached object and patch its status if something changed."""

    def recheck_keys(self) -> list[Key]:
        """The objects the periodic pass checks again (all cached ones by default)."""
        return list(self.bodies)

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_seconds)
            for key in self.recheck_keys():
                self.trigger(key)

    def start(self) -> None:
        """Start the periodic re-check."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._recheck_forever())

    async def stop(self) -> None:
        """Cancel the periodic re-check and every check in flight."""
        tasks = [*self._tasks, *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._loop_task = None
