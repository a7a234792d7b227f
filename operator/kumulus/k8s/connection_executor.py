"""The connection executor: runs CONNECTION Executions through connector types, exactly once.

Why it is not part of the reconciler (:mod:`kumulus.k8s.engine`): a connector call may take
seconds, needs the Connection's Secret (only this component may read Secrets) and client
libraries, and must scale apart from the reconciler. It can run inside the operator process
or as its own process (``kopf run -m kumulus.handlers.connection_executor``); several
processes may run at once.

How a call runs (the rules are in :mod:`kumulus.domain.connection`):

1. A watch event of a CONNECTION Execution is decided by ``decide_call``: hold (``run:
   false``/Paused), cancel before the start, queue, interrupt, or fail a call that a previous
   process had claimed.
2. A queued call waits for one of ``connection_concurrency`` slots (``Pending`` with
   ``Started=False, reason=Queued`` while every slot is busy).
3. With a slot, the Connection is read; a call through it that gives an input its connector
   type does not declare safe (``Connector.call_inputs``) nor the Connection allows
   (``spec.allowedOverrides``) fails with ``OverrideRefused`` before the Secret is read. Then
   the Secret is read, the inputs merged and validated, and the call is *claimed*: phase
   ``Running``, ``startTime`` and ``status.executor`` (this process and a deadline) in one
   status patch guarded by ``resourceVersion``. Only one process can win that patch, so a
   call starts at most once.
4. ``Connector.run`` runs as its own task: ``desiredState: Cancelled`` or deleting the
   Execution cancels it; the time limit (``timeout`` input, ``spec.timeoutSeconds`` or the
   setting) is enforced with a short grace period.
5. The result (``status.outputs``, phase, ``statusMessage``) is written with every secret
   scrubbed, plus one Event. Nothing here ever logs inputs.

After a crash a claimed call is never re-run: the process on the same host (a restarted
container keeps its host name) fails it at once with reason ``ExecutorRestarted``; a call
claimed by a process on another host is failed with ``ExecutorLost`` once its deadline passed.
A graceful stop lets running calls finish for a few seconds, then fails the rest with
``ExecutorStopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from kumulus.connectors import base as connectors
from kumulus.domain import connection as rules
from kumulus.domain.connection import CallView, Decision
from kumulus.domain.settings import Settings
from kumulus.k8s import connections, events, executions, secrets
from kumulus.k8s.resources import (
    Execution,
    Key,
    client,
    is_conflict,
    is_not_found,
    object_key,
    resource_version,
    to_dict,
)
from kumulus.observability import metrics

log = logging.getLogger("kumulus.connection_executor")


STOP_GRACE_SECONDS = 10.0
"""On a graceful stop, running calls get this long to finish before they are failed."""

CLAIM_RETRIES = 5


def default_instance_id() -> str:
    """``<host>/<pid>-<random>``: unique per process; the host survives a container restart."""
    host = os.environ.get("HOSTNAME") or socket.gethostname() or "localhost"
    return f"{host}/{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def write_status(
    namespace: str, name: str, resource_version: str | None, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Replace the Execution's whole status with a JSON patch guarded by resourceVersion.

    Unlike a merge patch this keeps ``null`` values inside ``outputs``. Returns the object, or
    ``None`` if it is gone; raises ``executions.Conflict`` when it changed since it was read.
    """
    ops: list[dict[str, Any]] = []
    if resource_version:
        ops.append(
            {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version}
        )
    ops.append({"op": "add", "path": "/status", "value": dict(status)})
    try:
        result = await client().patch(
            Execution.Status, name, ops, namespace=namespace, patch_type=PatchType.JSON
        )
    except ApiError as err:
        if is_not_found(err):
            return None
        if is_conflict(err):
            raise executions.Conflict(f"Execution {namespace}/{name} changed") from err
        raise
    return to_dict(result)


class CallFailed(Exception):
    """Preparing a call failed before it was claimed: the execution fails with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Prepared:
    """Everything needed to make one call (held in memory only: it contains secrets)."""

    connector: connectors.Connector
    inputs: dict[str, Any]
    timeout: float
    secrets: tuple[str, ...]


@dataclass
class RunningCall:
    """A claimed call running in this process."""

    inner: asyncio.Task[dict[str, Any]] | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: str | None = None
    """Why the call was interrupted: ``cancelled``, ``deleted`` or ``stopped``."""


class ConnectionExecutor:
    """Runs the CONNECTION Executions of the watched namespaces."""

    def __init__(self, settings: Settings, instance_id: str | None = None) -> None:
        self.settings = settings
        self.instance_id = instance_id or default_instance_id()
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.calls: dict[Key, RunningCall] = {}
        self.queued: set[Key] = set()
        self._slots: asyncio.Semaphore | None = None
        self._busy = 0
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def busy(self) -> int:
        """Calls holding a slot (being prepared, claimed or running)."""
        return self._busy

    # ------------------------------------------------------------------ watch input

    def watched(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def on_execution(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an Execution; only CONNECTION (TASK) executions are kept."""
        if not rules.is_connection_execution(body):
            return
        key = object_key(body)
        if not self.watched(key[0]):
            return
        if event_type == "DELETED":
            self.bodies.pop(key, None)
            metrics.EXECUTIONS.forget(key)
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
            call = self.calls.get(key)
            if call is not None and call.inner is not None and not call.inner.done():
                call.interrupted = "deleted"
                call.cancel.set()
                call.inner.cancel()
            return
        self._store(key, copy.deepcopy(dict(body)))
        metrics.EXECUTIONS.seen(key, body)
        self.trigger(key)

    # ------------------------------------------------------------------ scheduling

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def trigger(self, key: Key) -> None:
        """Decide on ``key`` soon; bursts coalesce into one more decision."""
        if self._stopping:
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        self._spawn(self._decide_loop(key))

    def requeue(self, key: Key, after: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(max(after, 0.1), self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.trigger(key)

    async def _decide_loop(self, key: Key) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    await self.decide(key)
                except Exception as exc:
                    log.warning(
                        "Failed to handle CONNECTION Execution %s/%s: %s: %s; retrying.",
                        *key,
                        type(exc).__name__,
                        exc,
                    )
                    self.requeue(key, self.settings.requeue_error_seconds)
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)

    def _slots_sem(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(self.settings.connection_concurrency, 1))
        return self._slots

    # ------------------------------------------------------------------ decisions

    async def decide(self, key: Key) -> None:
        body = self.bodies.get(key)
        if body is None:
            return
        view = CallView.from_dict(body)
        now = datetime.now(UTC)
        decision, after = rules.decide_call(
            view,
            local=key in self.calls,
            queued=key in self.queued,
            claimer_alive=self.claimer_alive(view.claim_id),
            now=now,
        )
        if decision is Decision.NOTHING:
            return
        if decision is Decision.HOLD:
            patch = rules.hold_patch(view, now)
            if await self._patch(key, patch):
                (reason,) = [c["reason"] for c in patch["conditions"] if c["type"] == "Started"]
                message = f"Execution {view.name} is held: {patch['statusMessage']}"
                held = self.bodies.get(key) or body
                self._spawn(events.post_event(held, "Normal", str(reason), message))
        elif decision is Decision.CANCEL_UNSTARTED:
            await self.finish(
                key,
                "Cancelled",
                "Cancelled",
                "Execution was cancelled before it started.",
                only_unstarted=True,
            )
        elif decision is Decision.START:
            self.queued.add(key)
            if self._busy >= max(self.settings.connection_concurrency, 1):
                waiting = len(self.queued)
                await self._patch(key, rules.queued_patch(view, waiting, now))
            self._spawn(self._run(key))
        elif decision is Decision.INTERRUPT:
            call = self.calls[key]
            if call.inner is not None and not call.inner.done() and call.interrupted is None:
                call.interrupted = "cancelled"
                call.cancel.set()
                call.inner.cancel()
                log.info("Interrupted the call of CONNECTION Execution %s/%s.", *key)
        elif decision is Decision.FAIL_RESTARTED:
            await self.finish(
                key,
                "Failed",
                "ExecutorRestarted",
                "The connection executor restarted while the call was running; the call was "
                "not repeated because it may already have had effects.",
            )
        elif decision is Decision.FAIL_LOST:
            await self.finish(
                key,
                "Failed",
                "ExecutorLost",
                f"The connection executor {view.claim_id} that ran the call did not report a "
                "result before its deadline; the call was not repeated because it may already "
                "have had effects.",
            )
        elif decision is Decision.WAIT_FOR_CLAIM and after is not None:
            self.requeue(key, after)

    def claimer_alive(self, claim_id: str | None) -> bool:
        """Whether the executor process that claimed a call may still be running it.

        Another host: unknown, so yes (until the claim's deadline). This host: only if it is
        not this process and a process with its pid exists (a restarted container reuses its
        host name, and usually its pid, which is then this process).
        """
        if claim_id is None or claim_id == self.instance_id:
            return False
        if rules.instance_host(claim_id) != rules.instance_host(self.instance_id):
            return True
        pid = rules.instance_pid(claim_id)
        if pid is None or pid <= 0 or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def _patch(self, key: Key, patch: Mapping[str, Any]) -> bool:
        """A status patch guarded by the cached resourceVersion; ``False`` on a conflict."""
        body = self.bodies.get(key)
        if body is None:
            return False
        rv = (body.get("metadata") or {}).get("resourceVersion")
        try:
            patched = await executions.patch_execution_status(*key, rv, patch)
        except executions.Conflict:
            await self._refresh(key)
            self._dirty.add(key)
            return False
        if patched is None:
            self.bodies.pop(key, None)
            return False
        self._store(key, patched)
        metrics.EXECUTIONS.status_written(key, body, patch)
        return True

    def _store(self, key: Key, body: dict[str, Any]) -> None:
        """Cache ``body`` unless a newer version (from the watch) is cached already."""
        if resource_version(body) >= resource_version(self.bodies.get(key)):
            self.bodies[key] = body

    async def _refresh(self, key: Key) -> dict[str, Any] | None:
        fresh = await executions.get_execution(*key)
        if fresh is None:
            self.bodies.pop(key, None)
        else:
            self._store(key, fresh)
        return self.bodies.get(key)

    # ------------------------------------------------------------------ one call

    def _eligible(self, key: Key) -> CallView | None:
        body = self.bodies.get(key)
        if body is None:
            return None
        view = CallView.from_dict(body)
        if view.phase in rules.TERMINAL or view.started:
            return None
        if not view.run or view.desired != "Running":
            return None
        return view

    async def _prepare(self, view: CallView) -> Prepared:
        """Read the Connection, check what the call may change, read the Secret, merge and
        validate the inputs (no writes)."""
        values: Mapping[str, Any] = {}
        secret: dict[str, str] = {}
        secret_name: object = None
        widened: list[str] = []
        type_ = view.type
        if view.connection:
            conn = await connections.get_connection(view.namespace, view.connection)
            if conn is None:
                raise CallFailed(
                    "ConnectionNotFound", f"Connection {view.connection} does not exist."
                )
            spec = conn.get("spec") or {}
            stored_type = str(spec.get("type") or "")
            if type_ and type_ != stored_type:
                raise CallFailed(
                    "InvalidInputs",
                    f"Connection {view.connection} has type {stored_type}, the call asked for "
                    f"{type_}.",
                )
            type_ = stored_type
            values = spec.get("values") or {}
            widened = [str(name) for name in spec.get("allowedOverrides") or []]
            secret_name = (spec.get("secretRef") or {}).get("name")
        if not type_:
            raise CallFailed("InvalidInputs", "spec.connection needs a name or a type.")
        connector, problem = connections.load_type(type_)
        if connector is None:
            assert problem is not None
            raise CallFailed(*problem)
        if view.connection:
            # Before the Secret is read: a call may not change where it goes or who it is.
            # TODO(issue 13): ad-hoc calls (no Connection) take every input and still run in
            # this process, which holds cluster rights (SSRF); they belong in a process
            # without them.
            refused = rules.refused_overrides(
                view.inputs,
                allowed=connector.call_inputs,
                refused_fields=connector.call_refused_fields,
                widened=widened,
            )
            if refused:
                raise CallFailed(
                    rules.OVERRIDE_REFUSED,
                    rules.override_refused_message(
                        view.connection,
                        type_,
                        refused,
                        connector.call_inputs,
                        connector.call_refused_fields,
                    ),
                )
        if secret_name:
            try:
                data = await secrets.read_secret_data(view.namespace, str(secret_name))
            except secrets.SecretForbiddenError as err:
                raise CallFailed("SecretForbidden", str(err)) from None
            if data is None:
                raise CallFailed(
                    "SecretNotFound",
                    f"Secret {secret_name} of Connection {view.connection} does not exist.",
                )
            try:
                secret = rules.decode_secret(data)
            except rules.InputError as err:
                raise CallFailed("SecretInvalid", str(err)) from None
        merged = rules.merge_inputs(values, secret, view.inputs)
        try:
            derived = connector.derived_secrets(merged)
        except Exception:
            derived = []
        texts = rules.secret_texts(secret, merged, connector.secret_keys, derived)
        try:
            timeout, inputs = rules.call_timeout(
                merged, view.timeout_seconds, self.settings.connection_timeout_seconds
            )
        except rules.InputError as err:
            raise CallFailed("InvalidInputs", rules.redact(str(err), texts)) from None
        try:
            problems = connector.validate(inputs, partial=False)
        except connectors.ConnectorError as err:
            problems = [err.message]
        if problems:
            message = f"Invalid inputs for {type_}: " + "; ".join(problems)
            raise CallFailed("InvalidInputs", rules.redact(message, texts))
        return Prepared(connector=connector, inputs=inputs, timeout=timeout, secrets=texts)

    async def _run(self, key: Key) -> None:
        """Wait for a slot, claim the call, run it, write the result."""
        slots = self._slots_sem()
        try:
            async with slots:
                self._busy += 1
                try:
                    await self._run_with_slot(key)
                finally:
                    self._busy -= 1
        finally:
            self.queued.discard(key)
            self.calls.pop(key, None)

    async def _run_with_slot(self, key: Key) -> None:
        if self._stopping:
            return
        view = self._eligible(key)
        if view is None:
            self.queued.discard(key)
            self.trigger(key)
            return
        try:
            prepared = await self._prepare(view)
        except CallFailed as err:
            await self.finish(key, "Failed", err.reason, err.message)
            return
        connector = prepared.connector
        claimed = await self._claim(key, prepared)
        if claimed is None:
            self.queued.discard(key)
            self.trigger(key)
            return
        call = RunningCall()
        self.calls[key] = call
        self.queued.discard(key)
        ctx = connectors.CallContext(
            namespace=key[0],
            execution=key[1],
            connection=claimed.connection,
            timeout=prepared.timeout,
            cancel=call.cancel,
        )
        log.info("Claimed CONNECTION Execution %s/%s: %s %s.", *key, connector.type, claimed.via)
        started = time.monotonic()
        call.inner = asyncio.get_running_loop().create_task(
            connector.run(prepared.inputs, ctx), name=f"connector {connector.type} {key[1]}"
        )
        latest = self.bodies.get(key) or {}
        if ((latest.get("spec") or {}).get("desiredState")) == "Cancelled":
            # Cancelled while the claim was on its way: the watch event found no call yet.
            call.interrupted = "cancelled"
            call.cancel.set()
            call.inner.cancel()
        limit = prepared.timeout + rules.TIMEOUT_GRACE_SECONDS
        try:
            done, _ = await asyncio.wait({call.inner}, timeout=limit)
        except asyncio.CancelledError:
            # The executor is stopping without a grace period: stop the call too.
            call.inner.cancel()
            raise
        elapsed = time.monotonic() - started
        metrics.connection_call(connector.type, elapsed)
        if not done:
            call.interrupted = call.interrupted or "timeout"
            call.cancel.set()
            call.inner.cancel()
            with contextlib.suppress(BaseException):
                await call.inner
        await self._report(key, call, prepared, elapsed)

    async def _claim(self, key: Key, prepared: Prepared) -> CallView | None:
        """Move the call to Running in one guarded patch; ``None`` if it may not run now."""
        for _ in range(CLAIM_RETRIES):
            view = self._eligible(key)
            if view is None:
                return None
            patch = rules.claim_patch(
                view,
                instance_id=self.instance_id,
                timeout=prepared.timeout,
                connector_type=prepared.connector.type,
                now=datetime.now(UTC),
            )
            body = self.bodies.get(key) or {}
            rv = (body.get("metadata") or {}).get("resourceVersion")
            try:
                patched = await executions.patch_execution_status(*key, rv, patch)
            except executions.Conflict:
                if await self._refresh(key) is None:
                    return None
                continue
            if patched is None:
                self.bodies.pop(key, None)
                return None
            self._store(key, patched)
            metrics.EXECUTIONS.status_written(key, body, patch)
            message = f"Execution {view.name} called {prepared.connector.type} {view.via}."
            self._spawn(events.post_event(patched, "Normal", "Started", message))
            return view
        return None

    async def _report(
        self, key: Key, call: RunningCall, prepared: Prepared, elapsed: float
    ) -> None:
        inner = call.inner
        assert inner is not None
        texts = prepared.secrets
        type_ = prepared.connector.type
        if call.interrupted == "deleted":
            log.info("Stopped the call of deleted CONNECTION Execution %s/%s.", *key)
            return
        # A call that returned its result before the interruption took effect counts.
        returned = not inner.cancelled() and inner.exception() is None
        if returned:
            call.interrupted = None
        if call.interrupted == "stopped":
            await self.finish(
                key,
                "Failed",
                "ExecutorStopped",
                "The connection executor stopped while the call was running.",
                duration=elapsed,
            )
            return
        if call.interrupted == "cancelled":
            await self.finish(
                key,
                "Cancelled",
                "Cancelled",
                f"Execution was cancelled; the {type_} call was interrupted after {elapsed:.1f}s.",
                duration=elapsed,
            )
            return
        if call.interrupted == "timeout":
            await self.finish(
                key,
                "Failed",
                "Timeout",
                f"The {type_} call did not finish within its timeout of {prepared.timeout:g}s.",
                duration=elapsed,
            )
            return
        exc = inner.exception() if not inner.cancelled() else asyncio.CancelledError()
        if exc is None:
            outputs = inner.result()
            problem = rules.check_outputs(outputs, self.settings.output_limit_bytes)
            if problem is not None:
                await self.finish(key, "Failed", *problem, duration=elapsed)
                return
            clean = rules.redact_json(outputs, texts)
            await self.finish(
                key,
                "Succeeded",
                "Succeeded",
                f"The {type_} call succeeded.",
                outputs=clean,
                duration=elapsed,
            )
            return
        if isinstance(exc, connectors.ConnectorError):
            reason, message = exc.reason, exc.message
            partial = exc.outputs
        elif isinstance(exc, asyncio.CancelledError):
            reason, message, partial = "Interrupted", f"The {type_} call was cancelled.", None
        elif isinstance(exc, TimeoutError):
            reason, message, partial = "Timeout", f"The {type_} call timed out.", None
        else:
            reason = "ConnectorError"
            message = f"The {type_} connector failed: {type(exc).__name__}: {exc}"
            partial = None
        message = rules.redact(message, texts)
        kept: Mapping[str, Any] | None = None
        if (
            partial is not None
            and rules.check_outputs(partial, self.settings.output_limit_bytes) is None
        ):
            kept = rules.redact_json(partial, texts)
        await self.finish(key, "Failed", reason, message, outputs=kept, duration=elapsed)

    # ------------------------------------------------------------------ results

    async def finish(
        self,
        key: Key,
        phase: str,
        reason: str,
        message: str,
        *,
        outputs: Mapping[str, Any] | None = None,
        duration: float | None = None,
        only_unstarted: bool = False,
    ) -> bool:
        """Write the terminal status (re-reading on conflicts); ``False`` if it was not written.

        ``only_unstarted``: give up (and decide again) if the call was claimed meanwhile.
        """
        for _ in range(CLAIM_RETRIES):
            body = self.bodies.get(key)
            if body is None:
                body = await self._refresh(key)
                if body is None:
                    return False
            view = CallView.from_dict(body)
            if only_unstarted and view.started:
                self.trigger(key)
                return False
            if view.phase in rules.TERMINAL:
                log.info(
                    "Dropped the %s result of CONNECTION Execution %s/%s: it ended already.",
                    phase,
                    *key,
                )
                return False
            now = datetime.now(UTC)
            patch = rules.finish_patch(
                view,
                phase=phase,
                reason=reason,
                message=message,
                now=now,
                outputs=outputs,
                duration_seconds=duration,
            )
            rv = (body.get("metadata") or {}).get("resourceVersion")
            status = rules.status_after(body.get("status") or {}, patch)
            try:
                patched = await write_status(*key, rv, status)
            except executions.Conflict:
                if await self._refresh(key) is None:
                    return False
                continue
            if patched is None:
                self.bodies.pop(key, None)
                return False
            self._store(key, patched)
            metrics.EXECUTIONS.status_written(key, body, patch, reason=reason)
            if phase == "Succeeded":
                log.info("Finished CONNECTION Execution %s/%s: Succeeded.", *key)
            else:
                log.info("Finished CONNECTION Execution %s/%s: %s (%s).", *key, phase, reason)
            ev_type, ev_reason, ev_message = rules.finish_event(view, phase, reason, message)
            self._spawn(events.post_event(patched, ev_type, ev_reason, ev_message))
            return True
        log.warning("Gave up writing the result of CONNECTION Execution %s/%s.", *key)
        return False

    # ------------------------------------------------------------------ lifecycle

    async def shutdown(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Let running calls finish for ``grace`` seconds, fail the rest, close connectors."""
        self._stopping = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        inners = [c.inner for c in self.calls.values() if c.inner is not None]
        if inners:
            log.info("Waiting up to %gs for %d running connector calls.", grace, len(inners))
            await asyncio.wait(inners, timeout=grace)
        for call in self.calls.values():
            if call.inner is not None and not call.inner.done():
                call.interrupted = "stopped"
                call.cancel.set()
                call.inner.cancel()
        running = [t for t in self._tasks if not t.done()]
        if running:
            # The reporting tasks write ExecutorStopped (or their result) now; queued calls
            # that never got a slot stay unclaimed and run after the restart.
            _, pending = await asyncio.wait(running, timeout=5.0)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        for connector in connectors.loaded_connectors():
            try:
                await connector.close()
            except Exception as exc:
                log.warning("Failed to close connector %s: %s.", connector.type, exc)
