"""The webhook service as a subprocess for e2e tests, running as its real ServiceAccount.

``webhook_service`` (session fixture, imported by tests/e2e/conftest.py) installs the CRDs and
``config/rbac/webhook-role.yaml``, creates a token for ServiceAccount
``kumulus-system/kumulus-webhook`` and runs ``python -m kumulus.webhook`` with a kubeconfig
holding only that token: every test therefore also checks that the service's RBAC is enough
(and, with :func:`grant_secrets`, that per-namespace Secret grants work). Helpers: raw HTTP
calls (:func:`call`, exact bytes in and out), :func:`wait_served`, :func:`count_executions`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.local_servers import free_port

from kumulus.devcluster.dev import install_kumulus

REPO = Path(__file__).resolve().parents[2]
SA_NAMESPACE = "kumulus-system"
SA_NAME = "kumulus-webhook"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    method: str,
    url: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    timeout: float = 150,
) -> Response:
    """One HTTP/1.1 request with exactly these bytes as body (no re-encoding)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response (headers and a Content-Length body)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(rest) >= int(value.strip())
    return False


def raw_exchange(host: str, port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send raw bytes and return the first response (up to 64 KiB).

    Reading stops once a whole response arrived (by its Content-Length), at the server's close,
    or at ``timeout`` (whatever arrived by then is returned).
    """
    chunks: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer before reading it all
            sock.sendall(data)
        size = 0
        while size < 65536 and not _complete(b"".join(chunks)):
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def status_of(raw: bytes) -> int | None:
    """The status code of a raw HTTP response, or None when there is no status line."""
    line = raw.split(b"\r\n", 1)[0].split()
    if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit():
        return int(line[1])
    return None


@dataclass
class WebhookService:
    """A running ``kumulus-webhook`` subprocess."""

    base: str
    port: int
    namespace: str
    log_path: Path
    kubeconfig: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def url(self, namespace: str, name: str, suffix: str = "") -> str:
        return f"{self.base}/namespaces/{namespace}/webhooks/{name}/call{suffix}"

    def cloudomation_url(self, name: str, suffix: str = "") -> str:
        return f"{self.base}/api/latest/webhook/{name}/call{suffix}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def sa_kubeconfig(kubectl: Any, admin: Path, target: Path) -> Path:
    """A kubeconfig holding only a token of ServiceAccount kumulus-system/kumulus-webhook."""
    token = kubectl("create", "token", SA_NAME, "-n", SA_NAMESPACE, "--duration=4h").stdout.strip()
    config = yaml.safe_load(admin.read_text())
    cluster = config["clusters"][0]["cluster"]
    target.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "dev", "cluster": cluster}],
                "users": [{"name": SA_NAME, "user": {"token": token}}],
                "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": SA_NAME}}],
                "current-context": "dev",
            }
        )
    )
    return target


def install_webhook_rbac(kubectl: Any) -> None:
    if kubectl("get", "namespace", SA_NAMESPACE, check=False).returncode != 0:
        kubectl("create", "namespace", SA_NAMESPACE, check=False)
    kubectl("apply", "-f", str(REPO / "config" / "rbac" / "webhook-role.yaml"))


def start_service(
    kubeconfig: Path, namespace: str, log_path: Path, extra_env: Mapping[str, str] | None = None
) -> WebhookService:
    """Start ``python -m kumulus.webhook`` and wait for ``/healthz``."""
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUMULUS_WEBHOOK_PORT": str(port),
        "KUMULUS_WEBHOOK_HOST": "127.0.0.1",
        "KUMULUS_WEBHOOK_NAMESPACE": namespace,
        "KUMULUS_WEBHOOK_STATUS_INTERVAL_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    service = WebhookService(f"http://127.0.0.1:{port}", port, namespace, log_path, kubeconfig)
    with log_path.open("ab") as log:
        service.proc = subprocess.Popen(
            [sys.executable, "-m", "kumulus.webhook"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not service.alive():
            pytest.fail(f"kumulus-webhook exited:\n{service.log_tail()}")
        try:
            if call("GET", f"{service.base}/healthz", timeout=5).status == 200:
                return service
        except OSError:
            pass
        time.sleep(0.3)
    service.stop()
    pytest.fail(f"kumulus-webhook did not become healthy:\n{service.log_tail()}")


@pytest.fixture(scope="session")
def webhook_service(
    kubeconfig: Path, kubectl: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookService]:
    """The webhook service, session-wide, as ServiceAccount kumulus-system/kumulus-webhook.

    Its Cloudomation-style route serves a namespace of its own (``service.namespace``),
    where its Secret access is granted namespace-wide.
    """
    install_kumulus(kubeconfig)
    install_webhook_rbac(kubectl)
    home = tmp_path_factory.mktemp("webhook")
    namespace = f"kwh-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    grant_secrets(kubectl, namespace)
    service = start_service(
        sa_kubeconfig(kubectl, kubeconfig, home / "kubeconfig"), namespace, home / "webhook.log"
    )
    yield service
    service.stop()
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def grant_secrets(kubectl: Any, namespace: str, names: list[str] | None = None) -> None:
    """Let the service read Secrets in ``namespace``: all of them, or only ``names``."""
    subject = {"kind": "ServiceAccount", "name": SA_NAME, "namespace": SA_NAMESPACE}
    docs: list[dict[str, Any]] = []
    role_ref = {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kumulus-webhook-secrets",
    }
    if names is not None:
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "kumulus-webhook-secrets", "namespace": namespace},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["secrets"],
                        "resourceNames": names,
                        "verbs": ["list", "watch"],
                    }
                ],
            }
        )
        role_ref = {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "kumulus-webhook-secrets",
        }
    docs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "kumulus-webhook-secrets", "namespace": namespace},
            "roleRef": role_ref,
            "subjects": [subject],
        }
    )
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def secret_manifest(name: str, **values: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def wait_served(url: str, timeout: float = 60) -> None:
    """Wait until the service knows the Webhook at ``url`` (OPTIONS is never allowed: 405)."""
    deadline = time.monotonic() + timeout
    last = 0
    while time.monotonic() < deadline:
        last = call("OPTIONS", url, timeout=10).status
        if last == 405:
            return
        time.sleep(0.2)
    pytest.fail(f"{url} was not served within {timeout}s (last answer {last})")


def wait_not_served(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call("OPTIONS", url, timeout=10).status == 404:
            return
        time.sleep(0.2)
    pytest.fail(f"{url} was still served after {timeout}s")


def count_executions(kubectl: Any, namespace: str, webhook: str) -> list[str]:
    """Names of the Executions the Webhook created (by label)."""
    out = kubectl(
        "get", "executions", "-n", namespace, "-l", f"kumulus.dev/webhook={webhook}", "-o", "json"
    ).stdout
    return sorted(item["metadata"]["name"] for item in json.loads(out)["items"])
