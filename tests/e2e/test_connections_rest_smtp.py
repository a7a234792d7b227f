"""Connections end to end: REST and SMTP calls against real servers, secrets that never leak.

The real operator (with the connection executor inline) runs against the dev cluster; the
HTTP server (aiohttp) and the SMTP server (aiosmtpd, with a login) run in this test process on
127.0.0.1. Most calls are CONNECTION Executions created directly (no Pod needed); one test runs
a flow whose Pod calls ``this.connect`` / ``this.task`` and then searches everything a flow or
a user can see for the secret.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e import example_03
from tests.local_servers import LOOPBACK, HttpServer, MailServer, Seen, cluster_host, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

API = "kumulus.dev/v1alpha1"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


@pytest.fixture(autouse=True)
def _operator_running(operator: Any) -> None:
    """Every test here needs the operator (fixture from tests/e2e/conftest.py)."""


@pytest.fixture(scope="module")
def mail() -> Iterator[MailServer]:
    # Where Pods reach it too, like every server of the e2e tests (tests/local_servers.py).
    server = MailServer(login="robot", password="mail-password-5f2c", host=cluster_host()).start()
    yield server
    server.stop()


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def connection(
    name: str, type_: str, values: dict[str, Any], secret_name: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_, "values": values}
    if secret_name:
        spec["secretRef"] = {"name": secret_name}
    return {"apiVersion": API, "kind": "Connection", "metadata": {"name": name}, "spec": spec}


def call(
    name: str,
    *,
    connection_name: str | None = None,
    type_: str | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    conn: dict[str, Any] = {"inputs": inputs or {}}
    if connection_name:
        conn["name"] = connection_name
    if type_:
        conn["type"] = type_
    return {
        "apiVersion": API,
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": {"type": "CONNECTION", "connection": conn},
    }


def finished(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Finished")


def ready(kubectl: Any, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """The Connection's Ready condition once it is observed for the current generation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = json.loads(kubectl("get", "connection", name, "-n", namespace, "-o", "json").stdout)
        status = obj.get("status") or {}
        if status.get("observedGeneration") == obj["metadata"]["generation"]:
            for cond in status.get("conditions") or []:
                if cond["type"] == "Ready":
                    return dict(cond)
        time.sleep(0.25)
    pytest.fail(f"Connection {namespace}/{name} got no Ready condition in {timeout}s")


# --------------------------------------------------------------------------- REST


def test_rest_calls_by_hand_succeed_and_fail_clearly(
    http: HttpServer,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    """Happy path with per-call inputs merged, a refused retarget, connection refused, timeout,
    unexpected status, basic auth."""
    dead_port = free_port()
    apply(
        [
            secret("basic", username="svc-user", password="basic-pass-91ad"),
            connection(
                "api",
                "REST",
                {"url": f"{http.url}/stored", "query": {"from": "stored"}},
                "basic",
            ),
            call("ok", connection_name="api", inputs={"path": "items", "method": "POST"}),
            call(
                "override",
                connection_name="api",
                inputs={"path": "per-call", "query": {"from": "call"}},
            ),
            call("retarget", connection_name="api", inputs={"url": f"{http.url}/elsewhere"}),
            call("refused", type_="REST", inputs={"url": f"http://{LOOPBACK}:{dead_port}/x"}),
            call(
                "slow",
                type_="REST",
                inputs={"url": f"{http.url}/slow?seconds=30", "timeout": 1},
            ),
            call("teapot", type_="REST", inputs={"url": f"{http.url}/status/418"}),
        ],
        namespace,
    )
    ok = wait_phase("ok", namespace, TERMINAL)["status"]
    assert ok["phase"] == "Succeeded", ok
    out = ok["outputs"]
    assert out["status_code"] == 200
    assert out["json"]["method"] == "POST"
    assert out["json"]["path"] == "/stored/items"
    assert out["json"]["query"] == {"from": "stored"}
    # The Secret's credentials were sent, and what the server echoed back is scrubbed.
    assert out["json"]["authorization"] == "Basic ***"
    sent = Seen("POST", "/stored/items", "from=stored", "Basic c3ZjLXVzZXI6YmFzaWMtcGFzcy05MWFk")
    assert sent in http.requests
    assert "basic-pass-91ad" not in json.dumps(ok)

    override = wait_phase("override", namespace, TERMINAL)["status"]
    assert override["phase"] == "Succeeded", override
    assert override["outputs"]["json"]["path"] == "/stored/per-call"
    assert override["outputs"]["json"]["query"] == {"from": "call"}

    # A call through a Connection cannot change where it goes (docs/connections.md).
    retarget = wait_phase("retarget", namespace, TERMINAL)["status"]
    assert retarget["phase"] == "Failed"
    assert finished(retarget)["reason"] == "OverrideRefused"
    assert "refused the per-call input url:" in retarget["statusMessage"]
    assert "spec.allowedOverrides" in retarget["statusMessage"]
    assert not [r for r in http.requests if r.path == "/elsewhere"]

    refused = wait_phase("refused", namespace, TERMINAL)["status"]
    assert refused["phase"] == "Failed"
    assert finished(refused)["reason"] == "ConnectionRefused"
    assert refused["statusMessage"] == (
        f"GET http://{LOOPBACK}:{dead_port}/x failed: connection refused by {LOOPBACK}:{dead_port}."
    )

    slow = wait_phase("slow", namespace, TERMINAL)["status"]
    assert slow["phase"] == "Failed"
    assert finished(slow)["reason"] == "Timeout"
    assert "did not answer within 1s" in slow["statusMessage"]

    teapot = wait_phase("teapot", namespace, TERMINAL)["status"]
    assert teapot["phase"] == "Failed"
    assert finished(teapot)["reason"] == "UnexpectedStatus"
    assert "returned 418 I'm a Teapot, expected 200, 201, 202, 204" in teapot["statusMessage"]
    assert teapot["outputs"]["status_code"] == 418
    assert teapot["outputs"]["text"] == "failure body"


def test_cancel_interrupts_a_slow_call(
    http: HttpServer,
    apply: Callable[..., None],
    kubectl: Any,
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    apply(
        call("hang", type_="REST", inputs={"url": f"{http.url}/slow?seconds=120", "timeout": 300}),
        namespace,
    )
    wait_phase("hang", namespace, "Running")
    kubectl(
        "patch",
        "execution",
        "hang",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"desiredState":"Cancelled"}}',
    )
    status = wait_phase("hang", namespace, TERMINAL, timeout=60)["status"]
    assert status["phase"] == "Cancelled"
    assert "the REST call was interrupted" in status["statusMessage"]


def test_executor_restart_never_repeats_a_started_call(
    http: HttpServer,
    operator: Any,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    marker = uuid.uuid4().hex
    url = f"{http.url}/slow?seconds=60&id={marker}"
    apply(call("once", type_="REST", inputs={"url": url, "timeout": 120}), namespace)
    wait_phase("once", namespace, "Running")
    operator.kill()
    operator.start()
    status = wait_phase("once", namespace, TERMINAL, timeout=120)["status"]
    assert status["phase"] == "Failed"
    assert finished(status)["reason"] == "ExecutorRestarted"
    assert "not repeated" in status["statusMessage"]
    # Exactly one request of this call reached the server: it was not re-run.
    assert [r.path for r in http.requests if marker in r.query] == ["/slow"]


# --------------------------------------------------------------------------- SMTP


def test_smtp_send_bad_credentials_and_refused(
    mail: MailServer,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    subject = f"Report {uuid.uuid4().hex[:6]}"
    # The sender belongs to the Connection (a call may not send as someone else with its login).
    values = {
        "smtp_host": mail.host,
        "smtp_port": mail.port,
        "login": "robot",
        "from": "kumulus@example.test",
    }
    apply(
        [
            secret("mail-secret", password="mail-password-5f2c"),
            secret("wrong-secret", password="not-the-password-77"),
            connection("mail", "SMTP", values, "mail-secret"),
            connection("mail-wrong", "SMTP", values, "wrong-secret"),
            call(
                "send",
                connection_name="mail",
                inputs={
                    "to": ["ops@example.test", "dev@example.test"],
                    "subject": subject,
                    "text": "All green.",
                    "html": "<p>All green.</p>",
                },
            ),
            call(
                "denied",
                connection_name="mail-wrong",
                inputs={"to": "ops@example.test"},
            ),
            call(
                "nobody-home",
                type_="SMTP",
                inputs={
                    "smtp_host": LOOPBACK,
                    "smtp_port": free_port(),
                    "from": "kumulus@example.test",
                    "to": "ops@example.test",
                },
            ),
        ],
        namespace,
    )
    send = wait_phase("send", namespace, TERMINAL)["status"]
    assert send["phase"] == "Succeeded", send
    assert send["outputs"]["accepted"] == ["ops@example.test", "dev@example.test"]
    got = [m for m in mail.received if m.message["Subject"] == subject]
    assert len(got) == 1
    assert got[0].message["Message-ID"] == send["outputs"]["message_id"]

    denied = wait_phase("denied", namespace, TERMINAL)["status"]
    assert denied["phase"] == "Failed"
    assert finished(denied)["reason"] == "AuthenticationFailed"
    assert "rejected the login: 535" in denied["statusMessage"]
    assert "not-the-password-77" not in json.dumps(denied)

    refused = wait_phase("nobody-home", namespace, TERMINAL)["status"]
    assert refused["phase"] == "Failed"
    assert finished(refused)["reason"] == "ConnectionRefused"


# --------------------------------------------------------------------------- Ready


def test_connection_ready_condition(
    apply: Callable[..., None],
    kubectl: Any,
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    apply(
        [
            connection("odd", "NOPE", {}),
            connection("no-secret", "REST", {"url": "http://example.test"}, "later"),
            connection("bad-values", "REST", {"url": "ftp://x", "method": "FETCH"}),
            call("needs-secret", connection_name="no-secret"),
        ],
        namespace,
    )
    odd = ready(kubectl, namespace, "odd")
    assert (odd["status"], odd["reason"]) == ("False", "UnknownType")
    assert "unknown connector type 'NOPE'" in odd["message"]
    missing = ready(kubectl, namespace, "no-secret")
    assert (missing["status"], missing["reason"]) == ("False", "SecretNotFound")
    assert missing["message"] == "Secret later does not exist."
    bad = ready(kubectl, namespace, "bad-values")
    assert (bad["status"], bad["reason"]) == ("False", "InvalidValues")
    assert "method" in bad["message"] and "url" in bad["message"]

    failed = wait_phase("needs-secret", namespace, TERMINAL)["status"]
    assert failed["phase"] == "Failed"
    assert finished(failed)["reason"] == "SecretNotFound"

    # The Secret appears: the next check (any change of the Connection, or the periodic
    # re-check every connection_recheck_seconds) makes the Connection Ready.
    apply(secret("later", bearer_token="tok-later-123"), namespace)
    kubectl("annotate", "connection", "no-secret", "-n", namespace, "touched=1")
    deadline = time.monotonic() + 60
    cond = missing
    while time.monotonic() < deadline and cond["status"] != "True":
        time.sleep(0.25)
        cond = ready(kubectl, namespace, "no-secret")
    assert (cond["status"], cond["reason"]) == ("True", "Valid")
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"UnknownType", "SecretNotFound", "InvalidValues", "Ready"} <= reasons


# --------------------------------------------------------------------------- from a flow

FLOW = textwrap.dedent(
    """
    import flow_api

    def handler(system, this):
        stored = this.connect('api', path='/from-flow', query={'n': '1'})
        adhoc = this.task('REST', url=URL + '/task', method='PUT', json={'k': 'v'})
        typed = this.connect(connector_type='REST', url=URL + '/typed')
        failing = this.connect('api', path='/status/500', wait=system.return_when.ALL_ENDED)
        later = this.connect('api', path='/later', run=False)
        created = later.get('status')
        later.run()
        this.log('called', seen=stored.get('output_value')['json'])
        record = system.connection('api')
        this.save(output_value={
            'stored': stored.get('output_value')['json'],
            'adhoc': adhoc.get('output_value')['json'],
            'typed_status': typed.get('output_value')['status_code'],
            'failing_status': failing.get('status'),
            'failing_message': failing.get('status_message'),
            'record': record.get('type', 'values'),
            'later': [created, later.get('status')],
        })
        return this.success('done')
    """
)


def test_flow_connects_and_the_secret_never_shows(
    http: HttpServer,
    apply: Callable[..., None],
    kubectl: Any,
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    code = FLOW.replace("URL + ", f"{http.url!r} + ")
    apply(
        [
            secret("api-secret", bearer_token=token),
            connection("api", "REST", {"url": http.url}, "api-secret"),
            {
                "apiVersion": API,
                "kind": "Flow",
                "metadata": {"name": "caller"},
                "spec": {"code": code},
            },
            {
                "apiVersion": API,
                "kind": "Execution",
                "metadata": {"name": "run"},
                "spec": {"type": "FLOW", "flowRef": {"name": "caller"}},
            },
        ],
        namespace,
    )
    run = wait_phase("run", namespace, TERMINAL, timeout=180)
    status = run["status"]
    assert status["phase"] == "Succeeded", status
    out = status["outputs"]
    assert out["stored"]["path"] == "/from-flow"
    assert out["stored"]["query"] == {"n": "1"}
    assert out["stored"]["authorization"] == "Bearer ***"
    assert (out["adhoc"]["method"], out["adhoc"]["path"]) == ("PUT", "/task")
    assert json.loads(out["adhoc"]["body"]) == {"k": "v"}
    assert out["adhoc"]["authorization"] is None  # an ad-hoc call has no Connection Secret
    assert out["typed_status"] == 200
    assert out["failing_status"] == "ENDED_ERROR"
    assert "returned 500 Internal Server Error" in out["failing_message"]
    assert out["record"] == {"type": "REST", "values": {"url": http.url}}
    # The server got the real token from the Secret.
    assert Seen("GET", "/from-flow", "n=1", f"Bearer {token}") in http.requests

    assert out["later"] == ["PENDING", "ENDED_SUCCESS"]  # run=False, then run()
    children = {c["name"]: c for c in status["children"]}
    assert len(children) == 5
    assert {c["type"] for c in children.values()} == {"CONNECTION"}
    assert sorted(c["phase"] for c in children.values()) == [
        "Failed",
        "Succeeded",
        "Succeeded",
        "Succeeded",
        "Succeeded",
    ]

    # Search everything a flow or a user of the namespace can see for the token.
    pod = status["podName"]
    seen = {
        "executions": kubectl("get", "executions", "-n", namespace, "-o", "json").stdout,
        "connections": kubectl("get", "connections", "-n", namespace, "-o", "json").stdout,
        "events": kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "pod": kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout,
        "logs": kubectl("logs", pod, "-n", namespace).stdout,
    }
    for where, text in seen.items():
        assert token not in text, f"the secret leaked into {where}"
    assert '"called"' in seen["logs"]  # the flow's log line is there, scrubbed
    assert "Bearer ***" in seen["logs"]
    env = yaml.safe_load(seen["pod"])["spec"]["containers"][0].get("env") or []
    assert all("secret" not in json.dumps(e).lower() for e in env)
    # The flow's identity cannot read Secrets at all.
    can = kubectl(
        "auth",
        "can-i",
        "get",
        "secrets",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:kumulus-runner",
        check=False,
    )
    assert can.stdout.strip() == "no"


# --------------------------------------------------------------------------- separate process


def _service_account_kubeconfig(kubeconfig: Path, token: str, path: Path) -> Path:
    admin = yaml.safe_load(kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "dev", "cluster": cluster}],
                "users": [{"name": "executor", "user": {"token": token}}],
                "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "executor"}}],
                "current-context": "dev",
            }
        )
    )
    return path


def test_connection_executor_as_its_own_process_with_its_own_identity(
    http: HttpServer,
    operator: Any,
    kubeconfig: Path,
    kubectl: Any,
    apply: Callable[..., None],
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
    tmp_path: Path,
) -> None:
    """The operator without the executor, and ``kopf run -m kumulus.handlers.connection_executor``
    as a ServiceAccount bound only to config/rbac/connection-executor-clusterrole.yaml."""
    binding = f"{namespace}-executor"
    kubectl("create", "serviceaccount", "executor", "-n", namespace)
    kubectl(
        "create",
        "clusterrolebinding",
        binding,
        "--clusterrole=kumulus-connection-executor",
        f"--serviceaccount={namespace}:executor",
    )
    token = kubectl("create", "token", "executor", "-n", namespace, "--duration=30m").stdout
    sa_config = _service_account_kubeconfig(kubeconfig, token.strip(), tmp_path / "sa.yaml")
    log_path = tmp_path / "executor.log"
    operator.kill()
    operator.env["KUMULUS_CONNECTION_EXECUTOR_INLINE"] = "false"
    operator.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "--standalone",
                    "--namespace",
                    namespace,
                    "-m",
                    "kumulus.handlers.connection_executor",
                ],
                env={
                    **os.environ,
                    "KUBECONFIG": str(sa_config),
                    "KUMULUS_NAMESPACES": namespace,
                    "PYTHONUNBUFFERED": "1",
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        code = FLOW.replace("URL + ", f"{http.url!r} + ")
        apply(
            [
                secret("api-secret", bearer_token="tok-separate-4411"),
                connection("api", "REST", {"url": http.url}, "api-secret"),
                {
                    "apiVersion": API,
                    "kind": "Flow",
                    "metadata": {"name": "caller"},
                    "spec": {"code": code},
                },
                {
                    "apiVersion": API,
                    "kind": "Execution",
                    "metadata": {"name": "run"},
                    "spec": {"type": "FLOW", "flowRef": {"name": "caller"}},
                },
            ],
            namespace,
        )
        status = wait_phase("run", namespace, TERMINAL, timeout=180)["status"]
        log_text = log_path.read_text(errors="replace")
        assert status["phase"] == "Succeeded", (status, log_text[-3000:])
        assert ready(kubectl, namespace, "api")["status"] == "True"
        children = json.loads(kubectl("get", "executions", "-n", namespace, "-o", "json").stdout)[
            "items"
        ]
        claimers = {
            c["status"]["executor"]["id"].split("/")[1].split("-")[0]
            for c in children
            if c["spec"]["type"] == "CONNECTION"
        }
        assert claimers == {str(proc.pid)}  # every call ran in the separate process
        # It registered only its own handlers: the reconciler's never ran there.
        assert "Claimed CONNECTION Execution" in log_text
        assert "Moved Execution" not in log_text and "pod_event" not in log_text
        assert "Forbidden" not in log_text and "403" not in log_text
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)
        operator.kill()
        operator.env.pop("KUMULUS_CONNECTION_EXECUTOR_INLINE", None)
        operator.start()


# --------------------------------------------------------------------------- example 03


def test_example_03(
    http: HttpServer,
    postgres_server: Any,
    apply: Callable[..., None],
    kubectl: Any,
    wait_phase: Callable[..., dict[str, Any]],
    namespace: str,
) -> None:
    """examples/03-connections as written, pointed at this session's HTTP and PostgreSQL."""
    apply(example_03.manifests(http, postgres_server), namespace)
    assert ready(kubectl, namespace, "demo-api")["status"] == "True"
    assert ready(kubectl, namespace, "demo-db")["status"] == "True"
    done = wait_phase(example_03.EXECUTION, namespace, TERMINAL, timeout=180)
    example_03.check_outputs(done, http, postgres_server, kubectl, namespace)
