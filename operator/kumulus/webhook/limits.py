"""What keeps the service's memory and the API server's load bounded under any flood.

Three limits, each answered at once instead of queued: a token bucket per Webhook (its
``rateLimit``, 429), a gate on calls admitted at once (body read + auth + Execution creation,
503 with ``Retry-After``) and a gate on sync calls waiting for their Execution (503). Bodies
are read in chunks and abandoned as soon as they pass the Webhook's ``maxBodyBytes`` (413), so
a large body never sits in memory: at most ``max_in_flight`` bodies of at most the limit do.
"""

from __future__ import annotations

import time

from aiohttp import web

from kumulus.domain.webhook import TokenBucket
from kumulus.webhook.cache import Key, Served


class BodyTooLarge(Exception):
    """The body is over the limit (answered 413; the rest is never read)."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, or :class:`BodyTooLarge` as soon as it passes ``limit`` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class Gate:
    """A counter of things in progress with a hard maximum; never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_enter(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def leave(self) -> None:
        self.in_use = max(0, self.in_use - 1)


class RateLimiter:
    """One token bucket per Webhook, rebuilt when its ``rateLimit`` changes."""

    def __init__(self) -> None:
        self._buckets: dict[Key, tuple[tuple[float, int], TokenBucket]] = {}

    def check(self, served: Served, now: float | None = None) -> float:
        """``0.0`` if the call may go on, else seconds until the Webhook accepts one."""
        limit = served.spec.rate_limit
        key = (served.namespace, served.name)
        if limit is None:
            self._buckets.pop(key, None)
            return 0.0
        moment = time.monotonic() if now is None else now
        config = (float(limit.requests_per_second), int(limit.burst))
        entry = self._buckets.get(key)
        if entry is None or entry[0] != config:
            entry = (config, TokenBucket.full(config[0], config[1], moment))
            self._buckets[key] = entry
        return entry[1].take(moment)

    def forget(self, key: Key) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
