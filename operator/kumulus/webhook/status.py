"""``status.lastTriggeredTime`` of called Webhooks, written in batches, not per request.

A flood of calls must not become a flood of status writes: calls only note the time in
memory, and one loop writes each noted Webhook's time at most every
``status_interval_seconds`` (a JSON merge patch of that one field, so it never conflicts with
the operator's writes of ``url``, ``conditions`` and ``observedGeneration``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from kumulus.domain.timeutil import format_time
from kumulus.webhook import kube

log = logging.getLogger("kumulus.webhook.status")

Key = tuple[str, str]


class TriggerRecorder:
    """Notes when each Webhook was last called and writes it periodically."""

    def __init__(self, client: AsyncClient, interval: float) -> None:
        self.client = client
        self.interval = interval
        self.pending: dict[Key, datetime] = {}
        self.written = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, key: Key, when: datetime | None = None) -> None:
        self.pending[key] = when or datetime.now(UTC)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lastTriggeredTime writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, {}
        for (namespace, name), when in batch.items():
            body = {"status": {"lastTriggeredTime": format_time(when)}}
            try:
                await self.client.patch(
                    kube.Webhook.Status,
                    name,
                    body,
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
                self.written += 1
            except ApiError as err:
                if kube.status_code(err) != 404:
                    log.warning(
                        "Failed to write lastTriggeredTime of Webhook %s/%s (HTTP %s).",
                        namespace,
                        name,
                        kube.status_code(err),
                    )
            except Exception as err:
                log.warning(
                    "Failed to write lastTriggeredTime of Webhook %s/%s (%s).",
                    namespace,
                    name,
                    type(err).__name__,
                )
