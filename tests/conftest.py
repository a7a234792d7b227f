"""Shared fixtures: the repo root and access to the dev cluster for integration/e2e tests.

Integration and e2e tests talk to the real dev cluster (``make cluster-up``); when it is
missing they fail loudly instead of skipping, so a green run always means "tested".
Kept light on purpose: nothing here imports the operator.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from lightkube import Client, KubeConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


class Kubectl(Protocol):
    """Runs kubectl against the dev cluster."""

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def kubeconfig() -> Path:
    """The dev cluster's admin kubeconfig: ``$KUBECONFIG`` or ``<repo>/.devcluster/kubeconfig``."""
    explicit = os.environ.get("KUBECONFIG")
    path = Path(explicit) if explicit else REPO_ROOT / ".devcluster" / "kubeconfig"
    if not path.is_file():
        pytest.fail(f"no dev cluster: run `make cluster-up` (missing {path})")
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    """``kubectl(*args, check=True, input=None)`` -> CompletedProcess with text output."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def run(
        *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    return run


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh, uniquely named namespace, deleted after the test (without waiting)."""
    name = f"kt-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def client(kubeconfig: Path) -> Iterator[Client]:
    """A synchronous lightkube client for the dev cluster."""
    c = Client(config=KubeConfig.from_file(kubeconfig), field_manager="kumulus-tests")
    yield c
    c.close()
