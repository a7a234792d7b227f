"""One run of one container as a local process group, with its log file and memory watch.

A kubelet delegates this to a container runtime; the dev node has none, so each container
becomes a process in its own session (so the whole tree can be signalled), its stdout and stderr
go line by line into a CRI-format log file (``<time> <stream> <F|P> <text>``) which the log
server reads, and its resident memory is polled against the container's memory limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from kumulus.devcluster.nodeagent.status import Terminated, now_iso

log = logging.getLogger(__name__)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MEMORY_POLL_SECONDS = 0.5
_READ_CHUNK = 64 * 1024


def log_timestamp() -> str:
    """RFC 3339 with nanosecond-style precision, as the CRI log format uses."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def session_members(session_id: int) -> list[int]:
    """The pids of every process in a session (a container's process tree)."""
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is the state, [1] ppid, [2] pgrp, [3] session.
        if len(fields) > 3 and fields[3] == str(session_id) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def session_rss_bytes(session_id: int) -> int:
    """The summed resident set size of a session's processes."""
    total = 0
    for pid in session_members(session_id):
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def signal_session(session_id: int, sig: int) -> None:
    """Send a signal to the process group of a container (and any stragglers of its session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session_id, sig)
    for pid in session_members(session_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def resolve_executable(argv0: str, path: str) -> str | None:
    """The executable a container's argv[0] names, searched in the container's PATH."""
    if "/" in argv0:
        return argv0 if os.access(argv0, os.X_OK) and not os.path.isdir(argv0) else None
    return shutil.which(argv0, path=path)


class ContainerProcess:
    """A started container process: its pid, log file, memory watch and final state."""

    def __init__(
        self,
        *,
        label: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        memory_limit: int | None,
    ) -> None:
        self.label = label
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.memory_limit = memory_limit
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = now_iso()
        self.oom_killed = False
        self.log_closed = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The pid of the container's main process (also its session and group id)."""
        return self.proc.pid if self.proc else None

    @property
    def container_id(self) -> str | None:
        """The containerID reported in the Pod status."""
        return f"kumulus://{self.proc.pid}" if self.proc else None

    async def start(self) -> Terminated | None:
        """Start the process; a StartError is returned as the container's terminated state."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        executable = resolve_executable(self.argv[0], self.env.get("PATH", ""))
        if executable is None:
            self.log_closed.set()
            return Terminated(
                exit_code=128,
                reason="StartError",
                message=f'exec: "{self.argv[0]}": executable file not found in $PATH',
                finished_at=now_iso(),
                started_at=None,
            )
        try:
            self.cwd.mkdir(parents=True, exist_ok=True)
            self.proc = await asyncio.create_subprocess_exec(
                executable,
                *self.argv[1:],
                env=self.env,
                cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self.log_closed.set()
            return Terminated(
                exit_code=128,
                reason="StartError",
                message=f'exec: "{self.argv[0]}": {exc.strerror or exc}',
                finished_at=now_iso(),
            )
        self.started_at = now_iso()
        log.info("Started process %d for container %s.", self.proc.pid, self.label)
        return None

    async def _pump(self, stream: asyncio.StreamReader, name: str, out: _LogWriter) -> None:
        pending = b""
        while True:
            chunk = await stream.read(_READ_CHUNK)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                out.write(name, "F", line)
            if len(pending) >= _READ_CHUNK:
                out.write(name, "P", pending)
                pending = b""
        if pending:
            out.write(name, "P", pending)

    async def _watch_memory(self) -> None:
        assert self.proc is not None and self.memory_limit is not None
        while self.proc.returncode is None:
            rss = await asyncio.to_thread(session_rss_bytes, self.proc.pid)
            if rss > self.memory_limit:
                self.oom_killed = True
                log.info(
                    "Killed container %s: RSS %d bytes over its memory limit %d.",
                    self.label,
                    rss,
                    self.memory_limit,
                )
                signal_session(self.proc.pid, signal.SIGKILL)
                return
            await asyncio.sleep(MEMORY_POLL_SECONDS)

    async def wait(self) -> Terminated:
        """Wait for the process to end, copying its output to the log file."""
        assert self.proc is not None and self.proc.stdout and self.proc.stderr
        watcher = (
            asyncio.create_task(self._watch_memory()) if self.memory_limit is not None else None
        )
        with _LogWriter(self.log_path) as out:
            pumps = asyncio.gather(
                self._pump(self.proc.stdout, "stdout", out),
                self._pump(self.proc.stderr, "stderr", out),
            )
            try:
                await self.proc.wait()
                # A container ends with its main process: take the rest of its tree down.
                signal_session(self.proc.pid, signal.SIGKILL)
                try:
                    await asyncio.wait_for(pumps, timeout=5)
                except TimeoutError:
                    log.warning("Gave up reading the output of container %s.", self.label)
            finally:
                if watcher:
                    watcher.cancel()
                if self.proc.returncode is None:
                    signal_session(self.proc.pid, signal.SIGKILL)
                pumps.cancel()
                self.log_closed.set()
        code = self.proc.returncode
        assert code is not None
        finished = now_iso()
        container_id = self.container_id
        if self.oom_killed:
            return Terminated(137, "OOMKilled", finished, self.started_at, "", 9, container_id)
        if code < 0:
            return Terminated(
                128 - code, "Error", finished, self.started_at, "", -code, container_id
            )
        reason = "Completed" if code == 0 else "Error"
        return Terminated(code, reason, finished, self.started_at, "", None, container_id)

    def signal(self, sig: int) -> None:
        """Signal the container's whole process group."""
        if self.proc is not None and self.proc.returncode is None:
            signal_session(self.proc.pid, sig)


class _LogWriter:
    """Appends CRI-format lines to a container's log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> _LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, stream: str, tag: str, data: bytes) -> None:
        self.fh.write(f"{log_timestamp()} {stream} {tag} ".encode() + data + b"\n")
