"""The CLI's commands: run, get, list, logs, cancel, pause, resume and flow pack.

Each command takes the parsed arguments and a :class:`~kumulus.cli.kube.Kube`, writes results
to stdout and progress (live status) to stderr, and returns the process exit code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kumulus import API_VERSION
from kumulus.cli import render
from kumulus.cli.args import UsageError, build_inputs, parse_selector
from kumulus.cli.kube import CliError, Execution, Kube, Obj, kind_of
from kumulus.cli.logs import LogFollower, LogPrinter
from kumulus.cli.pack import PackError, pack_file, to_yaml

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3
EXIT_BY_PHASE = {"Succeeded": EXIT_OK, "Failed": EXIT_ERROR, "Cancelled": EXIT_CANCELLED}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def execution_manifest(
    flow: str, inputs: dict[str, Any], name: str | None, mode: str | None
) -> Obj:
    """The Execution ``kumulus run`` creates (``generateName: <flow>-`` without ``--name``)."""
    meta: Obj = {"name": name} if name else {"generateName": f"{flow[:56]}-"}
    spec: Obj = {"type": "FLOW", "flowRef": {"name": flow}}
    if inputs:
        spec["inputs"] = inputs
    if mode:
        spec["mode"] = mode
    return {"apiVersion": API_VERSION, "kind": "Execution", "metadata": meta, "spec": spec}


class StatusView:
    """Live status on stderr: one rewritten line on a terminal, a line per change otherwise."""

    def __init__(self, err: IO[str], live: bool) -> None:
        self.err = err
        self.live = live
        self.last: tuple[str, ...] = ()

    def show(self, obj: Obj) -> None:
        line = render.status_line(obj, now())
        if self.live:
            self.err.write("\r\033[K" + line)
            self.err.flush()
            return
        # Without a terminal only real changes are printed, not the ticking duration.
        key = render.change_key(obj)
        if key != self.last:
            self.err.write(line + "\n")
            self.err.flush()
            self.last = key

    def finish(self) -> None:
        if self.live:
            self.err.write("\n")
            self.err.flush()


def wait_for_end(
    kube: Kube,
    name: str,
    view: StatusView | None,
    timeout: float | None,
) -> Obj:
    """Watch the Execution until it ends; shows status on ``view``; raises on timeout."""
    events: queue.Queue[Obj | BaseException] = queue.Queue()
    stop = threading.Event()

    def watch() -> None:
        try:
            while not stop.is_set():
                for _event, obj in kube.watch(Execution, name, server_timeout=60):
                    events.put(obj)
                    if stop.is_set() or render.is_terminal(obj):
                        return
        except BaseException as err:  # handed to the waiting thread
            events.put(err)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    current: Obj | None = None
    try:
        while True:
            try:
                item = events.get(timeout=1.0)
            except queue.Empty:
                item = None
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                current = item
            if current is not None and view is not None:
                view.show(current)
            if current is not None and render.is_terminal(current):
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(
                    f"Execution {kube.namespace}/{name} did not end within {timeout:g} s."
                )
    finally:
        stop.set()
        if view is not None:
            view.finish()


def summary(obj: Obj) -> str:
    """What ``run --wait`` prints at the end (table output)."""
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    lines = [
        f"Execution {meta.get('namespace')}/{meta.get('name')} {render.phase(obj)}"
        f" after {render.duration(obj, now()) or '0s'}."
    ]
    if status.get("message"):
        lines.append(f"message: {status['message']}")
    if render.phase(obj) != "Succeeded" and status.get("statusMessage"):
        lines.append("statusMessage: " + str(status["statusMessage"]).rstrip())
    lines.append("outputs: " + json.dumps(status.get("outputs") or {}, indent=2, sort_keys=True))
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace, kube: Kube, out: IO[str], err: IO[str]) -> int:
    inputs = build_inputs(args.inputs_file, args.input)
    body = execution_manifest(args.flow, inputs, args.name, args.mode)
    created = kube.create(Execution, body)
    name = created["metadata"]["name"]
    wait = args.wait or args.logs
    if not wait:
        _print_objects(
            "Execution",
            [created],
            args.output,
            out,
            lambda: f"execution.kumulus.dev/{name} created",
        )
        return EXIT_OK
    err.write(f"Created Execution {kube.namespace}/{name}.\n")
    follower: threading.Thread | None = None
    if args.logs:
        logs = LogFollower(kube, name, LogPrinter(out), follow=True)
        follower = threading.Thread(target=logs.run, daemon=True)
        follower.start()
    view = StatusView(err, live=err.isatty() and not args.logs)
    final = wait_for_end(kube, name, view, args.timeout)
    if follower is not None:
        follower.join(timeout=30)
    if args.output in ("json", "yaml"):
        out.write(render.dump(render.clean(final), args.output) + "\n")
    elif args.output == "name":
        out.write(f"execution.kumulus.dev/{name}\n")
    else:
        out.write(summary(final) + "\n")
    return EXIT_BY_PHASE.get(render.phase(final), EXIT_ERROR)


def _print_objects(
    kind: str, items: list[Obj], output: str, out: IO[str], table: Callable[[], str]
) -> None:
    """As JSON/YAML (one object or a List), ``kind.kumulus.dev/name`` lines, or a table."""
    if output in ("json", "yaml"):
        data = render.clean(items[0]) if len(items) == 1 else render.as_list(items)
        out.write(render.dump(data, output) + "\n")
    elif output == "name":
        for obj in items:
            out.write(f"{kind.lower()}.kumulus.dev/{obj['metadata']['name']}\n")
    else:
        out.write(table() + "\n")


def _table(kind: str, items: list[Obj], args: argparse.Namespace, namespace: str) -> str:
    t = now()
    all_ns = bool(getattr(args, "all_namespaces", False))
    if not items:
        where = "any namespace" if all_ns else f"namespace {namespace}"
        return f"No {kind}s found in {where}."
    if kind == "Execution":
        return render.executions_table(items, t, tree=not args.flat, namespace=all_ns)
    if kind == "Flow":
        return render.flows_table(items, t, namespace=all_ns)
    return render.schedules_table(items, t, namespace=all_ns)


def cmd_list(args: argparse.Namespace, kube: Kube, out: IO[str]) -> int:
    kind, res = kind_of(args.kind)
    labels = parse_selector(args.selector)
    items = kube.list_objects(res, labels=labels, all_namespaces=args.all_namespaces)
    if args.output in ("json", "yaml"):
        out.write(render.dump(render.as_list(items), args.output) + "\n")
    else:
        _print_objects(
            kind, items, args.output, out, lambda: _table(kind, items, args, kube.namespace)
        )
    return EXIT_OK


def cmd_get(args: argparse.Namespace, kube: Kube, out: IO[str]) -> int:
    if args.name is None:
        return cmd_list(args, kube, out)
    kind, res = kind_of(args.kind)
    obj = kube.get(res, args.name)
    if args.output in ("json", "yaml", "name"):
        _print_objects(kind, [obj], args.output, out, lambda: "")
        return EXIT_OK
    t = now()
    if kind == "Execution":
        tree = render.descendants(
            obj, kube.list_objects(Execution, labels=parse_selector("kumulus.dev/parent"))
        )
        out.write(render.describe_execution(obj, tree, t) + "\n")
    else:
        out.write(_table(kind, [obj], args, kube.namespace) + "\n")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, kube: Kube, out: IO[str]) -> int:
    kube.get(Execution, args.execution)  # a clear "not found" before anything else
    follower = LogFollower(
        kube,
        args.execution,
        LogPrinter(out),
        children=not args.no_children,
        follow=args.follow,
    )
    follower.run()
    return EXIT_OK


#: What each control command patches, and the phases in which it makes no sense.
CONTROL = {
    "cancel": ({"desiredState": "Cancelled"}, "cancelled"),
    "pause": ({"desiredState": "Paused"}, "paused"),
    "resume": ({"desiredState": "Running", "run": True}, "resumed"),
}


def cmd_control(args: argparse.Namespace, kube: Kube, out: IO[str], err: IO[str]) -> int:
    patch, verb = CONTROL[args.command]
    code = EXIT_OK
    for name in args.executions:
        try:
            obj = kube.get(Execution, name)
            if render.is_terminal(obj):
                err.write(
                    f"Execution {kube.namespace}/{name} already ended ({render.phase(obj)}).\n"
                )
                code = EXIT_ERROR
                continue
            spec = obj.get("spec") or {}
            if args.command != "cancel" and spec.get("desiredState") == "Cancelled":
                err.write(
                    f"Execution {kube.namespace}/{name} is being cancelled; it cannot be {verb}.\n"
                )
                code = EXIT_ERROR
                continue
            kube.patch(Execution, name, {"spec": patch})
        except CliError as error:
            err.write(f"{error}\n")
            code = EXIT_ERROR
            continue
        out.write(f"execution.kumulus.dev/{name} {verb}\n")
    return code


def cmd_flow_pack(args: argparse.Namespace, out: IO[str]) -> int:
    namespace = getattr(args, "namespace", None)
    try:
        docs = pack_file(
            Path(args.file),
            name=args.name,
            handler=args.handler,
            description=args.description,
            namespace=namespace,
            config_map=args.config_map,
        )
    except PackError as error:
        raise CliError(str(error)) from None
    if args.output == "json":
        data = docs[0] if len(docs) == 1 else render.as_list(docs)
        out.write(render.dump(data, "json") + "\n")
    else:
        out.write(to_yaml(docs))
    return EXIT_OK


def dispatch(
    args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run the parsed command; CliError and UsageError propagate to :func:`kumulus.cli.main`."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.command == "flow":
        return cmd_flow_pack(args, out)
    kube = Kube.connect(args.kubeconfig, args.context, args.namespace)
    try:
        if args.command == "run":
            return cmd_run(args, kube, out, err)
        if args.command == "list":
            return cmd_list(args, kube, out)
        if args.command == "get":
            return cmd_get(args, kube, out)
        if args.command == "logs":
            return cmd_logs(args, kube, out)
        if args.command in CONTROL:
            return cmd_control(args, kube, out, err)
        raise UsageError(f"Unknown command {args.command!r}.")
    finally:
        kube.close()
