"""Real HTTP and SMTP servers on this machine for the REST and SMTP connector tests.

Both run on a background thread with their own event loop, so synchronous e2e tests and
async unit tests can use them alike. The SMTP server is aiosmtpd (optionally requiring a
login, checked by an authenticator); the HTTP server is aiohttp with a few routes: ``/echo``
(returns the request as JSON), ``/slow?seconds=N``, ``/status/<code>`` and ``/json``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

LOOPBACK = "127.0.0.1"


def cluster_host() -> str:
    """The address of this machine that the dev cluster's Pods reach: where its API server
    listens (the host end of the node's veth), read from ``$KUBECONFIG``; loopback without one.

    Servers the e2e tests start for connectors listen here, so a connection executor running
    as a Pod (the Helm e2e) reaches them as well as the operator running on this machine.
    """
    path = os.environ.get("KUBECONFIG")
    if not path or not os.path.isfile(path):
        return LOOPBACK
    config = yaml.safe_load(Path(path).read_text())
    server = config["clusters"][0]["cluster"]["server"]
    return urllib.parse.urlsplit(server).hostname or LOOPBACK


# The SMTP server asks for a login without TLS on purpose (loopback only, test passwords).
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- SMTP


@dataclass
class Received:
    """One delivered email."""

    sender: str
    recipients: list[str]
    message: Message


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append(
            Received(
                sender=str(envelope.mail_from),
                recipients=[str(r) for r in envelope.rcpt_tos],
                message=message_from_bytes(content),
            )
        )
        return "250 OK queued"


class MailServer:
    """aiosmtpd on ``host``; with ``login``/``password`` it requires that login (no TLS)."""

    def __init__(
        self, login: str | None = None, password: str | None = None, host: str = LOOPBACK
    ) -> None:
        self.handler = _Handler()
        self.host = host
        self.port = free_port(host)
        kwargs: dict[str, Any] = {}
        if login is not None:
            kwargs.update(
                authenticator=self._authenticator(login, password or ""),
                auth_required=True,
                auth_require_tls=False,
            )
        self._controller = Controller(self.handler, hostname=host, port=self.port, **kwargs)

    @staticmethod
    def _authenticator(login: str, password: str) -> Callable[..., AuthResult]:
        def check(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == login
                and data.password.decode() == password
            )
            return AuthResult(success=ok, handled=False)

        return check

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> MailServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


# --------------------------------------------------------------------------- HTTP


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "authorization": request.headers.get("Authorization"),
            "body": body.decode(errors="replace"),
        }
    )


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "30")))
    return web.Response(text="late")


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), text="failure body")


@dataclass(frozen=True)
class Seen:
    """One request the HTTP server received."""

    method: str
    path: str
    query: str
    authorization: str | None


class HttpServer:
    """aiohttp on 127.0.0.1 in a background thread; ``url`` is its base URL."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.requests: list[Seen] = []
        """Every request, in order."""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name="http-server", daemon=True)

    def _app(self) -> web.Application:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests.append(
                Seen(
                    request.method,
                    request.path,
                    request.query_string,
                    request.headers.get("Authorization"),
                )
            )
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[count])
        app.router.add_get("/slow", _slow)
        app.router.add_get("/status/{code}", _status)
        app.router.add_route("*", "/{tail:.*}", _echo)
        return app

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._runner = web.AppRunner(self._app(), shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port).start()

        self._loop.run_until_complete(start())
        self._started.set()
        self._loop.run_forever()

    def start(self) -> HttpServer:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the HTTP test server did not start")
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
