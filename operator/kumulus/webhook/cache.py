"""Watch-based cache of what a call needs: Webhooks, Flow names and the referenced Secrets.

A call never reads the API server: it looks up its Webhook, the Flow's existence and the
secret values here. Each kind is kept by a :class:`Reflector` (list, then watch from the
list's resourceVersion; on ``410 Gone``, a dropped connection or any error, list again after
a short backoff), so the cache converges after API server restarts too.

Secrets are watched one by one with the field selector ``metadata.name=<secret>``, and only
those a Webhook references, keeping only the referenced keys. That is what lets an
administrator restrict the service's Secret access with RBAC ``resourceNames`` (the API
server authorizes a list/watch with that field selector as a request for that one name): see
docs/webhooks.md. Flows are kept as names only (their code is not needed here).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import ALL_NS, AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret
from pydantic import ValidationError

from kumulus.api.v1alpha1 import WebhookSpec
from kumulus.domain import webhook as rules
from kumulus.webhook import kube

log = logging.getLogger("kumulus.webhook.cache")

Key = tuple[str, str]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Reflector:
    """Keeps one list+watch of a resource running and reports what it sees.

    ``on_reset(items)`` gets the full list after each (re)list; ``on_event(type, obj)`` each
    watch event. ``synced`` is set after the first successful list.
    """

    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        namespace: str,
        what: str,
        on_reset: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.what = what
        self.on_reset = on_reset
        self.on_event = on_event
        self.fields = fields
        self.synced = asyncio.Event()
        self.tried = asyncio.Event()
        """Set after the first list attempt, successful or not (e.g. 403)."""
        self.relists = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"reflector {self.what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _list(self) -> str:
        listing = self.client.list(self.resource, namespace=self.namespace, fields=self.fields)
        items = [kube.to_dict(obj) async for obj in listing]
        self.on_reset(items)
        self.synced.set()
        self.tried.set()
        return str(listing.resourceVersion)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                version = await self._list()
                self.relists += 1
                backoff = 0.5
                watch = self.client.watch(
                    self.resource,
                    namespace=self.namespace,
                    fields=self.fields,
                    resource_version=version,
                )
                async for event_type, obj in watch:
                    self.on_event(str(event_type), kube.to_dict(obj))
            except asyncio.CancelledError:
                raise
            except ApiError as err:
                self.tried.set()
                code = kube.status_code(err)
                if code == 410:
                    log.info("Re-listed %s after its watch expired (410 Gone).", self.what)
                    continue
                log.warning("Failed to watch %s (HTTP %s); retrying.", self.what, code)
            except Exception as err:  # a dropped connection, a timeout: list again
                self.tried.set()
                log.warning("Lost the watch of %s (%s); retrying.", self.what, type(err).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


@dataclasses.dataclass(frozen=True)
class Served:
    """A Webhook as the service serves it."""

    namespace: str
    name: str
    generation: int
    spec: WebhookSpec

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def _decode(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


class _SecretWatch:
    """The values of the referenced keys of one Secret, kept by a field-selected reflector."""

    def __init__(self, client: AsyncClient, namespace: str, name: str, keys: frozenset[str]):
        self.namespace = namespace
        self.name = name
        self.keys = keys
        self.values: dict[str, bytes] = {}
        self.reflector = Reflector(
            client,
            Secret,
            namespace,
            f"Secret {namespace}/{name}",
            self._reset,
            self._event,
            fields={"metadata.name": name},
        )

    def _keep(self, obj: Mapping[str, Any]) -> None:
        data = obj.get("data") or {}
        values: dict[str, bytes] = {}
        for key in self.keys:
            value = _decode(data.get(key))
            if value:
                values[key] = value
        self.values = values

    def _reset(self, items: list[dict[str, Any]]) -> None:
        found = [obj for obj in items if _key(obj)[1] == self.name]
        if found:
            self._keep(found[0])
        else:
            self.values = {}

    def _event(self, event_type: str, obj: dict[str, Any]) -> None:
        if _key(obj)[1] != self.name:
            return
        if event_type == "DELETED":
            self.values = {}
        else:
            self._keep(obj)


class WebhookCache:
    """Webhooks, Flow names and referenced Secret values of the served namespaces."""

    def __init__(
        self,
        clients: kube.Clients,
        namespaces: tuple[str, ...] = (),
        on_webhook_gone: Callable[[Key], None] | None = None,
    ) -> None:
        self.clients = clients
        self.namespaces = namespaces or (ALL_NS,)
        self.webhooks: dict[Key, Served] = {}
        self.flows: set[Key] = set()
        self._secrets: dict[Key, _SecretWatch] = {}
        self._reflectors: list[Reflector] = []
        self._on_webhook_gone = on_webhook_gone
        self._stopping: set[asyncio.Task[None]] = set()

    # -------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for namespace in self.namespaces:
            where = "all namespaces" if namespace == ALL_NS else f"namespace {namespace}"
            self._reflectors.append(
                Reflector(
                    self.clients.watch,
                    kube.Webhook,
                    namespace,
                    f"Webhooks in {where}",
                    functools.partial(self._reset_webhooks, namespace),
                    self._webhook_event,
                )
            )
            self._reflectors.append(
                Reflector(
                    self.clients.watch,
                    kube.Flow,
                    namespace,
                    f"Flows in {where}",
                    functools.partial(self._reset_flows, namespace),
                    self._flow_event,
                )
            )
        for reflector in self._reflectors:
            reflector.start()

    async def stop(self) -> None:
        for watch in list(self._secrets.values()):
            await watch.reflector.stop()
        for reflector in self._reflectors:
            await reflector.stop()

    @property
    def synced(self) -> bool:
        """Whether Webhooks and Flows have been listed at least once."""
        return all(r.synced.is_set() for r in self._reflectors)

    async def wait_synced(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                for reflector in self._reflectors:
                    await reflector.synced.wait()
        except TimeoutError:
            return False
        return True

    # -------------------------------------------------------------------- lookups

    def webhook(self, namespace: str, name: str) -> Served | None:
        return self.webhooks.get((namespace, name))

    def flow_exists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.flows

    async def auth_config(self, served: Served, wait: float) -> rules.AuthConfig:
        """What ``served`` accepts, with the secret values found in the cache.

        Waits up to ``wait`` seconds for a just-started Secret watch to try listing its Secret
        (not longer: a Secret the service may not read must not slow every 401 down).
        """
        auth = served.spec.auth
        refs = rules.referenced_secrets(served.spec)
        watches = [self._secrets.get((served.namespace, name)) for _, name, _ in refs]
        pending = [
            w.reflector.tried.wait() for w in watches if w and not w.reflector.tried.is_set()
        ]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.gather(*pending)
        secrets: dict[str, bytes] = {}
        for (method, _, key), watch in zip(refs, watches, strict=True):
            if watch is not None and key in watch.values:
                secrets[method] = watch.values[key]
        return rules.AuthConfig(
            methods=frozenset(method for method, _, _ in refs),
            secrets=secrets,
            allow_unauthenticated=bool(auth and auth.allow_unauthenticated),
        )

    def stats(self) -> dict[str, int]:
        return {
            "webhooks": len(self.webhooks),
            "flows": len(self.flows),
            "secrets": len(self._secrets),
        }

    # -------------------------------------------------------------------- webhooks

    def _parse(self, obj: Mapping[str, Any]) -> Served | None:
        namespace, name = _key(obj)
        try:
            model = rules.parse_webhook(obj)
        except (ValidationError, ValueError) as err:
            log.warning("Ignored Webhook %s/%s: it is not valid (%s).", namespace, name, err)
            return None
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        return Served(namespace, name, generation, model.spec)

    def _in_scope(self, namespace: str, scope: str) -> bool:
        return scope == ALL_NS or namespace == scope

    def _reset_webhooks(self, scope: str, items: list[dict[str, Any]]) -> None:
        fresh: dict[Key, Served] = {}
        for obj in items:
            served = self._parse(obj)
            if served is not None:
                fresh[(served.namespace, served.name)] = served
        for key in [k for k in self.webhooks if self._in_scope(k[0], scope)]:
            if key not in fresh:
                self._forget(key)
        self.webhooks.update(fresh)
        self._sync_secret_watches()
        log.info("Listed %d Webhooks (%s).", len(fresh), scope if scope != ALL_NS else "all")

    def _webhook_event(self, event_type: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if event_type == "DELETED":
            if key in self.webhooks:
                self._forget(key)
                log.info("Stopped serving Webhook %s/%s: it was deleted.", *key)
        else:
            served = self._parse(obj)
            old = self.webhooks.get(key)
            if served is None:
                self._forget(key)
            else:
                self.webhooks[key] = served
                if old is None or old.generation != served.generation:
                    log.info("Serving Webhook %s/%s (generation %d).", *key, served.generation)
        self._sync_secret_watches()

    def _forget(self, key: Key) -> None:
        self.webhooks.pop(key, None)
        if self._on_webhook_gone is not None:
            self._on_webhook_gone(key)

    def _sync_secret_watches(self) -> None:
        """Start a watch per newly referenced Secret; stop those no longer referenced."""
        wanted: dict[Key, set[str]] = {}
        for served in self.webhooks.values():
            for _, secret, secret_key in rules.referenced_secrets(served.spec):
                wanted.setdefault((served.namespace, secret), set()).add(secret_key)
        for ref, watch in list(self._secrets.items()):
            if ref not in wanted or watch.keys != frozenset(wanted[ref]):
                self._secrets.pop(ref)
                task = asyncio.get_running_loop().create_task(watch.reflector.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
        for ref, keys in wanted.items():
            if ref not in self._secrets:
                fresh = _SecretWatch(self.clients.watch, ref[0], ref[1], frozenset(keys))
                self._secrets[ref] = fresh
                fresh.reflector.start()

    # -------------------------------------------------------------------- flows

    def _reset_flows(self, scope: str, items: list[dict[str, Any]]) -> None:
        self.flows = {k for k in self.flows if not self._in_scope(k[0], scope)}
        self.flows.update(_key(obj) for obj in items)

    def _flow_event(self, event_type: str, obj: dict[str, Any]) -> None:
        if event_type == "DELETED":
            self.flows.discard(_key(obj))
        else:
            self.flows.add(_key(obj))
