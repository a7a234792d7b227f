"""The runtime state of one runner process, shared by every flow API object.

It exists so that ``this`` and all child ``Execution`` objects go through one place for: the API
client, status reports to the operator (``status.runner.state``), deterministic child naming,
following children with ONE watch (never polling), and blocking while ``spec.desiredState`` is
``Paused`` (a second watch on the runner's own Execution).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from kumulus.domain.outputs import LIMIT_DEFAULT_BYTES, stored_size
from kumulus.runner import naming, states
from kumulus.runner.client import API_VERSION, AlreadyExistsError, ApiClient, Obj
from kumulus.runner.errors import (
    ChildNameTaken,
    DependencyFailedError,
    DependencyTimeoutError,
    EngineException,
    OutputLimitExceeded,
)

log = logging.getLogger("kumulus.runner")

PARENT_LABEL = "kumulus.dev/parent"
DISPLAY_NAME_ANNOTATION = "kumulus.dev/display-name"

SIGNAL_CHECK_SECONDS = 1.0
"""Longest single blocking wait of the runner's main thread.

A signal that arrives just before a blocking system call (a sleep, a lock wait) does not
interrupt it, so Python runs the SIGTERM handler (which raises ``Terminated``) only when the
call returns. Waiting in slices bounds that delay, so a cancelled flow ends as
``ENDED_CANCELLED`` within about a second instead of after its whole sleep or wait (or being
killed when the Pod's grace period is over)."""


def sliced_sleep(seconds: float) -> None:
    """``time.sleep(seconds)`` in slices of at most :data:`SIGNAL_CHECK_SECONDS`."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, SIGNAL_CHECK_SECONDS))


class ReturnWhen(StrEnum):
    """When a join on child executions returns (``system.return_when``)."""

    ALL_SUCCEEDED = "ALL_SUCCEEDED"
    ALL_ENDED = "ALL_ENDED"
    FIRST_ENDED = "FIRST_ENDED"


def evaluate_wait(objs: Sequence[Obj | None], return_when: ReturnWhen) -> tuple[bool, Obj | None]:
    """Decide a join: ``(done, failed child)``; ``None`` entries are children not seen yet.

    ``ALL_SUCCEEDED`` is done at the first child that ended without success (returned as the
    failed child, the caller raises) or when all succeeded; ``ALL_ENDED`` when all ended;
    ``FIRST_ENDED`` when any ended (or there is nothing to wait for).
    """
    ended = [o for o in objs if o is not None and states.is_ended(o)]
    if return_when is ReturnWhen.ALL_SUCCEEDED:
        for o in ended:
            if not states.is_succeeded(o):
                return True, o
        return len(ended) == len(objs), None
    if return_when is ReturnWhen.ALL_ENDED:
        return len(ended) == len(objs), None
    return (bool(ended) or not objs), None


def owned_child(obj: Obj, parent: str, parent_uid: str | None) -> bool:
    """Whether ``obj`` is a child of the Execution ``parent`` with uid ``parent_uid``.

    A child is ours only if its ownerReferences name the parent's uid as its controller and it
    carries the parent label: the child's name is predictable and the label is writable by
    anyone who may create Executions, so neither alone says who owns it. Without a uid (a parent
    read without one) nothing is ours.
    """
    if not parent_uid:
        return False
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(PARENT_LABEL) != naming.label_value(parent):
        return False
    return any(
        ref.get("kind") == "Execution" and ref.get("uid") == parent_uid and ref.get("controller")
        for ref in meta.get("ownerReferences") or []
    )


def describe_failure(obj: Obj) -> str:
    """The message of DependencyFailedError for a child that did not succeed."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    what = spec.get("type", "FLOW")
    flow = (spec.get("flowRef") or {}).get("name")
    if flow:
        what = f"{what} {flow}"
    reason = status.get("statusMessage") or status.get("message") or "no status message"
    return (
        f"Child Execution {meta.get('namespace', '')}/{meta.get('name')} ({what}) ended "
        f"{states.status_string(obj)}: {reason}"
    )


class _Watch:
    """One list+watch of Executions on a background thread, feeding a shared cache."""

    def __init__(
        self,
        engine: Engine,
        what: str,
        on_event: Callable[[str, Obj], None],
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        start_from: Obj | None = None,
    ) -> None:
        """``start_from``: the watched object as a write just returned it; the first watch
        starts at its resourceVersion instead of after a list."""
        self._engine = engine
        self._what = what
        self._on_event = on_event
        self._labels = labels
        self._name = name
        self._start_from = start_from
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{what}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        client = self._engine.client
        stopped = self._engine.stopped
        while not stopped.is_set():
            try:
                items, rv = self._initial(client)
                for obj in items:
                    self._on_event("ADDED", obj)
                self.synced.set()
                self._engine.notify()
                for event, obj in client.watch_executions(
                    resource_version=rv, labels=self._labels, name=self._name
                ):
                    if stopped.is_set():
                        return
                    self._on_event(event, obj)
            except Exception as exc:  # keep following: a broken watch must not stop the flow
                if stopped.is_set():
                    return
                log.warning("Restarted the watch of %s after an error: %s", self._what, exc)
                stopped.wait(1.0)

    def _initial(self, client: ApiClient) -> tuple[list[Obj], str]:
        """The objects to start from and the resourceVersion to watch from.

        A list with no resourceVersion is a consistent read: under load it is the costliest
        request of a whole run (the API server waits for its cache to catch up, and times out).
        The first time, an object that a write just returned is as fresh, so the watch starts
        at its version; after an error (e.g. 410 Gone) the watch starts over with a list.
        """
        start_from, self._start_from = self._start_from, None
        version = ((start_from or {}).get("metadata") or {}).get("resourceVersion")
        if start_from is not None and version:
            return [start_from], str(version)
        return client.list_executions(labels=self._labels, name=self._name)


class Engine:
    """State of the running attempt; one per process."""

    def __init__(
        self,
        client: ApiClient,
        obj: Obj,
        *,
        attempt: int,
        output_limit: int = LIMIT_DEFAULT_BYTES,
        watch_self: bool = True,
    ) -> None:
        meta = obj.get("metadata") or {}
        self.client = client
        self.obj = obj
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace") or client.namespace
        self.uid: str | None = meta.get("uid")
        self.attempt = attempt
        self.output_limit = output_limit  # the operator's Settings.output_limit_bytes
        status = obj.get("status") or {}
        self.outputs: dict[str, Any] = dict(status.get("outputs") or {})
        self.message: str | None = status.get("message")
        self.display_name: str | None = status.get("displayName")
        self.webhook_response: Obj | None = None
        self.stopped = threading.Event()
        self._cond = threading.Condition()
        self._desired: str = (obj.get("spec") or {}).get("desiredState") or "Running"
        self._state: str | None = None
        self._seq = 0
        self._children: dict[str, Obj] = {}
        self._deleted: set[str] = set()
        self._children_watch: _Watch | None = None
        self._self_watch: _Watch | None = None
        self._watch_self = watch_self

    @property
    def ref(self) -> str:
        """``namespace/name`` of the running Execution, for messages."""
        return f"{self.namespace}/{self.name}"

    # -- reports to the operator ------------------------------------------------------------

    def start(self) -> None:
        """Report ``running`` for this attempt and start following ``spec.desiredState``."""
        status: Obj = {"runner": {"attempt": self.attempt, "state": "running", "result": None}}
        annotations = (self.obj.get("metadata") or {}).get("annotations") or {}
        if not self.display_name and annotations.get(DISPLAY_NAME_ANNOTATION):
            self.display_name = annotations[DISPLAY_NAME_ANNOTATION]
            status["displayName"] = self.display_name
        current = self.client.patch_execution_status(self.name, {"status": status})
        self._state = "running"
        if self._watch_self:
            self._self_watch = _Watch(
                self, f"Execution {self.ref}", self._on_self, name=self.name, start_from=current
            )

    def report_state(self, state: str) -> None:
        """Patch ``status.runner.state`` when it changes."""
        if state == self._state:
            return
        self.client.patch_execution_status(
            self.name, {"status": {"runner": {"attempt": self.attempt, "state": state}}}
        )
        self._state = state

    def finish(self, result: Obj, message: str | None = None) -> None:
        """Report the end of the attempt (``state: ended`` and the result) in one patch."""
        runner: Obj = {"attempt": self.attempt, "state": "ended", "result": result}
        if self.webhook_response is not None:
            runner["webhookResponse"] = self.webhook_response
        status: Obj = {"runner": runner}
        if message is not None:
            status["message"] = message
        self.client.patch_execution_status(self.name, {"status": status})
        self._state = "ended"

    def notify(self) -> None:
        """Wake every thread waiting on the shared condition."""
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop the background watches."""
        self.stopped.set()
        with self._cond:
            self._cond.notify_all()

    # -- own fields -------------------------------------------------------------------------

    def save_fields(
        self,
        *,
        message: str | None = None,
        name: str | None = None,
        outputs: dict[str, Any] | None = None,
    ) -> None:
        """Write own status fields in one JSON patch; outputs are checked against the limit.

        Outputs are measured as the operator measures them (:func:`stored_size`), so outputs
        written here never fail the Execution with ``OutputTooLarge`` afterwards; outputs over
        the limit raise :class:`OutputLimitExceeded` and nothing is written.
        """
        ops: list[Obj] = []
        if outputs is not None:
            size = stored_size(outputs)
            if size > self.output_limit:
                raise OutputLimitExceeded(
                    f"Outputs of Execution {self.ref} are {size} bytes, over the limit of "
                    f"{self.output_limit} bytes (KUMULUS_OUTPUT_LIMIT_BYTES); they were not "
                    "written."
                )
            ops.append({"op": "add", "path": "/status/outputs", "value": outputs})
        if message is not None:
            ops.append({"op": "add", "path": "/status/message", "value": message})
        if name is not None:
            ops.append({"op": "add", "path": "/status/displayName", "value": name})
        if not ops:
            return
        self.client.json_patch_execution_status(self.name, ops)
        if outputs is not None:
            self.outputs = copy.deepcopy(outputs)
        if message is not None:
            self.message = message
        if name is not None:
            self.display_name = name

    def set_own_desired_state(self, desired: str) -> None:
        """Patch own ``spec.desiredState`` (``this.pause()``) and remember it at once."""
        self.client.patch_execution(self.name, {"spec": {"desiredState": desired}})
        with self._cond:
            self._desired = desired
            self._cond.notify_all()

    # -- pause ------------------------------------------------------------------------------

    def _on_self(self, event: str, obj: Obj) -> None:
        if event == "DELETED":
            return
        desired = (obj.get("spec") or {}).get("desiredState") or "Running"
        with self._cond:
            if desired != self._desired:
                self._desired = desired
                self._cond.notify_all()

    def checkpoint(self) -> None:
        """Block while ``spec.desiredState`` is ``Paused`` (called by every flow API call)."""
        with self._cond:
            if self._desired != "Paused":
                return
        previous = self._state or "running"
        self.report_state("paused")
        log.info("Paused Execution %s in a flow API call.", self.ref)
        with self._cond:
            while self._desired == "Paused" and not self.stopped.is_set():
                self._cond.wait(SIGNAL_CHECK_SECONDS)
        log.info("Resumed Execution %s.", self.ref)
        self.report_state(previous)

    # -- children ---------------------------------------------------------------------------

    def _on_child(self, event: str, obj: Obj) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        if not owned_child(obj, self.name, self.uid):
            # The parent label is forgeable: an object we do not control is not our child, its
            # status never reaches the flow (the real child's deletion still counts).
            log.warning(
                "Ignored Execution %s/%s labelled as a child of %s: it does not control it.",
                self.namespace,
                name,
                self.ref,
            )
            return
        with self._cond:
            if event == "DELETED":
                self._deleted.add(name)
            else:
                self._deleted.discard(name)
            self._children[name] = obj
            self._cond.notify_all()

    def _ensure_children_watch(self) -> _Watch:
        if self._children_watch is None:
            self._children_watch = _Watch(
                self,
                f"children of Execution {self.ref}",
                self._on_child,
                labels={PARENT_LABEL: naming.label_value(self.name)},
            )
        return self._children_watch

    def cached_child(self, name: str) -> Obj | None:
        """The newest object of a child seen by the watch, if any."""
        with self._cond:
            return self._children.get(name)

    def create_child(self, spec: Obj, display_name: str | None = None) -> Obj:
        """Create a child Execution with the next deterministic name (adopting our own)."""
        self._seq += 1
        name = naming.child_name(self.name, self.attempt, self._seq)
        parent_spec = self.obj.get("spec") or {}
        body_spec = dict(spec)
        if parent_spec.get("mode"):
            body_spec.setdefault("mode", parent_spec["mode"])
        metadata: Obj = {
            "name": name,
            "namespace": self.namespace,
            "labels": {
                PARENT_LABEL: naming.label_value(self.name),
                "app.kubernetes.io/managed-by": "kumulus",
            },
        }
        if display_name:
            metadata["annotations"] = {DISPLAY_NAME_ANNOTATION: display_name}
        if self.uid:
            metadata["ownerReferences"] = [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Execution",
                    "name": self.name,
                    "uid": self.uid,
                    "controller": True,
                }
            ]
        body = {"apiVersion": API_VERSION, "kind": "Execution", "metadata": metadata}
        body["spec"] = body_spec
        try:
            obj = self.client.create_execution(body)
            log.info(
                "Created child Execution %s/%s of Execution %s.", self.namespace, name, self.ref
            )
        except AlreadyExistsError:
            obj = self.client.get_execution(name)
            if not owned_child(obj, self.name, self.uid):
                raise ChildNameTaken(
                    f"The child name {self.namespace}/{name} is taken by an Execution that "
                    f"Execution {self.ref} does not own (no controller ownerReference to its "
                    f"uid and {PARENT_LABEL} label); nothing was adopted and no child was "
                    "started."
                ) from None
            log.info(
                "Adopted existing child Execution %s/%s of %s.", self.namespace, name, self.ref
            )
        with self._cond:
            self._children.setdefault(name, obj)
        return obj

    def wait_for(
        self, names: Sequence[str], return_when: ReturnWhen, timeout: float | None = None
    ) -> list[Obj]:
        """Join on children: return their newest objects; raise per ``return_when``."""
        watch = self._ensure_children_watch()
        deadline = None if timeout is None else time.monotonic() + timeout
        reported = False
        try:
            while True:
                with self._cond:
                    while True:
                        if watch.synced.is_set():
                            objs = [self._children.get(n) for n in names]
                            deleted = [n for n in names if n in self._deleted]
                            if deleted:
                                raise DependencyFailedError(
                                    f"Child Execution {self.namespace}/{deleted[0]} was deleted "
                                    f"while Execution {self.ref} waited for it."
                                )
                            done, failed = evaluate_wait(objs, return_when)
                            if failed is not None:
                                raise DependencyFailedError(describe_failure(failed), failed)
                            if done:
                                return [o for o in objs if o is not None]
                        if not reported:
                            break  # report ``waiting`` outside the lock, then wait
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise DependencyTimeoutError(
                                f"Execution {self.ref} waited {timeout} s for child executions "
                                f"{', '.join(names)} and stopped waiting."
                            )
                        if self.stopped.is_set():
                            raise EngineException(f"Execution {self.ref} is stopping.")
                        slice_ = SIGNAL_CHECK_SECONDS
                        self._cond.wait(slice_ if remaining is None else min(remaining, slice_))
                self.report_state("waiting")
                reported = True
        finally:
            if reported:
                self.report_state("running")

    def patch_child_spec(self, name: str, spec: Obj) -> Obj:
        """Patch a child's spec (``run``, ``desiredState``)."""
        obj = self.client.patch_execution(name, {"spec": spec})
        log.info("Patched spec of child Execution %s/%s: %s.", self.namespace, name, spec)
        return obj
