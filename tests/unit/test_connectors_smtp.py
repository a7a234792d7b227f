"""The SMTP connector against a real aiosmtpd server on 127.0.0.1 (started by each test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.local_servers import LOOPBACK, MailServer, free_port

from kumulus.connectors.base import CallContext, ConnectorError
from kumulus.connectors.smtp import SmtpConnector, build_mail

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

CTX = CallContext(namespace="ns", execution="e", connection="mail", timeout=20.0)


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer().start()
    yield server
    server.stop()


@pytest.fixture
def authed_mail() -> Iterator[MailServer]:
    server = MailServer(login="robot", password="right-password").start()
    yield server
    server.stop()


def inputs(server: MailServer, **extra: Any) -> dict[str, Any]:
    return {
        "smtp_host": LOOPBACK,
        "smtp_port": server.port,
        "from": "kumulus@example.test",
        "to": "alice@example.test",
        "subject": "Report",
        "text": "All green.",
        **extra,
    }


async def test_send_text_and_html_to_all_recipients(mail: MailServer) -> None:
    out = await SmtpConnector().run(
        inputs(
            mail,
            to=["alice@example.test", "bob@example.test"],
            cc="carol@example.test",
            bcc=["dave@example.test"],
            html="<p>All <b>green</b>.</p>",
        ),
        CTX,
    )
    assert out["accepted"] == [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
        "dave@example.test",
    ]
    assert out["rejected"] == {}
    assert out["response"].startswith("OK")
    (got,) = mail.received
    assert got.sender == "kumulus@example.test"
    assert sorted(got.recipients) == sorted(out["accepted"])
    assert got.message["Subject"] == "Report"
    assert got.message["To"] == "alice@example.test, bob@example.test"
    assert got.message["Cc"] == "carol@example.test"
    assert got.message["Bcc"] is None  # bcc never shows in the headers
    assert got.message["Message-ID"] == out["message_id"]
    types = [part.get_content_type() for part in got.message.walk()]
    assert types == ["multipart/alternative", "text/plain", "text/html"]


async def test_login_accepted(authed_mail: MailServer) -> None:
    out = await SmtpConnector().run(
        inputs(authed_mail, login="robot", password="right-password"), CTX
    )
    assert out["accepted"] == ["alice@example.test"]
    assert len(authed_mail.received) == 1


async def test_bad_credentials(authed_mail: MailServer) -> None:
    with pytest.raises(ConnectorError) as err:
        await SmtpConnector().run(
            inputs(authed_mail, login="robot", password="wrong-password"), CTX
        )
    assert err.value.reason == "AuthenticationFailed"
    assert err.value.message.startswith(f"SMTP server {LOOPBACK}:{authed_mail.port} rejected")
    assert "535" in err.value.message
    assert "wrong-password" not in err.value.message
    assert authed_mail.received == []


async def test_login_required_but_not_given(authed_mail: MailServer) -> None:
    with pytest.raises(ConnectorError) as err:
        await SmtpConnector().run(inputs(authed_mail), CTX)
    assert err.value.reason in ("SenderRefused", "RemoteError")
    assert "530" in err.value.message


async def test_refused_connection() -> None:
    port = free_port()
    with pytest.raises(ConnectorError) as err:
        await SmtpConnector().run(
            {"smtp_host": LOOPBACK, "smtp_port": port, "from": "a@x.test", "to": "b@x.test"},
            CTX,
        )
    assert err.value.reason == "ConnectionRefused"
    assert f"{LOOPBACK}:{port}" in err.value.message


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"to": None}, "at least one recipient"),
        ({"subject": "hi\r\nBcc: evil@x.test"}, "must not contain line breaks"),
        ({"to": "not-an-address"}, "is not an email address"),
        ({"login": "robot"}, "go together"),
        ({"use_tls": True, "starttls": True}, "exclude each other"),
        ({"smtp_port": "smtp"}, "must be an integer"),
    ],
)
def test_invalid_inputs(extra: dict[str, Any], message: str) -> None:
    base = {"smtp_host": LOOPBACK, "from": "a@x.test", "to": "b@x.test", **extra}
    base = {k: v for k, v in base.items() if v is not None}
    with pytest.raises(ConnectorError, match=message) as err:
        build_mail(base)
    assert err.value.reason == "InvalidInputs"


def test_default_ports_and_html_only() -> None:
    base = {"smtp_host": "h", "from": "a@x.test", "to": "b@x.test"}
    assert build_mail(base).port == 25
    assert build_mail({**base, "use_tls": "true"}).port == 465
    assert build_mail({**base, "starttls": True}).port == 587
    html_only = build_mail({**base, "html": "<p>x</p>"}).message
    assert html_only.get_content_type() == "text/html"


def test_partial_validation() -> None:
    smtp = SmtpConnector()
    assert smtp.validate({"smtp_host": "mail.example.test", "smtp_port": 587}, partial=True) == []
    assert smtp.validate({"smtp_port": 0, "use_tls": "maybe"}, partial=True) == [
        "input 'smtp_port' must be at least 1",
        "input 'use_tls' must be true or false",
    ]
    assert smtp.validate({"smtp_host": "h"}) == ["input 'from' is required"]
