"""``kumulus logs``: the logs of an Execution and of every child execution below it.

A flow's work is spread over Pods: one per attempt of the execution and of each child FLOW or
SCRIPT it starts. This module finds them (Executions by owner reference, Pods by owner
reference to those Executions) and prints their logs through the API, each line prefixed with
its execution's name. Following (``-f``) streams every Pod in a thread of its own, picks up
children and retries as they appear, and ends once the whole tree has ended and its streams
are drained.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from lightkube import ApiError

from kumulus.cli.kube import CliError, Execution, Kube, Obj, transport_errors
from kumulus.cli.render import descendants, is_terminal

POLL_SECONDS = 1.0
#: After the tree ended, how long to wait for log streams to drain before giving up on them.
DRAIN_SECONDS = 15.0
POD_LABEL = "kumulus.dev/execution"


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def owner_uid(pod: Obj) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Execution" and ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _pod_key(pod: Obj) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


class LogPrinter:
    """Writes lines with an ``[execution]`` prefix, one thread at a time."""

    def __init__(self, out: IO[str], prefix: bool = True, err: IO[str] | None = None) -> None:
        self.out = out
        self.err = err or sys.stderr
        self.prefix = prefix
        self.lock = threading.Lock()

    def note(self, text: str) -> None:
        """A remark about the logs (not a log line), on stderr."""
        with self.lock:
            self.err.write(text + "\n")
            self.err.flush()

    def line(self, execution: str, text: str) -> None:
        text = text.rstrip("\n")
        with self.lock:
            self.out.write(f"[{execution}] {text}\n" if self.prefix else text + "\n")
            self.out.flush()


class LogFollower:
    """Prints (and with ``follow``, streams) the logs of an execution tree."""

    def __init__(
        self,
        kube: Kube,
        root: str,
        printer: LogPrinter,
        *,
        children: bool = True,
        follow: bool = False,
    ) -> None:
        self.kube = kube
        self.root = root
        self.printer = printer
        self.children = children
        self.follow = follow
        self.streams: dict[str, threading.Thread] = {}
        self.stop = threading.Event()

    def tree(self) -> list[Obj]:
        """The root Execution and (unless ``children`` is off) every execution below it."""
        root = self.kube.get(Execution, self.root)
        if not self.children:
            return [root]
        others = self.kube.list_objects(Execution, labels={"kumulus.dev/parent": _exists()})
        return descendants(root, others)

    def pods(self, tree: list[Obj]) -> list[tuple[Obj, str]]:
        """The tree's runner Pods with their execution's name, oldest first."""
        names = {_uid(e): _name(e) for e in tree}
        found = []
        for pod in self.kube.pods({POD_LABEL: _exists()}):
            owner = owner_uid(pod)
            if owner in names:
                found.append((pod, names[owner]))
        found.sort(key=lambda item: _pod_key(item[0]))
        return found

    def print_once(self) -> None:
        """Print the logs so far of every Pod in the tree, Pod after Pod."""
        pods = self.pods(self.tree())
        if not pods:
            self.printer.note(f"No Pods (left) of Execution {self.kube.namespace}/{self.root}.")
        for pod, execution in pods:
            try:
                for line in self.kube.pod_log(_name(pod), follow=False):
                    self.printer.line(execution, line)
            except ApiError as err:
                # A Pod that has not started has no log yet; say so instead of failing.
                self.printer.line(execution, f"(no log of Pod {_name(pod)}: {err.status.message})")

    def _stream(self, pod: Obj, execution: str) -> None:
        """Stream one Pod's log until its container has ended and its log is read to the end.

        A follow request can end early (the container has not started yet, or a connection
        dropped), so the stream is repeated, skipping the lines already printed, until a
        stream that began after the container ended has been read.
        """
        name = _name(pod)
        printed = 0
        while not self.stop.is_set():
            finished = self._container_ended(name)
            if finished is None:
                return  # the Pod is gone
            try:
                for seen, line in enumerate(self.kube.pod_log(name, follow=not finished), 1):
                    if seen > printed:
                        self.printer.line(execution, line)
                        printed = seen
                if finished:
                    return
            except ApiError as err:
                if int(err.status.code or 0) == 404:
                    return
                # 400 while the container is being created: try again shortly.
            except transport_errors():
                pass
            if self.stop.wait(0.5):
                return

    def _container_ended(self, pod: str) -> bool | None:
        """Whether the Pod's containers have all ended (None: the Pod no longer exists)."""
        try:
            obj = self.kube.pod(pod)
        except CliError:
            return None
        status = obj.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return True
        containers = status.get("containerStatuses") or []
        return bool(containers) and all(
            (c.get("state") or {}).get("terminated") for c in containers
        )

    def run(self, done: Callable[[], bool] | None = None) -> None:
        """Follow until the tree (and ``done()``, if given) ended and the streams drained."""
        if not self.follow:
            self.print_once()
            return
        drain_deadline: float | None = None
        try:
            while True:
                tree = self.tree()
                for pod, execution in self.pods(tree):
                    key = _uid(pod)
                    if key not in self.streams:
                        thread = threading.Thread(
                            target=self._stream, args=(pod, execution), daemon=True
                        )
                        self.streams[key] = thread
                        thread.start()
                ended = all(is_terminal(e) for e in tree) and (done is None or done())
                if ended:
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + DRAIN_SECONDS
                    alive = [t for t in self.streams.values() if t.is_alive()]
                    if not alive or time.monotonic() > drain_deadline:
                        return
                time.sleep(POLL_SECONDS)
        finally:
            self.stop.set()
            for thread in self.streams.values():
                thread.join(timeout=1)


def _exists() -> Any:
    from lightkube.operators import exists

    return exists()
