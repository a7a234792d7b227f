"""Property-based fuzzing of the webhook service over raw sockets (hypothesis).

Malformed methods, request targets, headers (including broken credentials) and bodies are
thrown at a Webhook guarded by all three auth methods, whose secrets the fuzzer never uses.
Properties: no answer is a 5xx (a server that closes without answering only happens on
unparseable bytes and is counted, not hidden), the process stays up and healthy, and not a
single Execution is created.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.e2e.webhook_service import (
    WebhookService,
    call,
    count_executions,
    grant_secrets,
    raw_exchange,
    secret_manifest,
    status_of,
    wait_served,
)

pytestmark = pytest.mark.e2e

SECRET_VALUE = "fuzz-secret-the-fuzzer-never-sends-7f3a9c"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]

token_chars = st.sampled_from(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
header_names = st.one_of(
    st.sampled_from(
        [
            "Authorization",
            "X-Hub-Signature-256",
            "Content-Type",
            "Expect",
            "Connection",
            "Upgrade",
            "Cookie",
            "X-Forwarded-For",
            "Keep-Alive",
            "TE",
        ]
    ),
    st.text(token_chars, min_size=1, max_size=20),
)
header_values = st.one_of(
    st.sampled_from(
        [
            "Bearer ",
            "Bearer wrong-token",
            "bearer " + "A" * 300,
            "Basic Zm9vOmJhcg==",
            "sha256=",
            "sha256=" + "0" * 64,
            "sha256=" + "g" * 64,
            "sha1=abc",
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=xx",
            "text/plain; charset=nonexistent",
            "100-continue",
            "websocket",
            "close",
        ]
    ),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=80,
    ),
)
bodies = st.one_of(
    st.binary(max_size=3000),
    st.sampled_from(
        [
            b"",
            b"{",
            b'{"key": "wrong"}',
            b'{"key": ["' + b"x" * 100 + b'"]}',
            b'{"key": null}',
            b"[" * 3000,
            b'{"a": NaN}',
            b'"\\ud800"',
            b"a=1&key=wrong&a=%ff%fe",
            b'--xx\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n--xx--\r\n',
            b"--xx\r\n\r\n",
            b"\x00\xff" * 500,
        ]
    ),
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=10,
        ),
        max_size=5,
    ).map(lambda d: repr(d).encode()),
)
suffixes = st.one_of(
    st.sampled_from(
        [
            "",
            "/",
            "/a/b",
            "?key=wrong",
            "?key=",
            "?async=1&key=x",
            "/%2e%2e/%2e%2e/x",
            "?key=%ff%fe",
            "/\u00e9",
            "//",
            "?a=1&a=2",
        ]
    ),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=40
    ).map(lambda s: "/" + s),
)


@pytest.fixture(scope="module")
def fuzz_target(
    webhook_service: WebhookService, kubectl: Any, apply: Any, namespace: str
) -> dict[str, str]:
    grant_secrets(kubectl, namespace)
    apply(
        [
            secret_manifest("fuzz", key=SECRET_VALUE, token=SECRET_VALUE, secret=SECRET_VALUE),
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Flow",
                "metadata": {"name": "fuzz"},
                "spec": {"code": "def handler(system, this):\n    return this.success('x')\n"},
            },
            {
                "apiVersion": "kumulus.dev/v1alpha1",
                "kind": "Webhook",
                "metadata": {"name": "fuzz"},
                "spec": {
                    "flowRef": {"name": "fuzz"},
                    "methods": METHODS,
                    "auth": {
                        "keySecretRef": {"name": "fuzz"},
                        "bearerTokenSecretRef": {"name": "fuzz"},
                        "hmacSecretRef": {"name": "fuzz"},
                    },
                    "response": {"mode": "async"},
                    "maxBodyBytes": 2048,
                },
            },
        ],
        namespace=namespace,
    )
    path = f"/namespaces/{namespace}/webhooks/fuzz/call"
    wait_served(webhook_service.base + path)
    return {"namespace": namespace, "path": path}


@pytest.fixture(scope="module")
def namespace(kubectl: Any) -> Any:
    """A module-wide namespace (the fuzz target lives across all examples)."""
    import uuid

    name = f"kt-fuzz-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def apply(kubectl: Any) -> Any:
    import yaml

    def run(docs: list[dict[str, Any]], namespace: str) -> None:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    return run


answers: dict[str, int] = {}


def exchange(service: WebhookService, data: bytes) -> int | None:
    code = status_of(raw_exchange("127.0.0.1", service.port, data, timeout=20))
    answers[str(code)] = answers.get(str(code), 0) + 1
    return code


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    derandomize=True,
    database=None,
)
@given(
    method=st.one_of(
        st.sampled_from(METHODS),  # weighted: most calls reach authentication
        st.sampled_from(METHODS),
        st.sampled_from(["POST", "OPTIONS", "TRACE", "CONNECT", "PRI"]),
        st.text(token_chars, min_size=1, max_size=12),
    ),
    route=st.sampled_from(["webhook", "webhook", "webhook", "cloudomation", "other", "raw"]),
    suffix=suffixes,
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    body=bodies,
    sign_wrong=st.booleans(),
)
def test_fuzzed_requests_never_5xx_and_never_start_an_execution(
    webhook_service: WebhookService,
    fuzz_target: dict[str, str],
    method: str,
    route: str,
    suffix: str,
    headers: list[tuple[str, str]],
    body: bytes,
    sign_wrong: bool,
) -> None:
    if route == "webhook":
        target = fuzz_target["path"] + suffix
    elif route == "cloudomation":
        target = "/api/latest/webhook/fuzz/call" + suffix
    elif route == "other":
        target = "/namespaces/" + suffix.lstrip("/")
    else:
        target = suffix or "*"
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz"]
    for name, value in headers:
        if name.lower() in ("content-length", "transfer-encoding", "host"):
            continue
        lines.append(f"{name}: {value}")
    if sign_wrong:
        wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        lines.append(f"X-Hub-Signature-256: sha256={wrong}")
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    code = exchange(webhook_service, head + body)
    assert code is None or code < 500, f"{code} for {head!r}"


def test_after_fuzzing_no_execution_and_service_healthy(
    webhook_service: WebhookService, kubectl: Any, fuzz_target: dict[str, str]
) -> None:
    assert answers, "the fuzz test must run first (same module, in order)"
    assert sum(answers.values()) >= 100
    assert "None" not in answers or answers["None"] <= sum(answers.values()) // 10, answers
    assert not any(code.startswith("5") for code in answers), answers
    assert count_executions(kubectl, fuzz_target["namespace"], "fuzz") == []
    assert webhook_service.alive()
    assert call("GET", f"{webhook_service.base}/healthz").status == 200
    print(f"Answers by status: {dict(sorted(answers.items()))}")
