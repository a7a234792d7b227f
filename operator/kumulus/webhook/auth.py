"""Credentials out of an HTTP request, checked by :func:`kumulus.domain.webhook.authenticate`.

The decision itself is pure (and unit-tested) in the domain; this module only knows where an
aiohttp request carries each credential: ``?key=`` or ``key`` in a JSON body (Cloudomation),
``Authorization: Bearer`` and the GitHub-compatible ``X-Hub-Signature-256`` over the exact
raw body.
"""

from __future__ import annotations

from aiohttp import web

from kumulus.domain import webhook as rules
from kumulus.webhook.cache import Served, WebhookCache


def credentials(request: web.Request, body: bytes, body_key: str | None) -> rules.Credentials:
    """What the caller presented (the first ``?key=`` and the body's ``key``)."""
    keys: list[str] = []
    query_key = request.rel_url.query.get("key")
    if query_key is not None:
        keys.append(query_key)
    if body_key is not None:
        keys.append(body_key)
    return rules.Credentials(
        keys=tuple(keys),
        authorization=request.headers.get("Authorization"),
        signature=request.headers.get(rules.SIGNATURE_HEADER),
        body=body,
    )


async def authenticate(
    cache: WebhookCache,
    served: Served,
    request: web.Request,
    body: bytes,
    body_key: str | None,
    secret_wait: float,
) -> str | None:
    """The method that admitted the call, or ``None`` (answer 401)."""
    config = await cache.auth_config(served, secret_wait)
    return rules.authenticate(config, credentials(request, body, body_key))
