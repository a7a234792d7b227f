"""kopf entry point of the Kumulus operator: ``kopf run -m kumulus.handlers``.

Importing this package registers the operator settings and the handlers of each kind (one
module per kind). kopf's own bookkeeping lives under the ``kumulus.dev`` prefix (never
``kopf.zalando.org``), and peering is off: several operator processes may run at once because
correctness comes from deterministic names and optimistic concurrency, not leader election.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kumulus.domain.settings import Settings
from kumulus.handlers import execution, flow
from kumulus.handlers import observability as observability  # /metrics, JSON logs
from kumulus.handlers import schedule as schedule  # the Schedule handlers register on import
from kumulus.handlers import webhook as webhook  # the Webhook handlers register on import
from kumulus.handlers.state import engine

__all__ = ["execution", "flow"]


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Point kopf's storage at ``kumulus.dev`` annotations, disable peering, size workers."""
    settings.persistence.finalizer = "kumulus.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kumulus.dev")
    # Same storage as kopf's, minus the per-event deep copy for Executions and Pods.
    settings.persistence.diffbase_storage = execution.EventOnlyDiffBaseStorage(
        prefix="kumulus.dev", key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.peering.clusterwide = False
    settings.batching.worker_limit = engine().settings.worker_limit
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    logging.getLogger("kumulus").setLevel(logging.INFO)
    # One line per API request is too much at hundreds of Executions.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Cancel pending timers and reconcile tasks."""
    await engine().shutdown()


# The connection executor (CONNECTION Executions, Connection Ready) runs in this process unless
# KUMULUS_CONNECTION_EXECUTOR_INLINE=false. Keep this the LAST import of the package: run alone
# (`kopf run -m kumulus.handlers.connection_executor`) it replaces kopf's default registry.
if Settings.from_env().connection_executor_inline:
    from kumulus.handlers import connection_executor  # noqa: F401
