"""examples/06-gitops: a Flow from a .py file through kustomize, applied with ``kubectl apply -k``.

Checks the GitOps loop end to end: the generated ConfigMap (hash-suffixed name) and the Flow
whose ``codeFrom`` kustomize rewrote; the Flow becomes Ready and an Execution runs the file's
code; a change of the file is a new ConfigMap and a new Flow generation, and the next
Execution runs the new code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "06-gitops"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def wait_flow_ready(kubectl: Kubectl, namespace: str, generation: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    flow: dict[str, Any] = {}
    while time.monotonic() < deadline:
        flow = json.loads(
            kubectl("get", "flow", "word-count", "-n", namespace, "-o", "json").stdout
        )
        status = flow.get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        if (
            status.get("observedGeneration") == generation
            and ready
            and ready[0]["status"] == "True"
        ):
            return flow
        time.sleep(0.25)
    pytest.fail(f"Flow word-count not Ready at generation {generation}: {flow.get('status')}")


def run_once(
    kubectl: Kubectl, namespace: str, wait_phase: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    created = kubectl(
        "create", "-n", namespace, "-f", str(EXAMPLE / "execution.yaml"), "-o", "name"
    )
    name = created.stdout.strip().split("/", 1)[1]
    done = wait_phase(name, namespace, ("Succeeded", "Failed", "Cancelled"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    return done


def test_kustomize_flow_from_a_python_file(
    operator: Any,
    kubectl: Kubectl,
    namespace: str,
    wait_phase: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    kubectl("apply", "-k", str(EXAMPLE), "-n", namespace)
    flow = wait_flow_ready(kubectl, namespace, 1)
    ref = flow["spec"]["codeFrom"]["configMapKeyRef"]
    assert ref["name"].startswith("gitops-flows-") and ref["name"] != "gitops-flows"
    assert ref["key"] == "word_count.py"
    code = json.loads(
        kubectl("get", "configmap", ref["name"], "-n", namespace, "-o", "json").stdout
    )["data"]["word_count.py"]
    assert code == (EXAMPLE / "flows" / "word_count.py").read_text()

    done = run_once(kubectl, namespace, wait_phase)
    assert done["status"]["outputs"] == {"words": 12, "distinct": 9, "top": "the"}

    # A change in Git: the same kustomization with an edited flow file.
    changed = tmp_path / "06-gitops"
    shutil.copytree(EXAMPLE, changed)
    source = changed / "flows" / "word_count.py"
    source.write_text(source.read_text().replace(".lower()", ".upper()"))
    kubectl("apply", "-k", str(changed), "-n", namespace)
    flow = wait_flow_ready(kubectl, namespace, 2)
    assert flow["spec"]["codeFrom"]["configMapKeyRef"]["name"] != ref["name"]
    done = run_once(kubectl, namespace, wait_phase)
    assert done["status"]["outputs"]["top"] == "THE"
