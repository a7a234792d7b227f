"""The ``SMTP`` connector: send one email with aiosmtplib, Cloudomation's input names.

Inputs:

=====================  ================================================================
``smtp_host``          the server (required)
``smtp_port``          default 465 with ``use_tls``, 587 with ``starttls: true``, else 25
``use_tls``            implicit TLS from the first byte (SMTPS; default false)
``starttls``           true: require STARTTLS; false: never; unset: when the server
                       offers it
``validate_certs``     verify the server's TLS certificate (default true)
``login``/``password``  authenticate (``username`` is accepted for ``login``)
``from``               the sender address (required)
``to``, ``cc``,        recipients: a string (comma separated) or a list; at least one
``bcc``                in all (``bcc`` never appears in the headers)
``subject``, ``text``,  the message: a plain text part, an HTML part, or both
``html``
``reply_to``           optional Reply-To header
=====================  ================================================================

A call through a stored Connection may set only the recipients, ``subject``, ``text``,
``html`` and ``reply_to`` (``SmtpConnector.call_inputs``).

Outputs: ``accepted`` (recipients the server took), ``rejected`` (recipient -> the server's
answer, when only some were refused), ``message_id``, ``response`` (the server's final
answer). A connection per call: SMTP sessions are short and servers limit them.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, ClassVar

import aiosmtplib

from kumulus.connectors.base import (
    CallContext,
    Connector,
    ConnectorError,
    connection_refused,
    input_bool,
    input_int,
    input_str,
    input_str_list,
)

__all__ = ["SmtpConnector", "SmtpMail", "build_mail"]


def _invalid(message: str) -> ConnectorError:
    return ConnectorError(message, reason="InvalidInputs")


def _no_newline(key: str, value: str | None) -> None:
    if value is not None and ("\r" in value or "\n" in value):
        raise _invalid(f"input {key!r} must not contain line breaks")


@dataclass
class SmtpMail:
    """One email and how to deliver it, checked (no I/O)."""

    host: str
    port: int
    use_tls: bool
    starttls: bool | None
    validate_certs: bool
    login: str | None
    password: str | None
    sender: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    message: EmailMessage

    @property
    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]


def _starttls(inputs: Mapping[str, Any]) -> bool | None:
    if inputs.get("starttls") is None:
        return None
    return input_bool(inputs, "starttls", False)


def build_mail(inputs: Mapping[str, Any]) -> SmtpMail:
    """Check the inputs and build the message; raises ``ConnectorError(InvalidInputs)``."""
    host = input_str(inputs, "smtp_host")
    use_tls = input_bool(inputs, "use_tls", False)
    starttls = _starttls(inputs)
    if use_tls and starttls:
        raise _invalid("inputs 'use_tls' and 'starttls' exclude each other")
    default_port = 465 if use_tls else 587 if starttls else 25
    port = input_int(inputs, "smtp_port", default_port, minimum=1, maximum=65535)
    login = input_str(inputs, "login", None) or input_str(inputs, "username", None)
    password = input_str(inputs, "password", None)
    if (login is None) != (password is None):
        raise _invalid("inputs 'login' and 'password' go together")
    sender = input_str(inputs, "from")
    to = input_str_list(inputs, "to", [])
    cc = input_str_list(inputs, "cc", [])
    bcc = input_str_list(inputs, "bcc", [])
    if not (to or cc or bcc):
        raise _invalid("input 'to' (or 'cc'/'bcc') needs at least one recipient")
    subject = input_str(inputs, "subject", "") or ""
    reply_to = input_str(inputs, "reply_to", None)
    for key, value in (("from", sender), ("subject", subject), ("reply_to", reply_to)):
        _no_newline(key, value)
    for key, values in (("to", to), ("cc", cc), ("bcc", bcc)):
        for value in values:
            _no_newline(key, value)
            if "@" not in value:
                raise _invalid(f"input {key!r}: {value!r} is not an email address")
    if "@" not in sender:
        raise _invalid(f"input 'from': {sender!r} is not an email address")
    text = input_str(inputs, "text", None)
    html = input_str(inputs, "html", None)
    message = EmailMessage()
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    domain = sender.rsplit("@", 1)[-1] or "kumulus.local"
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    if html is not None and text is None:
        message.set_content(html, subtype="html")
    else:
        message.set_content(text or "")
        if html is not None:
            message.add_alternative(html, subtype="html")
    return SmtpMail(
        host=host,
        port=port,
        use_tls=use_tls,
        starttls=starttls,
        validate_certs=input_bool(inputs, "validate_certs", True),
        login=login,
        password=password,
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        message=message,
    )


def _answer(answer: aiosmtplib.SMTPResponseException | aiosmtplib.SMTPResponse) -> str:
    return f"{answer.code} {answer.message}".strip()


class SmtpConnector(Connector):
    """Sends email (aiosmtplib)."""

    type: ClassVar[str] = "SMTP"
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password"})
    call_inputs: ClassVar[frozenset[str]] = frozenset(
        {"to", "cc", "bcc", "subject", "text", "html", "reply_to"}
    )
    """A call through a stored Connection writes the message (recipients, subject, body);
    the server, its TLS settings, the login and the sender (``from``) are the Connection's."""

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> list[str]:
        if not partial:
            try:
                build_mail(values)
            except ConnectorError as err:
                return [err.message]
            return []
        problems: list[str] = []
        checks = (
            lambda: input_int(values, "smtp_port", None, minimum=1, maximum=65535),
            lambda: input_bool(values, "use_tls", False),
            lambda: _starttls(values),
            lambda: input_bool(values, "validate_certs", True),
            lambda: input_str_list(values, "to", None),
            lambda: input_str_list(values, "cc", None),
            lambda: input_str_list(values, "bcc", None),
            lambda: input_str(values, "smtp_host", None),
        )
        for check in checks:
            try:
                check()
            except ConnectorError as err:
                problems.append(err.message)
        if values.get("use_tls") in (True, "true") and values.get("starttls") in (True, "true"):
            problems.append("inputs 'use_tls' and 'starttls' exclude each other")
        return problems

    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        mail = build_mail(inputs)
        where = f"SMTP server {mail.host}:{mail.port}"
        try:
            rejected, response = await aiosmtplib.send(
                mail.message,
                sender=mail.sender,
                recipients=mail.recipients,
                hostname=mail.host,
                port=mail.port,
                username=mail.login,
                password=mail.password,
                use_tls=mail.use_tls,
                start_tls=mail.starttls,
                validate_certs=mail.validate_certs,
                timeout=ctx.timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ConnectorError(
                f"{where} rejected the login: {_answer(exc)}", reason="AuthenticationFailed"
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(f"{r.recipient} ({_answer(r)})" for r in exc.recipients)
            raise ConnectorError(
                f"{where} refused every recipient: {refused}", reason="RecipientsRefused"
            ) from None
        except aiosmtplib.SMTPSenderRefused as exc:
            raise ConnectorError(
                f"{where} refused the sender {exc.sender}: {_answer(exc)}",
                reason="SenderRefused",
            ) from None
        except aiosmtplib.SMTPTimeoutError as exc:
            raise ConnectorError(
                f"{where} did not answer within {ctx.timeout:g}s: {exc}", reason="Timeout"
            ) from None
        except aiosmtplib.SMTPConnectError as exc:
            if connection_refused(exc):
                raise ConnectorError(
                    f"{where}: connection refused.", reason="ConnectionRefused"
                ) from None
            raise ConnectorError(
                f"{where}: could not connect: {exc}", reason="ConnectionFailed"
            ) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise ConnectorError(f"{where}: {exc}", reason="NotSupported") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise ConnectorError(f"{where} answered {_answer(exc)}", reason="RemoteError") from None
        except aiosmtplib.SMTPException as exc:
            raise ConnectorError(f"{where}: {exc}", reason="RemoteError") from None
        except OSError as exc:
            reason = "ConnectionRefused" if connection_refused(exc) else "ConnectionFailed"
            raise ConnectorError(f"{where}: {exc.strerror or exc}", reason=reason) from None
        rejected_out = {addr: _answer(resp) for addr, resp in rejected.items()}
        accepted = [r for r in mail.recipients if r not in rejected_out]
        return {
            "accepted": accepted,
            "rejected": rejected_out,
            "message_id": str(mail.message["Message-ID"]),
            "response": response,
        }
