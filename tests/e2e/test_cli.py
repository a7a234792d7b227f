"""The ``kumulus`` CLI against the dev cluster and the session operator.

Runs the CLI as a user would (``python -m kumulus.cli``, the console script's code, in a
subprocess with ``KUBECONFIG``): run with ``--wait``/``--logs``, list and get with the tree of
children, pause/resume/cancel, logs, and its error messages (not found, forbidden).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
Kubectl = Callable[..., subprocess.CompletedProcess[str]]

SLEEPER = """
apiVersion: kumulus.dev/v1alpha1
kind: Flow
metadata:
  name: sleeper
spec:
  code: |
    def handler(system, this):
        for i in range(600):
            this.save(message=f'step {i}')
            this.sleep(0.5)
        return this.success('slept')
"""


@pytest.fixture
def cli(kubeconfig: Path, namespace: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args)`` runs ``kumulus -n <namespace> *args`` and returns the finished process."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(*args: str, input: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kumulus.cli", "-n", namespace, *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def test_run_wait_list_get_logs(
    operator: Any,
    kubectl: Kubectl,
    namespace: str,
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/01-hello-flow/flow.yaml"))
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples/02-parallel-children/flow.yaml"))

    # Example 01 with an input from the command line, waiting with live status.
    done = cli("run", "hello", "--input", "who=CLI", "--wait")
    assert done.returncode == 0, done.stderr
    assert "Succeeded after" in done.stdout
    assert '"greeting": "Hello, CLI!"' in done.stdout
    assert "Created Execution" in done.stderr
    assert "  Succeeded  " in done.stderr  # the last live status line
    name = done.stderr.split("Created Execution ", 1)[1].split(".\n", 1)[0].split("/", 1)[1]

    # Inputs from a file (here stdin); -o json gives the finished Execution.
    as_json = cli(
        "run", "hello", "--inputs-file", "-", "--wait", "-o", "json", input='{"who": "stdin"}'
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["status"]["outputs"] == {"greeting": "Hello, stdin!"}

    # Example 02: --logs follows the children's Pods too.
    tree = cli("run", "sum-of-squares", "--name", "sq", "--input", "numbers=[1, 2, 3]", "--logs")
    assert tree.returncode == 0, tree.stderr
    for child in ("sq-1-1", "sq-1-2", "sq-1-3"):
        assert f"[{child}] " in tree.stdout, tree.stdout
    assert "[sq] " in tree.stdout
    assert '"sum": 14' in tree.stdout

    # list draws children as a tree below their parent.
    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "TYPE", "FLOW", "PHASE"]
    rows = [line.split()[0:2] for line in lines[1:]]
    assert ["sq", "FLOW"] in rows
    assert any(line.startswith("├─ sq-1-1 ") for line in lines), listed.stdout
    assert any(line.startswith("└─ sq-1-3 ") for line in lines), listed.stdout
    flat = cli("list", "executions", "--flat", "-o", "name")
    assert "execution.kumulus.dev/sq-1-2" in flat.stdout.splitlines()

    # get shows one Execution in detail with its children.
    got = cli("get", "execution", "sq")
    assert got.returncode == 0, got.stderr
    assert "Phase:        Succeeded" in got.stdout
    assert 'Outputs:      {"children": 3, "sum": 14}' in got.stdout
    assert "  └─ sq-1-3" in got.stdout
    as_yaml = yaml.safe_load(cli("get", "ex", "sq", "-o", "yaml").stdout)
    assert as_yaml["metadata"]["name"] == "sq" and "managedFields" not in as_yaml["metadata"]
    flows = cli("list", "flows")
    assert [line.split()[0:2] for line in flows.stdout.splitlines()[1:]] == [
        ["hello", "True"],
        ["square", "True"],
        ["sum-of-squares", "True"],
    ]

    # logs prints the Pod log, here the JSON line of this.log().
    logs = cli("logs", name)
    assert logs.returncode == 0, logs.stderr
    entries = [
        json.loads(line.split("] ", 1)[1])
        for line in logs.stdout.splitlines()
        if line.startswith(f"[{name}] {{")
    ]
    assert [e.get("message") for e in entries] == ["Greeting"]


def test_pause_resume_cancel_and_exit_codes(
    operator: Any,
    kubectl: Kubectl,
    kubeconfig: Path,
    namespace: str,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    wait_phase: Callable[..., dict[str, Any]],
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=SLEEPER)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    # A waiting `kumulus run` in the background: it must end with exit code 3 (Cancelled).
    waiting = subprocess.Popen(
        [sys.executable, "-m", "kumulus.cli", "-n", namespace, "run", "sleeper", "--name",
         "sl", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_phase("sl", namespace, "Running")
        paused = cli("pause", "sl")
        assert (paused.returncode, paused.stdout) == (0, "execution.kumulus.dev/sl paused\n")
        wait_phase("sl", namespace, "Paused")
        resumed = cli("resume", "sl")
        assert resumed.returncode == 0, resumed.stderr
        wait_phase("sl", namespace, "Running")
        cancelled = cli("cancel", "sl")
        assert (cancelled.returncode, cancelled.stdout) == (
            0,
            "execution.kumulus.dev/sl cancelled\n",
        )
        wait_phase("sl", namespace, "Cancelled")
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 3, err
    assert "Execution " + namespace + "/sl Cancelled after" in out
    # Controlling an ended Execution is refused with a reason.
    again = cli("cancel", "sl")
    assert again.returncode == 1
    assert again.stderr == f"Execution {namespace}/sl already ended (Cancelled).\n"


def test_clear_errors(
    kubectl: Kubectl,
    kubeconfig: Path,
    namespace: str,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    missing = cli("get", "flow", "missing")
    assert (missing.returncode, missing.stderr) == (
        1,
        f"Error: Flow {namespace}/missing not found.\n",
    )
    nothing = cli("logs", "missing")
    assert nothing.stderr == f"Error: Execution {namespace}/missing not found.\n"

    # A ServiceAccount without permissions: "Forbidden" with the API server's reason.
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = kubectl("create", "token", "nobody", "-n", namespace, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        ca = Path(cluster["certificate-authority"])
        cluster["certificate-authority"] = str(ca if ca.is_absolute() else kubeconfig.parent / ca)
    restricted = tmp_path / "nobody.kubeconfig"
    restricted.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "dev", "cluster": cluster}],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "nobody",
                        "context": {"cluster": "dev", "user": "nobody", "namespace": namespace},
                    }
                ],
                "current-context": "nobody",
            }
        )
    )
    forbidden = subprocess.run(
        [sys.executable, "-m", "kumulus.cli", "--kubeconfig", str(restricted), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert forbidden.returncode == 1
    assert forbidden.stderr.startswith("Error: Forbidden: ")
    assert f'"system:serviceaccount:{namespace}:nobody" cannot list' in forbidden.stderr
