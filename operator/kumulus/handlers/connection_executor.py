"""kopf handlers of the connection executor: CONNECTION Executions and Connection Ready.

Two ways to run it:

* inline (default): ``kopf run -m kumulus.handlers`` imports this module unless the setting
  ``connection_executor_inline`` is false (``KUMULUS_CONNECTION_EXECUTOR_INLINE=false``);
* as its own process, e.g. its own Deployment with its own ServiceAccount (the only one with
  ``secrets: get``, ClusterRole ``kumulus-connection-executor``):
  ``kopf run -m kumulus.handlers.connection_executor``. Importing this module imports the
  package ``kumulus.handlers`` first, which registers the reconciler's handlers on kopf's
  default registry; so when this module is the only ``-m`` module of ``kopf run``, it
  registers its handlers on a registry of its own and makes that kopf's default (this
  module must stay the last one ``kumulus.handlers`` imports). Then the process runs the
  connection executor and nothing else.

The work is done by :class:`kumulus.k8s.connection_executor.ConnectionExecutor` and
:class:`kumulus.k8s.connections.ConnectionKeeper`; these handlers only feed them watch events.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from kumulus.domain.settings import Settings
from kumulus.handlers import connection, observability
from kumulus.k8s.connection_executor import ConnectionExecutor
from kumulus.observability import metrics

MODULE = __name__

_executor: ConnectionExecutor | None = None


def executor() -> ConnectionExecutor:
    """The connection executor of this process (created lazily)."""
    global _executor
    if _executor is None:
        created = ConnectionExecutor(Settings.from_env())
        metrics.bind_connection_executor(lambda: len(created.queued), lambda: created.busy)
        _executor = created
    return _executor


def kopf_modules(argv: Sequence[str]) -> list[str]:
    """The modules a ``kopf run`` command line imports (``-m X``, ``--module X|=X``)."""
    found: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("-m", "--module") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--module="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-m") and len(arg) > 2:
            found.append(arg[2:])
    return found


def runs_alone(argv: Sequence[str]) -> bool:
    """Whether this process is ``kopf run -m kumulus.handlers.connection_executor`` alone."""
    if "run" not in argv:
        return False
    modules = kopf_modules(argv)
    return MODULE in modules and all(m == MODULE for m in modules)


async def execution_event(event: kopf.RawEvent, **_: Any) -> None:
    """Feed the executor (it ignores everything but CONNECTION/TASK Executions)."""
    executor().on_execution(event.get("type"), event["object"])


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own logins (a fresh registry has none): a kubeconfig, else the in-cluster
    ServiceAccount."""
    info: kopf.ConnectionInfo | None = kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        info = kopf.login_with_service_account(**kwargs)
    return info


async def configure_alone(settings: kopf.OperatorSettings, **_: Any) -> None:
    """The same kopf settings as the operator's (``kumulus.handlers.configure``)."""
    settings.persistence.finalizer = "kumulus.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kumulus.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kumulus.dev", key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.peering.clusterwide = False
    settings.batching.worker_limit = executor().settings.worker_limit
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    logging.getLogger("kumulus").setLevel(logging.INFO)


async def quiet_client_loggers(**_: Any) -> None:
    """Client libraries log URLs and user names at INFO: keep them to warnings."""
    for noisy in ("httpx", "httpx2", "httpcore", "aiosmtplib", "asyncssh", "asyncpg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def stop_executor(**_: Any) -> None:
    """Let running calls finish briefly, fail the rest, close the connectors' pools."""
    await executor().shutdown()


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the connection executor's handlers (and the Connection ones) on ``registry``."""
    kopf.on.event("kumulus.dev", "v1alpha1", "executions", registry=registry)(execution_event)
    kopf.on.startup(registry=registry)(quiet_client_loggers)
    kopf.on.cleanup(registry=registry)(stop_executor)
    connection.register(registry)


ALONE = runs_alone(sys.argv)
"""True when this process runs the connection executor only."""

if ALONE:
    _registry = kopf.OperatorRegistry()
    kopf.on.login(registry=_registry)(login)
    kopf.on.startup(registry=_registry)(configure_alone)
    kopf.on.startup(registry=_registry)(observability.serve_metrics)
    kopf.on.cleanup(registry=_registry)(observability.stop_metrics)
    register(_registry)
    kopf.set_default_registry(_registry)
else:
    register(kopf.get_default_registry())
