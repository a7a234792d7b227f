"""The HTTP routes of ``kumulus-webhook``: a call in, an Execution out, an answer back.

Routes: ``/api/latest/webhook/<name>/call[/...]`` (Cloudomation's form, in the configured
namespace), ``/namespaces/<ns>/webhooks/<name>/call[/...]``, ``GET /healthz`` and
``GET /metrics``. Every other path is a JSON 404.

A call goes through these steps, each answered at once when it fails, cheapest first:

1. the Webhook is known and enabled (404), the method is allowed (405);
2. admission: at most ``max_in_flight`` calls past this point (503 + ``Retry-After``);
3. the body, read up to ``maxBodyBytes`` (413, the rest is never read; a declared
   ``Content-Length`` over the limit is refused before reading, and ``Expect: 100-continue``
   callers are refused before they send);
4. credentials (401, one answer for every failure; see :func:`kumulus.domain.webhook.authenticate`),
   then a malformed body (400): an unauthenticated caller learns nothing about the body;
5. the Webhook's ``rateLimit`` (429 + ``Retry-After``), the Flow exists (404 with a message);
6. the Execution is created; async calls get 202 with its name; sync calls (at most
   ``max_sync_waiting`` at once, else 503) watch it and get its summary or HTML, or 202 when
   ``response.timeoutSeconds`` pass first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from kumulus.api.v1alpha1 import ResponseMode
from kumulus.domain import webhook as rules
from kumulus.webhook import auth, inputs, runs
from kumulus.webhook.cache import Key, Served, WebhookCache
from kumulus.webhook.kube import Clients
from kumulus.webhook.limits import BodyTooLarge, Gate, RateLimiter, read_body
from kumulus.webhook.metrics import CONTENT_TYPE_LATEST, Metrics
from kumulus.webhook.settings import WebhookSettings
from kumulus.webhook.status import TriggerRecorder

log = logging.getLogger("kumulus.webhook")

SUBPATH = r"{subpath:(?:/.*)?}"
CLOUDOMATION_ROUTE = "/api/latest/webhook/{name}/call" + SUBPATH
NAMESPACED_ROUTE = "/namespaces/{namespace}/webhooks/{name}/call" + SUBPATH
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="kumulus-webhook"'}

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service")


def respond(answer: rules.Answer, headers: dict[str, str] | None = None) -> web.Response:
    """An aiohttp response for a domain answer."""
    if answer.content_type == "application/json":
        return web.json_response(answer.body, status=answer.status, headers=headers)
    return web.Response(
        text=str(answer.body),
        status=answer.status,
        content_type=answer.content_type,
        charset="utf-8",
        headers=headers,
    )


class Service:
    """The service's state: cache, limits, metrics and API clients."""

    def __init__(self, settings: WebhookSettings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients
        self.metrics = Metrics()
        self.limiter = RateLimiter()
        self.cache = WebhookCache(clients, settings.namespaces, on_webhook_gone=self._gone)
        self.admission = Gate(settings.max_in_flight)
        self.waiting = Gate(settings.max_sync_waiting)
        self.triggers = TriggerRecorder(clients.api, settings.status_interval_seconds)
        self.started = time.monotonic()

    def _gone(self, key: Key) -> None:
        self.limiter.forget(key)

    # -------------------------------------------------------------------- app

    def app(self) -> web.Application:
        app = web.Application()
        app[SERVICE_KEY] = self
        app.router.add_get("/healthz", self.healthz, allow_head=True)
        app.router.add_get("/metrics", self.metrics_view, allow_head=True)
        app.router.add_route(
            "*", CLOUDOMATION_ROUTE, self.cloudomation_call, expect_handler=self.expect
        )
        app.router.add_route(
            "*", NAMESPACED_ROUTE, self.namespaced_call, expect_handler=self.expect
        )
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        self.cache.start()
        self.triggers.start()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.triggers.stop()
        await self.cache.stop()
        await self.clients.close()

    # -------------------------------------------------------------------- plain routes

    async def healthz(self, _: web.Request) -> web.Response:
        stats = self.cache.stats()
        if not self.cache.synced:
            return web.json_response({"status": "starting", **stats}, status=503)
        return web.json_response({"status": "ok", **stats})

    async def metrics_view(self, _: web.Request) -> web.Response:
        for kind, count in self.cache.stats().items():
            self.metrics.cached.labels(kind).set(count)
        self.metrics.in_flight.set(self.admission.in_use)
        self.metrics.sync_waiting.set(self.waiting.in_use)
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def not_found(self, _: web.Request) -> web.Response:
        return respond(rules.NOT_FOUND)

    # -------------------------------------------------------------------- calls

    def _target(self, request: web.Request) -> tuple[str, str]:
        info = request.match_info
        namespace = info.get("namespace", self.settings.namespace)
        return namespace, info.get("name", "")

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a too-large body before the caller sends it."""
        served = self.cache.webhook(*self._target(request))
        length = request.content_length
        if served is not None and length is not None and length > served.spec.max_body_bytes:
            return respond(rules.error_answer(413, "request too large"))
        if request.headers.get("Expect", "").lower() != "100-continue":
            return respond(rules.error_answer(417, "expectation failed"))
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def cloudomation_call(self, request: web.Request) -> web.Response:
        return await self._call(request, self.settings.namespace)

    async def namespaced_call(self, request: web.Request) -> web.Response:
        return await self._call(request, request.match_info["namespace"])

    async def _call(self, request: web.Request, namespace: str) -> web.Response:
        begun = time.monotonic()
        name = request.match_info["name"]
        served = self.cache.webhook(namespace, name)
        mode = "sync"
        if served is not None and served.spec.enabled:
            mode = (
                "async"
                if served.spec.response.mode is ResponseMode.ASYNC
                or rules.wants_async(inputs.query_pairs(request))
                else "sync"
            )
        try:
            response = await self._handle(request, namespace, name, served, mode == "sync")
        except Exception:
            log.exception("Failed to handle a call to Webhook %s/%s.", namespace, name)
            response = respond(rules.error_answer(500, "internal error"))
        known = served is not None and served.spec.enabled
        self.metrics.requests.labels(
            namespace if known else "", name if known else "", str(response.status)
        ).inc()
        self.metrics.duration.labels(mode).observe(time.monotonic() - begun)
        return response

    async def _handle(
        self,
        request: web.Request,
        namespace: str,
        name: str,
        served: Served | None,
        sync: bool,
    ) -> web.Response:
        if served is None and not self.cache.synced:
            return respond(
                rules.error_answer(503, "starting"),
                {"Retry-After": str(self.settings.retry_after_seconds)},
            )
        if served is None or not served.spec.enabled:
            return respond(rules.NOT_FOUND)
        allowed = [m.value for m in served.spec.methods]
        if request.method not in allowed:
            return respond(
                rules.error_answer(405, "method not allowed"), {"Allow": ", ".join(allowed)}
            )
        if not self.admission.try_enter():
            return self._overloaded("Too many calls in flight.")
        try:
            outcome = await self._admitted(request, namespace, name, served, sync)
        finally:
            self.admission.leave()
        if isinstance(outcome, web.Response):
            return outcome
        created = outcome
        execution = str((created.get("metadata") or {}).get("name"))
        self.triggers.record((namespace, name))
        self.metrics.executions.labels(namespace, name).inc()
        log.info(
            "Created Execution %s/%s for Webhook %s (%s).",
            namespace,
            execution,
            served.ref,
            "sync" if sync else "async",
        )
        if not sync:
            return respond(rules.accepted_answer(created))
        try:
            latest, ended = await runs.wait_for_end(
                self.clients.waits, created, float(served.spec.response.timeout_seconds)
            )
        finally:
            self.waiting.leave()
        if ended:
            return respond(rules.final_answer(latest))
        return respond(rules.accepted_answer(latest))

    async def _admitted(
        self, request: web.Request, namespace: str, name: str, served: Served, sync: bool
    ) -> web.Response | dict[str, Any]:
        """Steps 3 to 6 of an admitted call: an answer, or the created Execution."""
        try:
            body = await read_body(request, served.spec.max_body_bytes)
        except BodyTooLarge:
            return respond(
                rules.error_answer(
                    413,
                    "request too large",
                    f"The body is over {served.spec.max_body_bytes} bytes.",
                ),
                {"Connection": "close"},
            )
        parsed: rules.ParsedBody | None = None
        problem: rules.BadRequest | None = None
        try:
            parsed = rules.parse_body(request.headers.get("Content-Type", ""), body)
        except rules.BadRequest as err:
            problem = err
        method = await auth.authenticate(
            self.cache,
            served,
            request,
            body,
            rules.body_key(parsed) if parsed is not None else None,
            self.settings.secret_sync_wait_seconds,
        )
        if method is None:
            log.debug("Refused a call to Webhook %s: no valid credentials.", served.ref)
            return respond(rules.UNAUTHORIZED, UNAUTHORIZED_HEADERS)
        if problem is not None or parsed is None:
            return respond(rules.error_answer(400, "bad request", str(problem)))
        wait = self.limiter.check(served)
        if wait > 0:
            return respond(
                rules.error_answer(429, "too many requests"),
                {"Retry-After": rules.retry_after_header(wait)},
            )
        flow = served.spec.flow_ref.name
        if not self.cache.flow_exists(namespace, flow):
            return respond(
                rules.error_answer(
                    404, "flow not found", f"Flow {flow} of this webhook does not exist."
                )
            )
        values = inputs.flow_inputs(request, request.match_info.get("subpath", ""), parsed)
        if rules.inputs_size(values) > self.settings.max_inputs_bytes:
            return respond(
                rules.error_answer(
                    413,
                    "request too large",
                    f"The inputs are over {self.settings.max_inputs_bytes} bytes.",
                )
            )
        if sync and not self.waiting.try_enter():
            return self._overloaded("Too many sync calls waiting.")
        manifest = rules.execution_manifest(namespace, name, served.spec, values)
        try:
            return await runs.create_execution(self.clients.api, manifest)
        except runs.CreateFailed as err:
            if sync:
                self.waiting.leave()
            log.warning("Failed to create an Execution for Webhook %s: %s", served.ref, err)
            headers = None
            if err.answer.status == 503:
                headers = {"Retry-After": str(self.settings.retry_after_seconds)}
            return respond(err.answer, headers)

    def _overloaded(self, message: str) -> web.Response:
        return respond(
            rules.error_answer(503, "overloaded", message),
            {"Retry-After": str(self.settings.retry_after_seconds)},
        )
