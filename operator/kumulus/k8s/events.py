"""Kubernetes Events on Kumulus objects (core/v1 Events, like ``kubectl describe`` shows)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from kumulus.k8s.resources import client

log = logging.getLogger(__name__)

COMPONENT = "kumulus-operator"


async def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Record an Event about ``body`` (any namespaced object as a dict); failures only log."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    now = datetime.now(UTC)
    event = Event(
        metadata=ObjectMeta(
            name=f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:12]}", namespace=namespace
        ),
        involvedObject=ObjectReference(
            apiVersion=body.get("apiVersion"),
            kind=body.get("kind"),
            name=meta.get("name"),
            namespace=namespace,
            uid=meta.get("uid"),
            resourceVersion=meta.get("resourceVersion"),
        ),
        type=type_,
        reason=reason,
        message=message[:1024],
        source=EventSource(component=COMPONENT),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
        reportingComponent=COMPONENT,
    )
    try:
        await client().create(event)
    except ApiError as err:
        log.warning(
            "Failed to post Event %s on %s/%s: %s.", reason, namespace, meta.get("name"), err
        )
