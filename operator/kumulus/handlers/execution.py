"""kopf handlers of Executions and their runner Pods.

Both watch streams feed the engine (:mod:`kumulus.k8s.engine`), which decides with
:func:`kumulus.domain.lifecycle.decide` and writes one status patch per transition. The
handlers are event handlers on purpose: no finalizer and no progress annotations on
Executions (ownerReferences clean up Pods and children), so a transition costs one write.

Pods are watched with the label selector ``app.kubernetes.io/managed-by=kumulus`` and mapped
back to their Execution by the controller ownerReference.

Pausing: ``spec.desiredState: Paused`` on an Execution that has not started keeps it
``Pending`` (condition ``Started=False``, reason ``Paused``) and no Pod is created until it
is set back to ``Running``. A running Execution is paused by its runner at the next flow API
call; the runner reports ``status.runner.state: paused`` and the operator sets the phase
``Paused`` (back to ``Running`` when the runner resumes). A paused Execution keeps its Pod,
and its timeout (``activeDeadlineSeconds``) keeps counting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from kumulus.domain import naming
from kumulus.handlers.state import engine

EVENT_ONLY_KINDS = frozenset({"Execution", "Pod"})
"""Kinds this operator watches with event handlers only (no change handlers, no daemons)."""


class EventOnlyDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, not built for :data:`EVENT_ONLY_KINDS`.

    On every watch event kopf deep-copies the object to diff it against the last handled state,
    but only change handlers (``on.create/update/resume/delete``) and daemons read that diff.
    Executions and runner Pods have event handlers only, so for them the copy is pure overhead:
    about an eighth of the operator's CPU in a burst (see docs/performance.md). A unit test
    fails if a change handler or a daemon is ever registered for these kinds.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if body.get("kind") in EVENT_ONLY_KINDS:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


class _QuietEventSuccess(logging.Filter):
    """Drops kopf's "Handler 'execution_event' succeeded." lines (one per watch event).

    At hundreds of Executions they were most of the log and a tenth of the operator's CPU;
    failures of these handlers are still logged.
    """

    QUIET = frozenset({"Handler 'execution_event' succeeded.", "Handler 'pod_event' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.QUIET


logging.getLogger("kopf.objects").addFilter(_QuietEventSuccess())


RUNNER_PODS_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
LIVE_PODS_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"
LIST_CHUNK_SIZE = 500


@kopf.on.startup()
async def watch_what_the_engine_needs(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Filter the Pod watch on the API server: runner Pods only, and only until they finish.

    Without the label selector the operator would receive every Pod of the cluster and drop
    most of them itself. Without the field selector it would list every finished runner Pod at
    start-up (thousands, kept for their logs) although finished Executions never look at them.
    A Pod that finishes leaves the watch with a ``DELETED`` event carrying its previous state;
    the engine then reads the Pod once to see how it ended (see ``Engine.on_pod``).
    """
    settings.watching.label_selectors["v1", "pods"] = RUNNER_PODS_SELECTOR
    settings.watching.field_selectors["v1", "pods"] = LIVE_PODS_SELECTOR
    # List in pages at start-up: thousands of finished Executions are never parsed all at once.
    settings.watching.chunk_size = LIST_CHUNK_SIZE


@kopf.on.event("kumulus.dev", "v1alpha1", "executions")
async def execution_event(event: kopf.RawEvent, **_: Any) -> None:
    """Cache the Execution and schedule its reconcile (and its parent's)."""
    engine().on_execution(event.get("type"), event["object"])


@kopf.on.event("v1", "pods", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY})
async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    """Cache the runner Pod and schedule its Execution's reconcile."""
    engine().on_pod(event.get("type"), event["object"])
