"""The CLI's command line: sub-commands, common options and the parsing of inputs.

Kept apart from the commands so argument parsing and input handling are unit tested without a
cluster. Common options (``-n``, ``--kubeconfig``, ``--context``, ``-o``) work before or after
the sub-command, as with kubectl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from kumulus.cli.render import OUTPUTS

DESCRIPTION = """\
Run and inspect Kumulus executions (kumulus.dev/v1alpha1) with your kubeconfig, like kubectl.

examples:
  kumulus run hello --input who=Kumulus --wait
  kumulus run report --inputs-file inputs.json --wait --logs
  kumulus list                                 # executions, children as a tree
  kumulus get execution hello-x7k2p            # details and the tree of children
  kumulus logs hello-x7k2p -f                  # follows the child executions too
  kumulus cancel hello-x7k2p
  kumulus flow pack flows/report.py > flow.yaml
"""

EXIT_CODES = """\
exit codes: 0 success (for run --wait: the execution Succeeded), 1 error or the execution
Failed, 2 bad usage, 3 the execution was Cancelled.
"""


class UsageError(Exception):
    """Bad arguments found after argparse (exit code 2)."""


def parse_value(text: str) -> Any:
    """``text`` as JSON when it parses (``5``, ``true``, ``[1,2]``, ``"5"``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_input(item: str) -> tuple[str, Any]:
    """``key=value`` (value as in :func:`parse_value`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--input needs key=value, got {item!r}.")
    return key.strip(), parse_value(value)


def load_inputs_file(path: str) -> dict[str, Any]:
    """A JSON (or YAML) object from a file, or from stdin for ``-``."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise UsageError(f"Cannot read --inputs-file {path}: {err.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"--inputs-file {path} is not JSON or YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--inputs-file {path} must hold an object, not {type(data).__name__}.")
    return data


def build_inputs(inputs_file: str | None, items: list[str] | None) -> dict[str, Any]:
    """The inputs of ``run``: the file's object, then each ``--input`` over it."""
    inputs = load_inputs_file(inputs_file) if inputs_file else {}
    for item in items or []:
        key, value = parse_input(item)
        inputs[key] = value
    return inputs


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes; on sub-commands they only override when given."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's)"
    )
    parser.add_argument(
        "--kubeconfig", default=default(None), help="kubeconfig file (default: $KUBECONFIG)"
    )
    parser.add_argument("--context", default=default(None), help="kubeconfig context to use")
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=default("table"),
        help="output format: table (default), json, yaml or name",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kumulus",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, suppress=True)
        return p

    run = command("run", "Start an Execution of a Flow.")
    run.add_argument("flow", metavar="FLOW", help="name of the Flow")
    run.add_argument(
        "-i",
        "--input",
        action="append",
        metavar="KEY=VALUE",
        help="an input (repeatable); VALUE is JSON when it parses as JSON, else a string",
    )
    run.add_argument(
        "-f", "--inputs-file", metavar="FILE", help="a JSON or YAML object of inputs ('-': stdin)"
    )
    run.add_argument("--name", help="name of the Execution (default: <flow>-<random>)")
    run.add_argument(
        "--mode", choices=("productive", "development"), help="execution mode (default productive)"
    )
    run.add_argument("--wait", action="store_true", help="wait for the end, showing live status")
    run.add_argument(
        "--logs",
        action="store_true",
        help="stream the logs of it and its children (implies --wait)",
    )
    run.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up waiting after SECONDS (exit 1)"
    )

    get = command("get", "Show Executions, Flows or Schedules (one in detail when named).")
    get.add_argument("kind", metavar="KIND", help="executions (ex, kex), flows or schedules")
    get.add_argument("name", metavar="NAME", nargs="?", help="one object to show in detail")
    _list_options(get)

    lst = command("list", "List Executions (as a tree of children), Flows or Schedules.")
    lst.add_argument(
        "kind", metavar="KIND", nargs="?", default="executions", help="default executions"
    )
    _list_options(lst)

    logs = command("logs", "Print the logs of an Execution and of its child executions.")
    logs.add_argument("execution", metavar="EXECUTION")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until it ends")
    logs.add_argument(
        "--no-children", action="store_true", help="only the execution itself, not its children"
    )

    for name, help in (
        ("cancel", "Cancel Executions (their Pods are stopped; children are cancelled too)."),
        ("pause", "Pause Executions at their next flow API call."),
        ("resume", "Resume paused Executions (or start ones created with run=false)."),
    ):
        p = command(name, help)
        p.add_argument("executions", metavar="EXECUTION", nargs="+")

    flow = command("flow", "Work with Flow sources.")
    flow_sub = flow.add_subparsers(dest="flow_command", metavar="SUBCOMMAND", required=True)
    pack = flow_sub.add_parser(
        "pack",
        help="Print a Flow manifest for a .py file (for GitOps).",
        description="Print a Flow manifest (YAML) whose spec.code is the file's source; the "
        "description defaults to the module docstring's first paragraph, on one line.",
    )
    _common(pack, suppress=True)
    pack.add_argument("file", metavar="FILE.py")
    pack.add_argument("--name", help="Flow name (default: the file name, in DNS form)")
    pack.add_argument("--handler", default="handler", help="handler function (default handler)")
    pack.add_argument("--description", help="spec.description (default: from the docstring)")
    pack.add_argument(
        "--config-map",
        metavar="NAME",
        help="emit a ConfigMap NAME with the source and a Flow with spec.codeFrom instead",
    )
    return parser


def _list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("-l", "--selector", help="label selector, e.g. kumulus.dev/parent=x")
    p.add_argument("--flat", action="store_true", help="executions as a flat list, not a tree")


def parse_selector(selector: str | None) -> dict[str, Any] | None:
    """``a=b,c`` as lightkube labels (``{"a": "b", "c": ...}``): equality and existence only."""
    if not selector:
        return None
    from lightkube.operators import exists, not_equal

    labels: dict[str, Any] = {}
    for part in selector.split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            key, value = part.split("!=", 1)
            labels[key.strip()] = not_equal(value.strip())
        elif "=" in part:
            key, value = part.split("=", 1)
            labels[key.strip().rstrip("=")] = value.strip().lstrip("=")
        else:
            labels[part] = exists()
    return labels
