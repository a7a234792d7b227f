"""Operator settings: one dataclass, each field overridable by ``KUMULUS_<FIELD>``.

The operator reads its configuration once at start-up. Keeping it in a plain dataclass (not in
kopf's settings object) lets the pure domain logic take it as an argument and lets tests build
any combination without touching the process environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from kumulus.domain import outputs

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration of the Flow/Execution operator.

    Every field can be overridden by the environment variable ``KUMULUS_<FIELD NAME UPPER>``,
    e.g. ``KUMULUS_POD_START_DEADLINE_SECONDS=60``. Lists are comma separated, booleans accept
    ``true/false/1/0/yes/no``, an empty value of an optional number means "none".
    """

    runner_image: str = "ghcr.io/kumulus-dev/kumulus-runner:0.1.0"
    """Image of the execution Pods (runs ``kumulus-runner``); a Flow's ``image`` overrides it."""

    runner_service_account: str = "kumulus-runner"
    """ServiceAccount of execution Pods unless the Flow or ``podTemplate`` names another."""

    runner_cluster_role: str = "kumulus-runner"
    """ClusterRole bound to the runner ServiceAccount in every namespace that runs Executions."""

    manage_runner_rbac: bool = True
    """Ensure the runner ServiceAccount and RoleBinding in a namespace before its first Pod."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces."""

    output_limit_bytes: int = outputs.LIMIT_DEFAULT_BYTES
    """Largest size of ``status.outputs`` as stored (compact UTF-8 JSON, see
    :func:`kumulus.domain.outputs.stored_size`), from 1 to 1048576 (1 MiB,
    :data:`kumulus.domain.outputs.LIMIT_MAX_BYTES`: what etcd holds next to the rest of the
    Execution). The one limit of every Execution type: the operator hands it to runner Pods
    (``KUMULUS_OUTPUT_LIMIT_BYTES``), where ``this.save(output_value=...)`` over it raises
    ``OutputLimitExceeded`` at once, and the connection executor applies it to connector
    results; outputs found over it when an attempt ends fail the Execution (OutputTooLarge)."""

    pod_start_deadline_seconds: int = 120
    """A Pod not running after this many seconds (unschedulable, image pull) fails the attempt."""

    flow_wait_seconds: int = 60
    """How long a FLOW Execution waits for its Flow to exist before it fails with FlowNotFound.

    Lets ``kubectl apply -f dir/`` and GitOps tools create a Flow and its Executions in any order.
    """

    flow_recheck_seconds: float = 30.0
    """How often Flows with ``codeFrom`` are checked again (their ConfigMap appeared or changed)."""

    default_ttl_seconds: int | None = None
    """``ttlSecondsAfterFinished`` for Executions that do not set it; ``None`` keeps them."""

    cancel_grace_seconds: int = 10
    """Grace period given to a runner Pod deleted because its Execution was cancelled."""

    image_pull_policy: str = "IfNotPresent"
    """``imagePullPolicy`` of the runner container."""

    allowed_images: tuple[str, ...] = ()
    """Images a Flow's ``spec.image`` may name besides ``runner_image`` (always allowed): exact
    references, or prefixes ending in ``*`` (``registry.example.com/flows/*``; end a prefix with
    ``/`` or ``:`` so it cannot match a longer repository name). Compared as written, without
    normalising (``busybox`` is not ``docker.io/library/busybox``). Empty: the runner image only.
    An Execution of a Flow naming another image fails with ImageNotAllowed, and no Pod is made."""

    runner_cpu_request: str = "50m"
    """Default ``requests.cpu`` of the runner container; empty for none. A Flow's or
    ``podTemplate``'s ``resources`` override it per resource."""

    runner_memory_request: str = "64Mi"
    """Default ``requests.memory`` of the runner container; empty for none."""

    runner_cpu_limit: str = ""
    """Default ``limits.cpu`` of the runner container; empty (the default) for none, so a flow
    is not throttled while the node has CPU to spare."""

    runner_memory_limit: str = "512Mi"
    """Default ``limits.memory`` of the runner container (a flow over it ends OOMKilled); empty
    for none. Raised to a Flow's or ``podTemplate``'s memory request when that is higher."""

    runner_tmp_size_limit: str = "1Gi"
    """``sizeLimit`` of the runner Pod's writable ``/tmp`` (an emptyDir; the rest of its file
    system is read-only); empty for none. A Pod writing more is evicted (Failed/Evicted)."""

    service_account_wait_seconds: int = 60
    """How long an Execution whose ServiceAccount does not exist waits for it (``Pending``,
    condition ``Started=False``, reason ServiceAccountNotFound) before it fails with that reason."""

    worker_limit: int = 200
    """Maximum number of concurrently processed objects (kopf ``batching.worker_limit``)."""

    reconcile_workers: int = 48
    """Executions reconciled at once (each makes one API call at a time); more wait in a FIFO
    queue. Kept below the API client's 64 connections (``kumulus.k8s.resources``)."""

    pod_resync_seconds: float = 60.0
    """A running Execution's Pod is read from the API server when no watch event has shown it
    for this long: a watch broken by an API server restart can miss a Pod that ended."""

    requeue_error_seconds: float = 5.0
    """Delay before reconciling an Execution again after an API error."""

    connection_executor_inline: bool = True
    """Run the connection executor (CONNECTION Executions, Connection Ready) inside the
    operator process; false when it runs as its own process
    (``kopf run -m kumulus.handlers.connection_executor``)."""

    connection_concurrency: int = 20
    """Connector calls running at once per connection executor process; more wait in a queue."""

    connection_timeout_seconds: float = 30.0
    """Default time limit of one connector call (the ``timeout`` input overrides it)."""

    connection_recheck_seconds: float = 60.0
    """How often a Connection's Ready condition is re-checked (e.g. its Secret appeared)."""

    webhook_base_url: str = ""
    """Base URL of the webhook service (e.g. ``https://hooks.example.com``), prefixed to each
    Webhook's ``status.url``; empty gives the path alone."""

    webhook_recheck_seconds: float = 15.0
    """How often each Webhook's Ready condition is re-checked (e.g. its Secret appeared)."""

    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus ``/metrics`` endpoint (the chart sets ``0.0.0.0`` in Pods)."""

    metrics_port: int = 8000
    """Port of the Prometheus ``/metrics`` endpoint; 0 disables it."""

    log_format: str = "text"
    """``text`` (kopf's format) or ``json``: one JSON object per log line (time, level, logger,
    message, object)."""

    def __post_init__(self) -> None:
        outputs.check_limit(self.output_limit_bytes, "output_limit_bytes")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from ``KUMULUS_*`` variables (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = f"KUMULUS_{field.name.upper()}"
            if key not in env:
                continue
            values[field.name] = _parse(field.name, str(field.type), env[key])
        return cls(**values)


def _parse(name: str, type_name: str, raw: str) -> Any:
    text = raw.strip()
    if type_name == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"KUMULUS_{name.upper()}: expected a boolean, got {raw!r}")
    if type_name.startswith("tuple"):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if type_name == "int | None":
        return int(text) if text else None
    if type_name == "int":
        return int(text)
    if type_name == "float":
        return float(text)
    return text
