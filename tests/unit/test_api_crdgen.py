"""The generator's driver, its JSON Schema conversion and its rendered files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from kumulus.api import crdgen
from kumulus.api.v1alpha1 import ALL_KINDS, Execution, Flow

pytestmark = pytest.mark.unit


def test_write_then_check_then_detect_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1  # Nothing written yet.
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(crdgen.generate())
    assert "crds/executions.kumulus.dev.yaml" in written
    assert "charts/kumulus/templates/crd-webhooks.yaml" in written
    assert "docs/reference/schedule.md" in written
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0

    crd = tmp_path / "crds/flows.kumulus.dev.yaml"
    crd.write_text(crd.read_text().replace("kflow", "kflw"))
    capsys.readouterr()
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "crds/flows.kumulus.dev.yaml: differs" in err
    assert "+    - kflow" in err
    assert "run `python -m kumulus.api.crdgen`" in err


def test_docs_only(tmp_path: Path) -> None:
    assert crdgen.main(["--root", str(tmp_path), "--docs"]) == 0
    assert {p.parent.name for p in tmp_path.rglob("*.md")} == {"reference"}
    assert not (tmp_path / "crds").exists()


def test_output_is_the_same_in_another_process_with_another_hash_seed() -> None:
    """Set and dict iteration must not leak into the files (a stale-CRD check would flap)."""
    script = "import json; from kumulus.api import crdgen; print(json.dumps(crdgen.generate()))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(other.stdout) == crdgen.generate()


def test_crd_file_parses_to_the_crd() -> None:
    (doc,) = yaml.safe_load_all(crdgen.render_crd(Execution))
    assert doc == crdgen.crd_for(Execution)


def test_kustomization_lists_every_crd() -> None:
    doc = yaml.safe_load(crdgen.render_kustomization())
    assert doc["kind"] == "Kustomization"
    assert doc["resources"] == [f"{k.crd.plural}.kumulus.dev.yaml" for k in ALL_KINDS]


def _render_helm(template: str, enabled: bool, keep: bool) -> str:
    """A tiny stand-in for Helm: resolve the two conditionals the template uses."""
    out: list[str] = []
    stack: list[bool] = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("{{- if .Values.crds."):
            stack.append(enabled if "enabled" in stripped else keep)
        elif stripped == "{{- end }}":
            stack.pop()
        elif all(stack):
            out.append(line)
    assert stack == []
    return "\n".join(out)


def test_chart_template_switches_and_keeps() -> None:
    template = crdgen.render_chart_crd(Flow)
    assert template.startswith("{{- if .Values.crds.enabled }}\n")
    assert template.endswith("{{- end }}\n")
    kept: Any = yaml.safe_load(_render_helm(template, enabled=True, keep=True))
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert {k: v for k, v in kept.items() if k != "metadata"} == {
        k: v for k, v in crdgen.crd_for(Flow).items() if k != "metadata"
    }
    plain: Any = yaml.safe_load(_render_helm(template, enabled=True, keep=False))
    assert "annotations" not in plain["metadata"]
    assert _render_helm(template, enabled=False, keep=True) == ""


def test_reference_page_lists_fields_and_rules() -> None:
    page = crdgen.docs_page_for(Execution)
    assert page.startswith("<!-- Generated")
    assert "# Execution" in page
    assert "| `spec.flowRef.name` | string | Name of the object, in the same namespace." in page
    assert "| `status.runner.result.status` |" in page
    assert "one of `FLOW`, `SCRIPT`, `CONNECTION`, `TASK`; default `FLOW`" in page
    assert "spec.flowRef is required when spec.type is FLOW" in page
    assert "`spec.podTemplate.env[].valueFrom`" in page


class _Union(BaseModel):
    """A model with a union the apiserver could not express."""

    value: int | str | None = Field(None, description="Either.")


class _Ok(BaseModel):
    """A model with the constructs the generator must translate."""

    ratio: float = Field(gt=0, lt=1, description="Strictly between 0 and 1.")
    kind: str = Field("fixed", description="A constant.", json_schema_extra={"const": "fixed"})


def test_unions_other_than_optional_are_refused() -> None:
    with pytest.raises(crdgen.SchemaError, match="unions other than Optional"):
        crdgen.structural_schema(_Union)


def test_exclusive_bounds_and_const() -> None:
    schema = crdgen.structural_schema(_Ok)
    assert schema["description"] == "A model with the constructs the generator must translate."
    ratio = schema["properties"]["ratio"]
    assert ratio == {
        "description": "Strictly between 0 and 1.",
        "exclusiveMaximum": True,
        "exclusiveMinimum": True,
        "maximum": 1,
        "minimum": 0,
        "type": "number",
    }
    assert schema["properties"]["kind"]["enum"] == ["fixed"]
    assert "title" not in schema
