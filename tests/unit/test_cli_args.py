"""The kumulus CLI's command line: sub-commands, common options and inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kumulus.cli import main
from kumulus.cli.args import (
    UsageError,
    build_inputs,
    build_parser,
    parse_input,
    parse_selector,
    parse_value,
)
from kumulus.cli.commands import execution_manifest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Kumulus", "Kumulus"),
        ("5", 5),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ('"5"', "5"),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("01234", "01234"),  # not JSON: stays a string
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_input_values_are_json_when_they_parse(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_input_splits_at_the_first_equals_sign() -> None:
    assert parse_input("query=a=b") == ("query", "a=b")
    assert parse_input(" who =World") == ("who", "World")


@pytest.mark.parametrize("bad", ["novalue", "=x", ""])
def test_input_without_key_or_equals_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="key=value"):
        parse_input(bad)


def test_inputs_file_then_inputs_override(tmp_path: Path) -> None:
    f = tmp_path / "in.json"
    f.write_text(json.dumps({"who": "file", "n": 1, "keep": [1]}))
    assert build_inputs(str(f), ["who=cli", "n=2"]) == {"who": "cli", "n": 2, "keep": [1]}


def test_inputs_file_may_be_yaml(tmp_path: Path) -> None:
    f = tmp_path / "in.yaml"
    f.write_text("who: yaml\nlist:\n  - 1\n")
    assert build_inputs(str(f), None) == {"who": "yaml", "list": [1]}


def test_inputs_file_must_hold_an_object(tmp_path: Path) -> None:
    f = tmp_path / "in.json"
    f.write_text("[1, 2]")
    with pytest.raises(UsageError, match="must hold an object, not list"):
        build_inputs(str(f), None)


def test_missing_inputs_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Cannot read --inputs-file"):
        build_inputs(str(tmp_path / "nope.json"), None)


def test_common_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "team-a", "-o", "json", "list", "flows"])
    after = parser.parse_args(["list", "flows", "-n", "team-a", "-o", "json"])
    for args in (before, after):
        assert (args.namespace, args.output, args.kind) == ("team-a", "json", "flows")
    # Not given anywhere: the defaults.
    plain = parser.parse_args(["list"])
    assert (plain.namespace, plain.output, plain.kind) == (None, "table", "executions")


def test_run_arguments() -> None:
    args = build_parser().parse_args(
        ["run", "hello", "--input", "a=1", "-i", "b=x", "--inputs-file", "f.json", "--wait"]
    )
    assert args.flow == "hello"
    assert args.input == ["a=1", "b=x"]
    assert args.inputs_file == "f.json"
    assert args.wait and not args.logs


def test_unknown_output_format_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["list", "-o", "xml"])
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_control_commands_take_several_executions() -> None:
    args = build_parser().parse_args(["cancel", "a", "b"])
    assert (args.command, args.executions) == ("cancel", ["a", "b"])


def test_execution_manifest_generates_a_name_from_the_flow() -> None:
    body = execution_manifest("hello", {"who": "x"}, None, None)
    assert body == {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Execution",
        "metadata": {"generateName": "hello-"},
        "spec": {"type": "FLOW", "flowRef": {"name": "hello"}, "inputs": {"who": "x"}},
    }
    named = execution_manifest("hello", {}, "run-1", "development")
    assert named["metadata"] == {"name": "run-1"}
    assert named["spec"] == {"type": "FLOW", "flowRef": {"name": "hello"}, "mode": "development"}


def test_selector_parsing() -> None:
    labels = parse_selector("a=b,c!=d,e")
    assert labels is not None
    assert labels["a"] == "b"
    assert set(labels) == {"a", "c", "e"}
    assert parse_selector(None) is None


def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The usage error is found before any cluster is contacted.
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["run", "hello", "--input", "novalue"]) == 2
    assert "--input needs key=value" in capsys.readouterr().err


def test_missing_kubeconfig_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["list"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"Error: KUBECONFIG={tmp_path / 'missing'} names no existing file."
    )


def test_unreachable_cluster_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "config"
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: team-a}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: Cannot reach the cluster at https://127.0.0.1:1")


def test_help_lists_every_command() -> None:
    out = io.StringIO()
    build_parser().print_help(out)
    for command in ("run", "get", "list", "logs", "cancel", "pause", "resume", "flow"):
        assert command in out.getvalue()
