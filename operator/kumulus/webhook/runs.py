"""Creating a call's Execution and, for sync calls, waiting for its end.

A webhook call has no natural key, so each one creates a new Execution with ``generateName``
``<webhook>-`` and answers with the name the API server chose. A sync call then watches that
one Execution (field selector ``metadata.name``, from the resourceVersion of the create) until
it ends or the Webhook's ``response.timeoutSeconds`` pass; nothing is polled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from kumulus.domain import webhook as rules
from kumulus.webhook import kube

log = logging.getLogger("kumulus.webhook.runs")


class CreateFailed(Exception):
    """The Execution could not be created; ``answer`` says what the caller gets."""

    def __init__(self, answer: rules.Answer, reason: str) -> None:
        super().__init__(reason)
        self.answer = answer


async def create_execution(client: AsyncClient, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create the Execution; :class:`CreateFailed` with the caller's answer if it fails."""
    try:
        created = await client.create(kube.Execution.from_dict(dict(manifest)))
    except ApiError as err:
        code = kube.status_code(err)
        message = str(err.status.message or "")
        if code == 413 or "too large" in message.lower():
            raise CreateFailed(
                rules.error_answer(413, "request too large", "The inputs are too large."), message
            ) from err
        if code in (400, 422):
            raise CreateFailed(
                rules.error_answer(400, "bad request", f"The API server refused: {message}"),
                message,
            ) from err
        raise CreateFailed(
            rules.error_answer(503, "unavailable", "Could not create the execution."),
            f"HTTP {code}: {message}",
        ) from err
    except Exception as err:  # connection refused, timeout, pool exhausted
        raise CreateFailed(
            rules.error_answer(503, "unavailable", "Could not create the execution."),
            type(err).__name__,
        ) from err
    return kube.to_dict(created)


async def wait_for_end(
    client: AsyncClient, created: Mapping[str, Any], seconds: float
) -> tuple[dict[str, Any], bool]:
    """Watch the Execution until it ends: ``(latest object, ended)`` after at most ``seconds``."""
    meta = created.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    latest: dict[str, Any] = dict(created)
    version: str | None = meta.get("resourceVersion")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                stream = client.watch(
                    kube.Execution,
                    namespace=namespace,
                    fields={"metadata.name": name},
                    resource_version=version,
                )
                async for event_type, obj in stream:
                    body = kube.to_dict(obj)
                    version = (body.get("metadata") or {}).get("resourceVersion") or version
                    if event_type == "DELETED":
                        return latest, rules.is_terminal(latest)
                    latest = body
                    if rules.is_terminal(body):
                        return body, True
        except TimeoutError:
            break
        except ApiError as err:
            if kube.status_code(err) == 410:
                version = None  # a fresh watch starts with the current object
                continue
            log.warning("Lost the watch of Execution %s/%s; retrying.", namespace, name)
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        except Exception as err:
            log.warning(
                "Lost the watch of Execution %s/%s (%s); retrying.",
                namespace,
                name,
                type(err).__name__,
            )
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return latest, rules.is_terminal(latest)
