"""Webhooks end to end over real HTTP: the service (as its own ServiceAccount), the operator and
runner Pods on the dev cluster.

Calls whose flow must really run (sync answers, HTML, timeout) use small flows; calls that only
need the created Execution (auth, async, forms, errors) use a Flow with a syntax error, whose
Executions fail at once without a Pod, to keep the suite light.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
from typing import Any

import pytest
from tests.e2e.webhook_service import (
    REPO,
    WebhookService,
    call,
    count_executions,
    grant_secrets,
    raw_exchange,
    secret_manifest,
    status_of,
    wait_not_served,
    wait_served,
)
from tests.polling import eventually

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "05-webhook"

CHEAP_FLOW = "def handler(system, this):\n    this is not valid python(\n"
SLOW_FLOW = "def handler(system, this):\n    this.sleep(120)\n    return this.success('late')\n"
BRANCHY_FLOW = """\
def handler(system, this):
    request = this.get('input_value')
    if request['query'].get('fail'):
        raise RuntimeError('asked to fail')
    this.save(output_value={'seen': request['json']})
    return this.success('fine')
"""


def flow(name: str, code: str) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Flow",
        "metadata": {"name": name},
        "spec": {"code": code},
    }


def webhook(name: str, flow_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kumulus.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {"flowRef": {"name": flow_name}, **spec},
    }


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def get_json(kubectl: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    out = kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def ready_condition(kubectl: Any, name: str, namespace: str) -> dict[str, Any]:
    status = get_json(kubectl, "webhook", name, namespace).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


@pytest.fixture(autouse=True)
def _print_service_log_on_failure(request: pytest.FixtureRequest) -> Any:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "webhook_service" in request.fixturenames:
        service: WebhookService = request.getfixturevalue("webhook_service")
        print(f"\n----- webhook service log -----\n{service.log_tail()}")


# --------------------------------------------------------------------------- the example


def readme_commands() -> tuple[list[str], list[str]]:
    """The README's second sh block: variable lines and curl lines, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", (EXAMPLE / "README.md").read_text(), re.S)
    lines = [line for line in blocks[1].splitlines() if line and not line.startswith("#")]
    setup = [line for line in lines if not line.startswith("curl ")]
    curls = [line for line in lines if line.startswith("curl ")]
    return setup, curls


def test_example_readme_curl_lines(
    operator: Any, webhook_service: WebhookService, kubectl: Any, apply: Any
) -> None:
    """Every curl line of examples/05-webhook/README.md, run as written (sync, HTML, async)."""
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        pytest.fail("curl and openssl are needed to run the example's commands")
    ns = webhook_service.namespace
    for manifest in ("flow.yaml", "secret.yaml", "webhook.yaml"):
        kubectl("apply", "-n", ns, "-f", str(EXAMPLE / manifest))
    wait_served(webhook_service.url(ns, "webhook-echo"))
    setup, curls = readme_commands()
    assert len(curls) == 6
    script_env = {**os.environ, "URL_FILE": "unused"}
    answers: list[tuple[int, str]] = []
    for line in curls:
        line = line.replace("/namespaces/default/", f"/namespaces/{ns}/")
        script = "\n".join(
            [f"URL={webhook_service.base}", *setup[1:], line + " -w '\\n%{http_code}'"]
        )
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=200, env=script_env
        )
        body, _, code = done.stdout.rpartition("\n")
        answers.append((int(code), body))
    codes = [code for code, _ in answers]
    assert codes == [200, 200, 200, 200, 200, 202], answers
    key_query, key_body, bearer_form, signed, page, queued = [body for _, body in answers]

    first = json.loads(key_query)
    assert first["namespace"] == ns
    assert first["name"].startswith("webhook-echo-")
    assert (first["phase"], first["status"]) == ("Succeeded", "ENDED_SUCCESS")
    assert first["message"] == "POST /orders/42 handled"
    request = first["outputs"]["request"]
    assert request["method"] == "POST"
    assert request["path"] == "/orders/42"
    assert request["query"] == {}
    assert request["json"] == {"name": "Ada"}
    assert request["headers"]["content-type"] == "application/json"
    assert "demo-key" not in key_query

    second = json.loads(key_body)
    assert second["outputs"]["request"]["json"] == {"name": "Grace"}
    assert "demo-key" not in key_body

    third = json.loads(bearer_form)
    assert third["outputs"]["request"]["json"] == {"name": "Alan"}
    assert "authorization" not in third["outputs"]["request"]["headers"]
    assert "demo-token" not in bearer_form

    fourth = json.loads(signed)
    assert fourth["outputs"]["greeting"] == "Hello, Linus!"
    assert "x-hub-signature-256" not in fourth["outputs"]["request"]["headers"]

    assert page == "<h1>Hello, world!</h1>"

    accepted = json.loads(queued)
    assert accepted["namespace"] == ns
    assert accepted["phase"] in ("Pending", "Running")
    names = count_executions(kubectl, ns, "webhook-echo")
    assert accepted["name"] in names
    assert len(names) == 6

    status = get_json(kubectl, "webhook", "webhook-echo", ns)["status"]
    assert status["url"] == f"/namespaces/{ns}/webhooks/webhook-echo/call"
    assert ready_condition(kubectl, "webhook-echo", ns)["status"] == "True"
    eventually(
        "status.lastTriggeredTime",
        lambda: (get_json(kubectl, "webhook", "webhook-echo", ns).get("status") or {}).get(
            "lastTriggeredTime"
        ),
    )


# --------------------------------------------------------------------------- sync answers


def test_sync_answers_outputs_errors_and_times_out_to_202(
    operator: Any, webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> None:
    grant_secrets(kubectl, namespace)
    apply(
        [
            flow("branchy", BRANCHY_FLOW),
            flow("slow", SLOW_FLOW),
            webhook(
                "branchy",
                "branchy",
                auth={"allowUnauthenticated": True},
                response={"timeoutSeconds": 150},
            ),
            webhook(
                "slow", "slow", auth={"allowUnauthenticated": True}, response={"timeoutSeconds": 1}
            ),
        ],
        namespace=namespace,
    )
    wait_served(webhook_service.url(namespace, "branchy"))
    wait_served(webhook_service.url(namespace, "slow"))

    ok = call(
        "POST",
        webhook_service.url(namespace, "branchy"),
        b'{"n": 1}',
        {"Content-Type": "application/json"},
    )
    assert ok.status == 200, ok.body
    assert ok.json()["status"] == "ENDED_SUCCESS"
    assert ok.json()["outputs"] == {"seen": {"n": 1}}

    failed = call("POST", webhook_service.url(namespace, "branchy", "?fail=1"))
    assert failed.status == 200, failed.body
    assert (failed.json()["phase"], failed.json()["status"]) == ("Failed", "ENDED_ERROR")
    assert "asked to fail" in failed.json()["message"]

    started = time.monotonic()
    late = call("POST", webhook_service.url(namespace, "slow"))
    assert late.status == 202, late.body
    assert late.json()["namespace"] == namespace
    assert late.json()["phase"] in ("Pending", "Running")
    assert time.monotonic() - started < 100  # it did not wait for the flow's 120 s
    name = late.json()["name"]
    assert name in count_executions(kubectl, namespace, "slow")
    kubectl(
        "patch", "execution", name, "-n", namespace, "--type=merge",
        "-p", '{"spec": {"desiredState": "Cancelled"}}',
    )  # fmt: skip


# --------------------------------------------------------------------------- authentication


def test_each_auth_method_right_and_wrong(
    operator: Any, webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> None:
    """Right credentials create an Execution; every wrong one gets the same 401 and none."""
    grant_secrets(kubectl, namespace, names=["k", "t", "h"])  # resourceNames: only these three
    apply(
        [
            secret_manifest("k", key="the-key"),
            secret_manifest("t", token="the-token"),
            secret_manifest("h", secret="the-hmac-secret"),
            secret_manifest("unrelated", key="not-for-the-webhook"),
            flow("cheap", CHEAP_FLOW),
            webhook(
                "guarded",
                "cheap",
                auth={
                    "keySecretRef": {"name": "k"},
                    "bearerTokenSecretRef": {"name": "t"},
                    "hmacSecretRef": {"name": "h"},
                },
                response={"mode": "async"},
            ),
        ],
        namespace=namespace,
    )
    can = kubectl(
        "auth", "can-i", "get", "secret/unrelated", "-n", namespace,
        "--as=system:serviceaccount:kumulus-system:kumulus-webhook", check=False,
    )  # fmt: skip
    assert can.stdout.strip() == "no"
    url = webhook_service.url(namespace, "guarded")
    wait_served(url)
    body = b'{"action":  "opened", "n": [1, 2]}'
    same_json_other_bytes = json.dumps(json.loads(body)).encode()
    assert same_json_other_bytes != body
    json_type = {"Content-Type": "application/json"}

    wrong = [
        call("POST", url),
        call("POST", url + "?key=wrong"),
        call("POST", url + "?key="),
        call("POST", url + "?key=not-for-the-webhook"),
        call("POST", url + "?key=the-token"),
        call("POST", url, b'{"key": "wrong"}', json_type),
        call("POST", url, headers={"Authorization": "Bearer wrong"}),
        call("POST", url, headers={"Authorization": "Basic the-token"}),
        call("POST", url, headers={"Authorization": "Bearer the-key"}),
        call("POST", url, body, {**json_type, "X-Hub-Signature-256": signature(b"wrong", body)}),
        call(
            "POST",
            url,
            same_json_other_bytes,
            {**json_type, "X-Hub-Signature-256": signature(b"the-hmac-secret", body)},
        ),
        call("POST", url, body, {**json_type, "X-Hub-Signature-256": "sha256=zz"}),
        call("POST", url, b"{broken", {**json_type, "X-Hub-Signature-256": "sha256=00"}),
    ]
    assert [r.status for r in wrong] == [401] * len(wrong)
    assert {r.body for r in wrong} == {b'{"error": "unauthorized"}'}
    assert {r.headers["www-authenticate"] for r in wrong} == {'Bearer realm="kumulus-webhook"'}
    assert count_executions(kubectl, namespace, "guarded") == []

    right = [
        call("POST", url + "?key=the-key"),
        call("POST", url, b'{"key": "the-key", "a": 1}', json_type),
        call("POST", url, headers={"Authorization": "Bearer the-token"}),
        call(
            "POST",
            url,
            body,
            {**json_type, "X-Hub-Signature-256": signature(b"the-hmac-secret", body)},
        ),
    ]
    assert [r.status for r in right] == [202] * 4, [r.body for r in right]
    names = [r.json()["name"] for r in right]
    assert sorted(names) == count_executions(kubectl, namespace, "guarded")
    from_body = get_json(kubectl, "execution", names[1], namespace)["spec"]
    assert from_body["inputs"]["json"] == {"a": 1}
    assert from_body["flowRef"] == {"name": "cheap"}
    signed = get_json(kubectl, "execution", names[3], namespace)["spec"]["inputs"]
    assert signed["json"] == json.loads(body)
    everything = json.dumps([get_json(kubectl, "execution", n, namespace) for n in names])
    for secret in ("the-key", "the-token", "the-hmac-secret"):
        assert secret not in everything


def test_admission_requires_auth_or_explicit_opt_out(
    webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> None:
    for spec in ({}, {"auth": {}}, {"auth": {"allowUnauthenticated": False}}):
        manifest = webhook("open", "cheap", **spec)
        manifest["metadata"]["namespace"] = namespace
        done = kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
        assert done.returncode != 0
        assert "a webhook needs auth" in done.stderr
    apply(
        [
            flow("cheap", CHEAP_FLOW),
            webhook(
                "open", "cheap", auth={"allowUnauthenticated": True}, response={"mode": "async"}
            ),
        ],
        namespace=namespace,
    )
    url = webhook_service.url(namespace, "open")
    wait_served(url)
    answer = call("POST", url)
    assert answer.status == 202
    assert count_executions(kubectl, namespace, "open") == [answer.json()["name"]]


# --------------------------------------------------------------------------- inputs and modes


def test_async_modes_sub_paths_and_bodies(
    operator: Any, webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> None:
    apply(
        [
            flow("cheap", CHEAP_FLOW),
            webhook(
                "queued",
                "cheap",
                auth={"allowUnauthenticated": True},
                response={"mode": "async"},
                methods=["POST", "PUT"],
            ),
            webhook(
                "waits",
                "cheap",
                auth={"allowUnauthenticated": True},
                executionTemplate={"ttlSecondsAfterFinished": 3600},
                mode="development",
            ),
        ],
        namespace=namespace,
    )
    url = webhook_service.url(namespace, "queued")
    wait_served(url)
    wait_served(webhook_service.url(namespace, "waits"))

    def inputs_of(answer: Any) -> dict[str, Any]:
        assert answer.status == 202, answer.body
        assert answer.json()["namespace"] == namespace
        spec = get_json(kubectl, "execution", answer.json()["name"], namespace)["spec"]
        result: dict[str, Any] = spec["inputs"]
        return result

    form = inputs_of(
        call(
            "POST",
            webhook_service.url(namespace, "queued", "/deep/sub/path?x=1&x=2&key=k"),
            b"a=1&a=2&b=%C3%A9",
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Trace": "t1",
                "Connection": "close",
            },
        )
    )
    assert form["method"] == "POST"
    assert form["path"] == "/deep/sub/path"
    assert form["query"] == {"x": ["1", "2"]}
    assert form["json"] == {"a": ["1", "2"], "b": "\u00e9"}
    assert form["headers"]["x-trace"] == "t1"
    assert "connection" not in form["headers"]

    boundary = "kumulusboundary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nfile text\r\n--{boundary}--\r\n"
    ).encode()
    parts = inputs_of(
        call("PUT", url, multipart, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    )
    assert parts["method"] == "PUT"
    assert parts["json"]["field"] == "value"
    assert parts["json"]["upload"]["filename"] == "a.txt"
    assert parts["json"]["upload"]["text"] == "file text"

    text = inputs_of(call("POST", url, b"plain words", {"Content-Type": "text/plain"}))
    assert (text["json"], text["text"]) == (None, "plain words")

    cloudomation_route = call("POST", webhook_service.cloudomation_url("queued"))
    assert cloudomation_route.status == 404  # that route serves the service's own namespace

    at_once = call("POST", webhook_service.url(namespace, "waits", "?async=1"))
    assert at_once.status == 202
    assert at_once.json()["status"] == "PENDING"
    created = get_json(kubectl, "execution", at_once.json()["name"], namespace)
    assert created["spec"]["mode"] == "development"
    assert created["spec"]["ttlSecondsAfterFinished"] == 3600
    assert created["metadata"]["labels"]["kumulus.dev/webhook"] == "waits"
    assert created["metadata"].get("ownerReferences") is None
    assert "async" not in created["spec"]["inputs"]["query"]


# --------------------------------------------------------------------------- errors


def test_error_answers(
    operator: Any, webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> None:
    grant_secrets(kubectl, namespace)
    apply(
        [
            secret_manifest("k", key="the-key"),
            flow("cheap", CHEAP_FLOW),
            webhook(
                "strict",
                "cheap",
                auth={"keySecretRef": {"name": "k"}},
                response={"mode": "async"},
                maxBodyBytes=1000,
                rateLimit={"requestsPerSecond": 0.01, "burst": 2},
            ),
            webhook("orphan", "no-such-flow", auth={"allowUnauthenticated": True}),
            webhook("toggled", "cheap", auth={"allowUnauthenticated": True}),
        ],
        namespace=namespace,
    )
    url = webhook_service.url(namespace, "strict")
    for name in ("strict", "orphan", "toggled"):
        wait_served(webhook_service.url(namespace, name))
    keyed = url + "?key=the-key"

    unknown = call("POST", webhook_service.url(namespace, "no-such-webhook"))
    assert (unknown.status, unknown.json()) == (404, {"error": "not found"})
    assert call("GET", f"{webhook_service.base}/no/such/route").status == 404

    kubectl(
        "patch",
        "webhook",
        "toggled",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"enabled": false}}',
    )
    wait_not_served(webhook_service.url(namespace, "toggled"))
    disabled = call("POST", webhook_service.url(namespace, "toggled"))
    assert (disabled.status, disabled.body) == (404, unknown.body)
    condition = eventually(
        "Ready=False/Disabled",
        lambda: (
            (c := ready_condition(kubectl, "toggled", namespace)).get("reason") == "Disabled" and c
        ),
    )
    assert condition["status"] == "False"
    assert condition["observedGeneration"] == 2

    wrong_method = call("DELETE", keyed)
    assert wrong_method.status == 405
    assert wrong_method.headers["allow"] == "POST"

    # 413 from the declared length, before the body is sent: only the headers go out.
    host, port = "127.0.0.1", webhook_service.port
    path = url.removeprefix(webhook_service.base) + "?key=the-key"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\nConnection: close\r\n"
    assert status_of(raw_exchange(host, port, (head + "\r\n").encode() + b"x" * 100)) == 413
    expect = head + "Expect: 100-continue\r\n\r\n"
    assert status_of(raw_exchange(host, port, expect.encode())) == 413
    assert call("POST", keyed, b"y" * 1001).status == 413
    chunk = b"258\r\n" + b"z" * 600 + b"\r\n"  # two chunks of 600 bytes, no Content-Length
    chunked = (
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + chunk * 2
        + b"0\r\n\r\n"
    )
    assert status_of(raw_exchange(host, port, chunked)) == 413

    malformed = call("POST", keyed, b'{"a": ', {"Content-Type": "application/json"})
    assert malformed.status == 400
    assert "Malformed JSON" in malformed.json()["message"]

    missing_flow = call("POST", webhook_service.url(namespace, "orphan"))
    assert missing_flow.status == 404
    assert "no-such-flow" in missing_flow.json()["message"]
    eventually(
        "Ready=False/FlowNotFound",
        lambda: ready_condition(kubectl, "orphan", namespace).get("reason") == "FlowNotFound",
    )

    codes = [call("POST", keyed).status for _ in range(4)]
    assert codes == [202, 202, 429, 429]
    limited = call("POST", keyed)
    assert int(limited.headers["retry-after"]) >= 1
    assert len(count_executions(kubectl, namespace, "strict")) == 2


def test_ready_follows_flow_and_secret(
    operator: Any, webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> None:
    apply(
        webhook("late", "later-flow", auth={"hmacSecretRef": {"name": "later-secret"}}),
        namespace=namespace,
    )
    first = eventually("a Ready condition", lambda: ready_condition(kubectl, "late", namespace))
    assert (first["status"], first["reason"]) == ("False", "FlowNotFound")
    apply(flow("later-flow", CHEAP_FLOW), namespace=namespace)
    second = eventually(
        "the Flow to be seen",
        lambda: (
            (c := ready_condition(kubectl, "late", namespace)).get("reason") != "FlowNotFound" and c
        ),
    )
    assert (second["status"], second["reason"]) == ("False", "SecretNotFound")
    assert "later-secret" in second["message"]
    apply(secret_manifest("later-secret", secret="s"), namespace=namespace)
    third = eventually(
        "Ready=True",  # Secrets are re-checked periodically (every 3 s in the e2e operator)
        lambda: (c := ready_condition(kubectl, "late", namespace)).get("status") == "True" and c,
    )
    assert third["observedGeneration"] == 1
    status = get_json(kubectl, "webhook", "late", namespace)["status"]
    assert status["url"].endswith(f"/namespaces/{namespace}/webhooks/late/call")
    assert status["observedGeneration"] == 1
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "SecretNotFound" in events
