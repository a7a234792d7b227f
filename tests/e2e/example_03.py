"""examples/03-connections pointed at this session's servers, shared by two e2e tests.

The example runs twice: with the test-session operator (``test_connections_rest_smtp``) and
through the Helm installation with the connection executor in its own Deployment
(``test_helm``). Both apply the example's files as written, with only the addresses and
credentials of the session's HTTP server and PostgreSQL cluster filled in, and check the same
outputs and that neither secret shows in anything a user can read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.local_servers import HttpServer, Seen, cluster_host

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "03-connections"
EXECUTION = "api-report-1"
API_TOKEN = "example-token-0b7e"


@pytest.fixture(scope="module")
def http() -> Iterator[HttpServer]:
    """An aiohttp server that records every request (one per test module), where Pods reach it."""
    server = HttpServer(cluster_host()).start()
    yield server
    server.stop()


def manifests(http: HttpServer, postgres: Any) -> list[dict[str, Any]]:
    """The example's Secrets, Connections, Flow and Execution, aimed at the session's servers."""
    docs: list[dict[str, Any]] = []
    for name in ("secret.yaml", "connections.yaml", "flow.yaml", "execution.yaml"):
        docs += [d for d in yaml.safe_load_all((EXAMPLE / name).read_text()) if d]
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Secret" and name == "demo-db":
            doc["stringData"]["password"] = postgres.password
        if doc["kind"] == "Secret" and name == "demo-api-token":
            doc["stringData"]["bearer_token"] = API_TOKEN
        if doc["kind"] == "Connection" and name == "demo-api":
            doc["spec"]["values"]["url"] = http.url
        if doc["kind"] == "Connection" and name == "demo-db":
            doc["spec"]["values"].update(postgres.values())
    return docs


def check_outputs(
    execution: dict[str, Any],
    http: HttpServer,
    postgres: Any,
    kubectl: Callable[..., Any],
    namespace: str,
) -> None:
    """The finished example Execution: the REST answer, the row read back, no secret shown."""
    status = execution["status"]
    assert status["phase"] == "Succeeded", status
    out = status["outputs"]
    assert out["api_status"] == 200
    assert out["api_json"]["path"] == "/health"
    assert out["api_json"]["authorization"] == "Bearer ***"
    assert out["recorded"]["path"] == "/health"
    assert out["recorded"]["status_code"] == 200
    assert Seen("GET", "/health", "", f"Bearer {API_TOKEN}") in http.requests
    everything = kubectl("get", "executions,connections,events", "-n", namespace, "-o", "json")
    assert postgres.password not in everything.stdout
    assert API_TOKEN not in everything.stdout
