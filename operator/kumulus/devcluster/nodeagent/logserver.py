"""The node's HTTPS endpoint the API server calls for ``kubectl logs``.

The API server proxies ``pods/log`` to the kubelet's ``/containerLogs/{ns}/{pod}/{container}``.
This server answers that from the CRI-format log files the agent writes, with the kubelet's
query parameters (follow, tailLines, limitBytes, timestamps, previous, sinceSeconds, sinceTime).
It requires a client certificate signed by the cluster CA, like a kubelet with
``--client-ca-file`` (the API server presents its kubelet-client certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.2


class LogLocator(Protocol):
    """Finds the log file of a container run (implemented by the agent)."""

    def find_log(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[Path, asyncio.Event] | None:
        """The log path and an event set once nothing more will be written, or None."""


@dataclass(frozen=True)
class LogLine:
    """One parsed line of a CRI log file."""

    timestamp: str
    stream: str
    full: bool
    content: bytes

    def render(self, timestamps: bool) -> bytes:
        """The bytes ``kubectl logs`` shows for this line."""
        body = self.content + (b"\n" if self.full else b"")
        return (self.timestamp.encode() + b" " + body) if timestamps else body


def parse_line(raw: bytes) -> LogLine | None:
    """Parse ``<time> <stream> <F|P> <content>`` (the trailing newline removed)."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3:
        return None
    content = parts[3] if len(parts) == 4 else b""
    return LogLine(parts[0].decode(), parts[1].decode(), parts[2] == b"F", content)


def parse_timestamp(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp (with up to nanosecond precision)."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return dt.datetime.fromisoformat(text)


@dataclass(frozen=True)
class LogQuery:
    """The query parameters of a containerLogs request."""

    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    timestamps: bool = False
    previous: bool = False
    since: dt.datetime | None = None

    @classmethod
    def from_params(cls, params: dict[str, str], now: dt.datetime) -> LogQuery:
        """Parse the request's parameters; raises ValueError on bad values."""

        def flag(name: str) -> bool:
            return params.get(name, "false").lower() in ("true", "1")

        def number(name: str) -> int | None:
            if params.get(name) in (None, ""):
                return None
            value = int(params[name])
            if value < 0:
                raise ValueError(f"{name} must not be negative")
            return value

        since: dt.datetime | None = None
        since_seconds = number("sinceSeconds")
        if since_seconds is not None:
            since = now - dt.timedelta(seconds=since_seconds)
        elif params.get("sinceTime"):
            since = parse_timestamp(params["sinceTime"])
        return cls(
            follow=flag("follow"),
            tail_lines=number("tailLines"),
            limit_bytes=number("limitBytes"),
            timestamps=flag("timestamps"),
            previous=flag("previous"),
            since=since,
        )


def select_lines(raw_lines: list[bytes], query: LogQuery) -> Iterator[LogLine]:
    """Apply sinceTime/sinceSeconds and tailLines to already written lines."""
    lines = [line for line in (parse_line(r) for r in raw_lines) if line is not None]
    if query.since is not None:
        since = query.since
        lines = [line for line in lines if parse_timestamp(line.timestamp) >= since]
    if query.tail_lines is not None:
        lines = lines[-query.tail_lines :] if query.tail_lines else []
    return iter(lines)


class LogServer:
    """An aiohttp application serving ``/containerLogs`` and ``/healthz`` over mutual TLS."""

    def __init__(self, locator: LogLocator) -> None:
        self.locator = locator
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self.logs)
        self.runner: web.AppRunner | None = None

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness of the node agent."""
        return web.Response(text="ok")

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """Stream a container's log the way the kubelet does."""
        namespace = request.match_info["namespace"]
        pod = request.match_info["pod"]
        container = request.match_info["container"]
        try:
            query = LogQuery.from_params(dict(request.query), dt.datetime.now(dt.UTC))
        except ValueError as exc:
            return web.Response(status=400, text=f"invalid query: {exc}\n")
        found = self.locator.find_log(namespace, pod, container, query.previous)
        if found is None:
            what = "previous terminated container" if query.previous else "container"
            return web.Response(
                status=404,
                text=f'{what} "{container}" in pod "{pod}" in namespace "{namespace}" not found\n',
            )
        path, closed = found
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        budget = query.limit_bytes

        async def emit(line: LogLine) -> bool:
            nonlocal budget
            data = line.render(query.timestamps)
            if budget is not None:
                data = data[:budget]
                budget -= len(data)
            await response.write(data)
            return budget is None or budget > 0

        with path.open("rb") as fh:
            written = fh.read()
            complete, _, partial = written.rpartition(b"\n")
            raw_lines = complete.split(b"\n") if complete else []
            for line in select_lines(raw_lines, query):
                if not await emit(line):
                    return response
            if query.follow:
                while True:
                    finished = closed.is_set()
                    chunk = fh.read()
                    if chunk:
                        partial += chunk
                        *new_lines, partial = partial.split(b"\n")
                        for raw in new_lines:
                            parsed = parse_line(raw)
                            if parsed is not None and not await emit(parsed):
                                return response
                    elif finished:
                        break
                    else:
                        await asyncio.sleep(FOLLOW_POLL_SECONDS)
        await response.write_eof()
        return response

    async def start(self, port: int, cert: Path, key: Path, client_ca: Path) -> None:
        """Listen on 127.0.0.1:port with TLS, requiring client certificates."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=context)
        await site.start()
        log.info("Started the log server on https://127.0.0.1:%d.", port)

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()
