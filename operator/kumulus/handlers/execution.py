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

from typing import Any

import kopf

from kumulus.domain import naming
from kumulus.handlers.state import engine


@kopf.on.event("kumulus.dev", "v1alpha1", "executions")
async def execution_event(event: kopf.RawEvent, **_: Any) -> None:
    """Cache the Execution and schedule its reconcile (and its parent's)."""
    engine().on_execution(event.get("type"), event["object"])


@kopf.on.event("v1", "pods", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY})
async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    """Cache the runner Pod and schedule its Execution's reconcile."""
    engine().on_pod(event.get("type"), event["object"])
