"""``kumulus flow pack``: a Flow manifest from a .py file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kumulus.cli import main
from kumulus.cli.pack import PackError, docstring_summary, flow_name, pack, pack_file, to_yaml

pytestmark = pytest.mark.unit

CODE = '''"""Sends the nightly report.

Longer explanation that is not part of the description.
"""
import flow_api


def handler(system: flow_api.System, this: flow_api.Execution):
    this.log('report')
    return this.success('sent')
'''


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("hello.py", "hello"),
        ("Send_Report.py", "send-report"),
        ("a__b--c.py", "a-b-c"),
        ("v1.2.py", "v1.2"),
    ],
)
def test_flow_name_from_file_name(file: str, name: str) -> None:
    assert flow_name(Path(file)) == name


def test_flow_name_needs_some_letters() -> None:
    with pytest.raises(PackError, match="pass --name"):
        flow_name(Path("___.py"))


def test_description_is_the_docstrings_first_paragraph() -> None:
    assert docstring_summary(CODE) == "Sends the nightly report."
    assert docstring_summary("x = 1\n") is None


def test_pack_inline_code_round_trips_through_yaml() -> None:
    docs = pack(CODE, "report", namespace="team-a", filename="report.py")
    assert docs == [
        {
            "apiVersion": "kumulus.dev/v1alpha1",
            "kind": "Flow",
            "metadata": {"name": "report", "namespace": "team-a"},
            "spec": {"description": "Sends the nightly report.", "code": CODE},
        }
    ]
    text = to_yaml(docs)
    assert "  code: |" in text  # readable literal block, not an escaped string
    assert list(yaml.safe_load_all(text)) == docs


def test_pack_with_a_config_map_uses_code_from() -> None:
    docs = pack(CODE, "report", config_map="report-code", filename="report.py")
    cm, flow = docs
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "report-code"},
        "data": {"report.py": CODE},
    }
    assert flow["spec"]["codeFrom"] == {
        "configMapKeyRef": {"name": "report-code", "key": "report.py"}
    }
    assert "code" not in flow["spec"]


def test_custom_handler_name_is_checked_and_recorded() -> None:
    code = "def main(system, this):\n    pass\n"
    assert pack(code, "x", handler="main")[0]["spec"]["handler"] == "main"
    with pytest.raises(PackError, match="does not define a top-level handler"):
        pack(code, "x")


def test_syntax_errors_are_reported_with_the_line() -> None:
    with pytest.raises(PackError, match=r"bad\.py: Line 2: "):
        pack("def handler(system, this):\nreturn 1 +\n", "bad", filename="bad.py")


def test_bad_names_are_rejected() -> None:
    with pytest.raises(PackError, match="not a valid Flow name"):
        pack(CODE, "Bad_Name")


def test_pack_file_reads_the_file(tmp_path: Path) -> None:
    f = tmp_path / "nightly_report.py"
    f.write_text(CODE)
    assert pack_file(f)[0]["metadata"]["name"] == "nightly-report"
    with pytest.raises(PackError, match="Cannot read"):
        pack_file(tmp_path / "missing.py")


def test_cli_prints_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "hello.py"
    f.write_text(CODE)
    assert main(["flow", "pack", str(f), "--name", "greeter", "--description", "Hi."]) == 0
    (flow,) = yaml.safe_load_all(capsys.readouterr().out)
    assert flow["metadata"] == {"name": "greeter"}
    assert flow["spec"] == {"description": "Hi.", "code": CODE}


def test_cli_reports_pack_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "broken.py"
    f.write_text("def handler(:\n")
    assert main(["flow", "pack", str(f)]) == 1
    assert capsys.readouterr().err.startswith("Error: broken.py: Line 1: ")


def test_pack_of_the_gitops_example_matches_its_flow_manifest() -> None:
    # examples/06-gitops: what `flow pack --config-map` prints is what kustomize builds
    # (before kustomize appends the content hash to the ConfigMap's name).
    example = Path(__file__).resolve().parents[2] / "examples" / "06-gitops"
    cm, flow = pack_file(
        example / "flows" / "word_count.py", name="word-count", config_map="gitops-flows"
    )
    assert flow == yaml.safe_load((example / "flow.yaml").read_text())
    assert cm["data"] == {"word_count.py": (example / "flows" / "word_count.py").read_text()}
