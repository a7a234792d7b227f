"""The pure webhook rules: authentication, body parsing, inputs, rate limiting, answers, Ready."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from kumulus.api.v1alpha1 import WebhookSpec
from kumulus.domain import webhook as rules

pytestmark = pytest.mark.unit

KEY, TOKEN, SECRET = b"k3y", b"t0ken", b"s3cret"
ALL = rules.AuthConfig(
    methods=frozenset({"key", "bearer", "hmac"}),
    secrets={"key": KEY, "bearer": TOKEN, "hmac": SECRET},
)


def sig(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def spec(**extra: Any) -> WebhookSpec:
    data: dict[str, Any] = {"flowRef": {"name": "f"}, "auth": {"keySecretRef": {"name": "s"}}}
    data.update(extra)
    return WebhookSpec.model_validate(data)


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("creds", "method"),
    [
        (rules.Credentials(keys=("k3y",)), "key"),
        (rules.Credentials(keys=("wrong", "k3y")), "key"),
        (rules.Credentials(authorization="Bearer t0ken"), "bearer"),
        (rules.Credentials(authorization="bearer   t0ken "), "bearer"),
        (rules.Credentials(signature=sig(SECRET, b'{"a": 1}'), body=b'{"a": 1}'), "hmac"),
        (
            rules.Credentials(
                signature=sig(SECRET, b"x").upper().replace("SHA256", "sha256"), body=b"x"
            ),
            "hmac",
        ),
    ],
)
def test_each_method_admits_its_right_credential(creds: rules.Credentials, method: str) -> None:
    assert rules.authenticate(ALL, creds) == method


@pytest.mark.parametrize(
    "creds",
    [
        rules.Credentials(),
        rules.Credentials(keys=("k3y ",)),
        rules.Credentials(keys=("",)),
        rules.Credentials(keys=("t0ken",)),  # a right secret of another method
        rules.Credentials(authorization="Bearer k3y"),
        rules.Credentials(authorization="Basic t0ken"),
        rules.Credentials(authorization="t0ken"),
        rules.Credentials(authorization="Bearer"),
        rules.Credentials(signature=sig(SECRET, b'{"a": 1}'), body=b'{"a":1}'),  # other bytes
        rules.Credentials(signature=sig(b"other", b"x"), body=b"x"),
        rules.Credentials(signature="sha1=" + hashlib.sha1(b"x").hexdigest(), body=b"x"),
        rules.Credentials(signature="garbage\udcff\u00e9", body=b"x"),
        rules.Credentials(keys=("\udcff\ud800",), authorization="Bearer \udcff"),
    ],
)
def test_wrong_or_missing_credentials_are_refused(creds: rules.Credentials) -> None:
    assert rules.authenticate(ALL, creds) is None


def test_a_missing_or_empty_secret_never_matches() -> None:
    missing = rules.AuthConfig(methods=frozenset({"key", "bearer", "hmac"}), secrets={})
    empty = rules.AuthConfig(
        methods=frozenset({"key", "bearer", "hmac"}),
        secrets={"key": b"", "bearer": b"", "hmac": b""},
    )
    for config in (missing, empty):
        assert rules.authenticate(config, rules.Credentials(keys=("",))) is None
        assert rules.authenticate(config, rules.Credentials(authorization="Bearer ")) is None
        dummy = rules._DUMMY
        assert rules.authenticate(config, rules.Credentials(keys=(dummy.decode(),))) is None
        creds = rules.Credentials(signature=sig(dummy, b"x"), body=b"x")
        assert rules.authenticate(config, creds) is None
        assert (
            rules.authenticate(config, rules.Credentials(signature=sig(b"", b"x"), body=b"x"))
            is None
        )


def test_unconfigured_methods_do_not_admit() -> None:
    only_key = rules.AuthConfig(methods=frozenset({"key"}), secrets={"key": KEY, "bearer": TOKEN})
    assert rules.authenticate(only_key, rules.Credentials(authorization="Bearer t0ken")) is None
    assert rules.authenticate(only_key, rules.Credentials(keys=("k3y",))) == "key"


def test_allow_unauthenticated_admits_anyone() -> None:
    config = rules.AuthConfig(allow_unauthenticated=True)
    assert rules.authenticate(config, rules.Credentials()) == "unauthenticated"
    with_key = rules.AuthConfig(
        methods=frozenset({"key"}), secrets={"key": KEY}, allow_unauthenticated=True
    )
    assert rules.authenticate(with_key, rules.Credentials(keys=("k3y",))) == "key"
    assert rules.authenticate(with_key, rules.Credentials(keys=("no",))) == "unauthenticated"


def test_reprs_never_show_secret_values() -> None:
    text = repr(ALL) + repr(rules.Credentials(keys=("k3y",), authorization="Bearer t0ken"))
    for value in ("k3y", "t0ken", "s3cret"):
        assert value not in text


def test_the_401_answer_is_one_constant() -> None:
    assert rules.Answer(401, "application/json", {"error": "unauthorized"}) == rules.UNAUTHORIZED


# --------------------------------------------------------------------------- bodies


def test_json_bodies_are_parsed_and_strict() -> None:
    assert rules.parse_body("application/json", b'{"a": [1, 2]}').json == {"a": [1, 2]}
    assert rules.parse_body("application/vnd.github+json; charset=utf-8", b"[1]").json == [1]
    assert rules.parse_body("application/json", b"\xef\xbb\xbf{}").json == {}
    for bad in (b'{"a": ', b"NaN", b'{"a": Infinity}', b"\xff\xfe", b"[" * 5000, b"1" * 5000):
        with pytest.raises(rules.BadRequest):
            rules.parse_body("application/json", bad)


def test_json_nesting_is_bounded() -> None:
    ok = b"[" * rules.MAX_JSON_DEPTH + b"]" * rules.MAX_JSON_DEPTH
    assert rules.parse_body("application/json", ok).kind == "json"
    deep = b"[" * (rules.MAX_JSON_DEPTH + 2) + b"]" * (rules.MAX_JSON_DEPTH + 2)
    with pytest.raises(rules.BadRequest, match="nested"):
        rules.parse_body("application/json", deep)


def test_lone_surrogates_in_json_become_replacement_characters() -> None:
    parsed = rules.parse_body("application/json", b'{"\\ud800": "a\\udc00"}')
    assert parsed.json == {"\ufffd": "a\ufffd"}
    json.dumps(parsed.json).encode("utf-8")


def test_form_bodies_land_in_json() -> None:
    form = rules.parse_body("application/x-www-form-urlencoded", b"a=1&a=2&b=%C3%A9&c=")
    assert form.kind == "form"
    assert form.json == {"a": ["1", "2"], "b": "\u00e9", "c": ""}


def test_multipart_form_fields_and_files() -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="name"\r\n\r\nAda\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nhello\r\n--XX--\r\n"
    )
    parsed = rules.parse_body("multipart/form-data; boundary=XX", body)
    assert parsed.json == {
        "name": "Ada",
        "file": {"filename": "a.txt", "contentType": "text/plain", "size": 5, "text": "hello"},
    }
    with pytest.raises(rules.BadRequest):
        rules.parse_body("multipart/form-data", body)


def test_other_bodies_are_text_and_untyped_json_is_json() -> None:
    assert rules.parse_body("text/plain", b"hi \xff").text == "hi \ufffd"
    assert rules.parse_body("", b'{"a": 1}').json == {"a": 1}
    assert rules.parse_body("", b"not json").kind == "text"
    assert rules.parse_body("application/json", b"").kind == "empty"


def test_body_key_only_from_json_objects() -> None:
    assert rules.body_key(rules.parse_body("application/json", b'{"key": "k"}')) == "k"
    assert rules.body_key(rules.parse_body("application/json", b'{"key": 1}')) is None
    assert rules.body_key(rules.parse_body("application/x-www-form-urlencoded", b"key=k")) is None


# --------------------------------------------------------------------------- inputs


def test_inputs_drop_credentials_and_hop_by_hop_headers() -> None:
    parsed = rules.parse_body("application/json", b'{"key": "k3y", "a": 1}')
    inputs = rules.build_inputs(
        "POST",
        "/x/y",
        [("key", "k3y"), ("async", "1"), ("q", "1"), ("q", "2"), ("r", "")],
        [
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer t0ken"),
            ("X-Hub-Signature-256", "sha256=00"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "p"),
            ("Keep-Alive", "5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Multi", "a"),
            ("x-multi", "b"),
        ],
        parsed,
    )
    assert inputs == {
        "method": "POST",
        "path": "/x/y",
        "query": {"q": ["1", "2"], "r": ""},
        "headers": {"content-type": "application/json", "x-multi": "a, b"},
        "json": {"a": 1},
    }
    assert "k3y" not in json.dumps(inputs)


def test_text_bodies_come_as_text() -> None:
    inputs = rules.build_inputs("PUT", "", [], [], rules.parse_body("text/csv", b"a,b"))
    assert inputs["json"] is None
    assert inputs["text"] == "a,b"


def test_inputs_are_valid_unicode() -> None:
    inputs = rules.build_inputs(
        "POST", "/\udcff", [("\udcfe", "\ud800")], [("x-a", "\udcff")], rules.ParsedBody("empty")
    )
    json.dumps(inputs, ensure_ascii=False).encode("utf-8")
    assert rules.inputs_size(inputs) > 0


def test_async_query_values() -> None:
    assert rules.wants_async([("async", "1")])
    assert rules.wants_async([("async", "True")])
    assert not rules.wants_async([("async", "0")])
    assert not rules.wants_async([])


# --------------------------------------------------------------------------- rate limiting


def test_token_bucket_allows_burst_then_refills() -> None:
    bucket = rules.TokenBucket.full(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) > 0
    assert bucket.take(100.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)  # capped at burst, minus the one taken


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert rules.retry_after_header(0.01) == "1"
    assert rules.retry_after_header(1.2) == "2"


# --------------------------------------------------------------------------- executions


def test_execution_manifest_carries_mode_template_and_label() -> None:
    s = spec(
        mode="development",
        executionTemplate={
            "timeoutSeconds": 30,
            "retry": {"limit": 2},
            "ttlSecondsAfterFinished": 60,
            "podTemplate": {"serviceAccountName": "sa"},
        },
    )
    manifest = rules.execution_manifest("ns", "hook", s, {"method": "POST"})
    assert manifest["metadata"] == {
        "generateName": "hook-",
        "namespace": "ns",
        "labels": {"kumulus.dev/webhook": "hook"},
    }
    assert "ownerReferences" not in manifest["metadata"]
    assert manifest["spec"]["flowRef"] == {"name": "f"}
    assert manifest["spec"]["mode"] == "development"
    assert manifest["spec"]["inputs"] == {"method": "POST"}
    assert manifest["spec"]["timeoutSeconds"] == 30
    assert manifest["spec"]["retry"]["limit"] == 2
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 60
    assert manifest["spec"]["podTemplate"] == {"serviceAccountName": "sa"}


def test_long_webhook_names_fit_generate_name_and_label() -> None:
    name = "a" * 200
    manifest = rules.execution_manifest("ns", name, spec(), {})
    assert len(manifest["metadata"]["generateName"]) <= 58
    assert len(manifest["metadata"]["labels"]["kumulus.dev/webhook"]) <= 63


def test_final_answer_is_the_summary_or_the_html() -> None:
    done = {
        "metadata": {"name": "e", "namespace": "ns"},
        "status": {"phase": "Succeeded", "outputs": {"a": 1}, "message": "ok"},
    }
    assert rules.final_answer(done) == rules.Answer(
        200,
        "application/json",
        {
            "name": "e",
            "namespace": "ns",
            "phase": "Succeeded",
            "status": "ENDED_SUCCESS",
            "outputs": {"a": 1},
            "message": "ok",
        },
    )
    failed = {
        "metadata": {"name": "e", "namespace": "ns"},
        "status": {"phase": "Failed", "message": "step 2", "statusMessage": "Traceback ..."},
    }
    assert rules.final_answer(failed).body["status"] == "ENDED_ERROR"
    assert rules.final_answer(failed).body["message"] == "Traceback ..."
    html = {
        "metadata": {"name": "e"},
        "status": {
            "phase": "Succeeded",
            "runner": {"webhookResponse": {"html": "<b>hi</b>", "statusCode": 201}},
        },
    }
    assert rules.final_answer(html) == rules.Answer(201, "text/html", "<b>hi</b>")


def test_accepted_answer_names_the_execution() -> None:
    answer = rules.accepted_answer({"metadata": {"name": "e", "namespace": "ns"}})
    assert answer.status == 202
    assert answer.body["name"] == "e"
    assert answer.body["namespace"] == "ns"
    assert answer.body["status"] == "PENDING"


# --------------------------------------------------------------------------- the resource


def test_url_and_path() -> None:
    assert rules.webhook_path("ns", "h") == "/namespaces/ns/webhooks/h/call"
    assert rules.webhook_url("", "ns", "h") == "/namespaces/ns/webhooks/h/call"
    assert rules.webhook_url("http://x:1/", "ns", "h") == "http://x:1/namespaces/ns/webhooks/h/call"


def test_readiness() -> None:
    s = spec(
        auth={
            "keySecretRef": {"name": "a"},
            "hmacSecretRef": {"name": "b", "key": "sig"},
        }
    )
    present = {"a": frozenset({"key"}), "b": frozenset({"sig"})}
    assert rules.readiness(s, True, present).ok
    assert rules.readiness(s, False, present).reason == "FlowNotFound"
    missing = rules.readiness(s, True, {"a": frozenset({"key"}), "b": None})
    assert (missing.ok, missing.reason) == (False, "SecretNotFound")
    assert "Secret b" in missing.message
    no_key = rules.readiness(s, True, {"a": frozenset(), "b": frozenset({"sig"})})
    assert (no_key.ok, no_key.reason) == (False, "SecretKeyNotFound")
    disabled = rules.readiness(spec(enabled=False), True, {"s": frozenset({"key"})})
    assert (disabled.ok, disabled.reason) == (False, "Disabled")
    open_hook = spec(auth={"allowUnauthenticated": True})
    assert rules.readiness(open_hook, True, {}).ok


def test_a_webhook_without_auth_is_invalid() -> None:
    with pytest.raises(ValueError, match="needs auth"):
        WebhookSpec.model_validate({"flowRef": {"name": "f"}})
    with pytest.raises(ValueError, match="needs auth"):
        WebhookSpec.model_validate({"flowRef": {"name": "f"}, "auth": {}})
