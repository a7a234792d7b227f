"""e2e fixtures: CRDs + RBAC installed, the real operator running as a subprocess.

The ``operator`` session fixture installs the CRDs from ``crds/`` (server-side apply, waits for
``Established``), the runner and operator ClusterRoles from ``config/rbac/``, and runs
``python -m kopf run -m kumulus.handlers --all-namespaces --standalone`` against the dev
cluster with its log in a file (printed when a test fails). Helpers: ``apply`` (a manifest dict,
list or YAML text), ``wait_phase`` (poll an Execution until its phase is one of the given),
``get_execution``. Servers: ``postgres_server`` and ``ssh_server`` (session, from
``servers.py``) and ``http`` (per module, from ``example_03.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.example_03 import http  # noqa: F401 - module fixture
from tests.e2e.servers import postgres_server, ssh_server  # noqa: F401 - session fixtures
from tests.e2e.webhook_service import webhook_service  # noqa: F401 - session fixture
from tests.local_servers import free_port

from kumulus.devcluster.dev import install_kumulus

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("Succeeded", "Failed", "Cancelled")
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


class Operator:
    """The operator subprocess; ``kill()`` (SIGKILL) and ``start()`` for restart tests."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        """The operator's ``/metrics`` (``KUMULUS_METRICS_PORT``, a free loopback port)."""
        return f"http://127.0.0.1:{self.env['KUMULUS_METRICS_PORT']}/metrics"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "-m",
                "kumulus.handlers",
                "--all-namespaces",
                "--standalone",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL: no cleanup, like a crashed operator."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 120) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(
    kubeconfig: Path, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The running operator (session-wide)."""
    install_kumulus(kubeconfig)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUMULUS_POD_START_DEADLINE_SECONDS": os.environ.get(
            "KUMULUS_POD_START_DEADLINE_SECONDS", "60"
        ),
        "KUMULUS_WEBHOOK_RECHECK_SECONDS": "3",
        "KUMULUS_METRICS_HOST": "127.0.0.1",
        "KUMULUS_METRICS_PORT": str(free_port()),
        "KUMULUS_FLOW_RECHECK_SECONDS": "2",
        # tests/e2e/test_security_pods.py waits this long for a missing ServiceAccount.
        "KUMULUS_SERVICE_ACCOUNT_WAIT_SECONDS": "10",
        "PYTHONUNBUFFERED": "1",
    }
    op = Operator(kubeconfig, log_path, env)
    op.start()
    _RUNNING.append(op)
    yield op
    _RUNNING.remove(op)
    op.stop()


#: The session operator while the ``operator`` fixture holds it (for session_operator_stopped).
_RUNNING: list[Operator] = []


@pytest.fixture
def session_operator_stopped() -> Iterator[None]:
    """Stop the session ``operator`` (only if this session runs it) for one test; restart after.

    For tests that run Kumulus another way (e.g. installed by Helm), which must not reconcile
    the same objects at the same time as the session operator.
    """
    running = [op for op in _RUNNING if op.proc is not None and op.proc.poll() is None]
    for op in running:
        op.stop()
    try:
        yield
    finally:
        for op in running:
            op.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(autouse=True)
def _print_operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "operator" in request.fixturenames:
        op: Operator = request.getfixturevalue("operator")
        print(f"\n----- operator log ({op.log_path}) -----\n{op.log_tail()}")


Manifest = dict[str, Any] | list[dict[str, Any]] | str


@pytest.fixture
def apply(kubectl: Kubectl) -> Callable[..., None]:
    """``apply(manifest, namespace=None)``: dict, list of dicts or YAML text."""

    def run(manifest: Manifest, namespace: str | None = None) -> None:
        if isinstance(manifest, str):
            docs = [d for d in yaml.safe_load_all(manifest) if d]
        elif isinstance(manifest, dict):
            docs = [manifest]
        else:
            docs = list(manifest)
        text = yaml.safe_dump_all(docs)
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        kubectl(*args, input=text)

    return run


@pytest.fixture
def get_execution(kubectl: Kubectl) -> Callable[[str, str], dict[str, Any]]:
    def run(name: str, namespace: str) -> dict[str, Any]:
        out = kubectl("get", "execution", name, "-n", namespace, "-o", "json").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    return run


@pytest.fixture
def wait_phase(kubectl: Kubectl) -> Callable[..., dict[str, Any]]:
    """``wait_phase(name, ns, phases, timeout=90)`` -> the Execution once its phase matches."""

    def run(
        name: str, namespace: str, phases: str | tuple[str, ...], timeout: float = 90
    ) -> dict[str, Any]:
        wanted = (phases,) if isinstance(phases, str) else tuple(phases)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            proc = kubectl("get", "execution", name, "-n", namespace, "-o", "json", check=False)
            if proc.returncode == 0:
                last = json.loads(proc.stdout)
                if (last.get("status") or {}).get("phase") in wanted:
                    return last
            time.sleep(0.25)
        pytest.fail(
            f"Execution {namespace}/{name} did not reach {wanted} in {timeout}s; "
            f"status: {json.dumps(last.get('status'), indent=1)}"
        )

    return run
