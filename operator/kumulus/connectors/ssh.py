"""The ``SSH`` connector: run a script on a remote host over SSH (asyncssh).

Cloudomation's SSH inputs: ``host``, ``port`` (22), ``username``, ``password`` and/or ``key``
(a private key in OpenSSH or PEM text, optionally with ``passphrase``), ``hostkey``,
``script``, ``connect_timeout`` (10 s) and ``script_timeout`` (the call's ``timeout``).
Outputs: ``retcode`` (the exit status; -1 if the remote process was killed by a signal, then
also ``signal``), ``stdout``, ``stderr`` and ``report`` (= ``stdout``, Cloudomation's name).

Host keys are always verified: ``hostkey`` holds the server's public key(s), one per line, as
``ssh-ed25519 AAAA...`` or as a ``known_hosts`` line (the host field is ignored). Verification
is skipped only when ``hostkey_check: false`` is given explicitly; then ``hostkey`` may be left
out and a warning is logged for every call. The operator's own ``~/.ssh`` (config, keys,
agent, known_hosts) is never used.

A call through a stored Connection may set only ``script``, ``check`` and ``script_timeout``
(``SshConnector.call_inputs``).

A non-zero exit status is a result, not a failure: the execution succeeds and the flow reads
``retcode`` (as Cloudomation's connector does). ``check: true`` makes a non-zero exit status
fail the execution (reason ``NonZeroExit``; the outputs are still written). ``stdout`` and
``stderr`` are decoded as UTF-8 (invalid bytes replaced) and cut to their last
``MAX_STREAM_CHARS`` characters (``stdout_truncated``/``stderr_truncated`` say so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import asyncssh

from kumulus.connectors.base import (
    CallContext,
    Connector,
    ConnectorError,
    input_bool,
    input_float,
    input_int,
    input_str,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
MAX_STREAM_CHARS = 65536
"""Most characters of stdout and of stderr kept (the end of the stream)."""


def _invalid(message: str) -> ConnectorError:
    return ConnectorError(message, reason="InvalidInputs")


def parse_hostkeys(text: str) -> list[asyncssh.SSHKey]:
    """The public keys in ``hostkey``: one per line, bare or in ``known_hosts`` form."""
    keys: list[asyncssh.SSHKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        # A known_hosts line starts with the host pattern(s); a key line with its algorithm.
        if len(fields) >= 3 and not _looks_like_algorithm(fields[0]):
            line = " ".join(fields[1:])
        try:
            keys.append(asyncssh.import_public_key(line))
        except (asyncssh.KeyImportError, ValueError):
            raise _invalid(
                f"input 'hostkey' line {number} is not a public key "
                "(expected e.g. 'ssh-ed25519 AAAA...')"
            ) from None
    if not keys:
        raise _invalid("input 'hostkey' holds no public key")
    return keys


def _looks_like_algorithm(field: str) -> bool:
    return field.startswith(("ssh-", "ecdsa-", "sk-", "rsa-"))


def _private_key(inputs: Mapping[str, Any]) -> asyncssh.SSHKey | None:
    text = input_str(inputs, "key", None)
    if text is None:
        return None
    passphrase = input_str(inputs, "passphrase", None)
    try:
        return asyncssh.import_private_key(text, passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError):
        # Never echo the library's message: it might quote part of the key.
        raise _invalid(
            "input 'key' is not a usable private key (OpenSSH or PEM text; "
            "give 'passphrase' for an encrypted key)"
        ) from None


def _known_hosts(inputs: Mapping[str, Any]) -> Any:
    """asyncssh's ``known_hosts`` argument: the trusted keys, or ``None`` (check disabled)."""
    if not input_bool(inputs, "hostkey_check", True):
        return None
    text = input_str(inputs, "hostkey", None)
    if text is None:
        raise _invalid(
            "input 'hostkey' is required: the server's public host key "
            "(or set hostkey_check: false to skip the check explicitly)"
        )
    return (parse_hostkeys(text), [], [])


def _tail(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_STREAM_CHARS:
        return text, False
    return text[-MAX_STREAM_CHARS:], True


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def outputs_of(exit_status: int | None, signal: Any, stdout: Any, stderr: Any) -> dict[str, Any]:
    """The connector's outputs from what the remote process produced."""
    out, out_cut = _tail(_text(stdout))
    err, err_cut = _tail(_text(stderr))
    result: dict[str, Any] = {
        "retcode": exit_status if exit_status is not None and exit_status >= 0 else -1,
        "stdout": out,
        "stderr": err,
        "report": out,
    }
    if signal:
        result["signal"] = str(signal[0] if isinstance(signal, tuple) else signal)
    if out_cut:
        result["stdout_truncated"] = True
    if err_cut:
        result["stderr_truncated"] = True
    return result


class SshConnector(Connector):
    """Runs ``script`` over SSH, one connection per call."""

    type: ClassVar[str] = "SSH"
    secret_keys: ClassVar[frozenset[str]] = frozenset({"password", "key", "passphrase"})
    call_inputs: ClassVar[frozenset[str]] = frozenset({"script", "check", "script_timeout"})
    """A call through a stored Connection gives the script (and how to judge it); the host,
    port, user, credentials and host key checks are the Connection's."""

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> list[str]:
        problems: list[str] = []
        required = () if partial else ("host", "username", "script")
        for key in required:
            if values.get(key) is None:
                problems.append(f"input {key!r} is required")
        checks = (
            lambda: input_str(values, "host", None),
            lambda: input_str(values, "username", None),
            lambda: input_str(values, "script", None),
            lambda: input_str(values, "password", None),
            lambda: input_int(values, "port", None, minimum=1, maximum=65535),
            lambda: input_float(values, "connect_timeout", None, positive=True),
            lambda: input_float(values, "script_timeout", None, positive=True),
            lambda: input_bool(values, "check", False),
            lambda: _private_key(values),
            lambda: (
                _known_hosts(values)
                if not partial or values.get("hostkey") is not None
                else input_bool(values, "hostkey_check", True)
            ),
        )
        for check in checks:
            try:
                check()
            except ConnectorError as exc:
                problems.append(exc.message)
        if not partial and values.get("password") is None and values.get("key") is None:
            problems.append("give 'password' or 'key' to log in")
        return problems

    async def run(self, inputs: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        host = input_str(inputs, "host")
        port = input_int(inputs, "port", 22, minimum=1, maximum=65535)
        username = input_str(inputs, "username")
        script = input_str(inputs, "script")
        password = input_str(inputs, "password", None)
        key = _private_key(inputs)
        if password is None and key is None:
            raise _invalid("give 'password' or 'key' to log in")
        known_hosts = _known_hosts(inputs)
        check = input_bool(inputs, "check", False)
        connect_timeout = min(
            input_float(inputs, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, positive=True),
            ctx.timeout,
        )
        script_timeout = min(
            input_float(inputs, "script_timeout", ctx.timeout, positive=True), ctx.timeout
        )
        where = f"{host}:{port}"
        if known_hosts is None:
            log.warning(
                "Skipped the host key check of %s for Execution %s/%s (hostkey_check: false).",
                where,
                ctx.namespace,
                ctx.execution,
            )
        try:
            async with asyncssh.connect(
                host,
                port=port,
                username=username,
                password=password,
                client_keys=[key] if key is not None else None,
                known_hosts=known_hosts,
                config=None,
                agent_path=None,
                gss_auth=False,
                gss_kex=False,
                connect_timeout=connect_timeout,
                login_timeout=connect_timeout,
            ) as conn:
                try:
                    result = await conn.run(
                        script,
                        check=False,
                        timeout=script_timeout,
                        encoding="utf-8",
                        errors="replace",
                    )
                except asyncssh.TimeoutError as exc:
                    raise ConnectorError(
                        f"the script on {where} did not finish within {script_timeout:g} s",
                        reason="Timeout",
                        outputs=outputs_of(
                            exc.exit_status, exc.exit_signal, exc.stdout, exc.stderr
                        ),
                    ) from None
        except ConnectorError:
            raise
        except Exception as exc:
            raise _map_error(exc, where, username, connect_timeout) from None
        outputs = outputs_of(result.exit_status, result.exit_signal, result.stdout, result.stderr)
        if check and outputs["retcode"] != 0:
            raise ConnectorError(
                f"the script on {where} exited with {outputs['retcode']}",
                reason="NonZeroExit",
                outputs=outputs,
            )
        return outputs


def _map_error(exc: BaseException, where: str, username: str, timeout: float) -> ConnectorError:
    """A clear ConnectorError for what asyncssh or the network raised (never a secret)."""
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return ConnectorError(
            f"the host key of {where} does not match 'hostkey' (not trusted): {exc.reason}",
            reason="HostKeyMismatch",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return ConnectorError(
            f"{where} rejected the login of user {username!r} (wrong password or key)",
            reason="AuthenticationFailed",
        )
    if isinstance(exc, asyncssh.DisconnectError):
        return ConnectorError(f"{where} closed the SSH connection: {exc.reason}", reason="SshError")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return ConnectorError(f"{where} refused to run the script: {exc.reason}", reason="SshError")
    if isinstance(exc, TimeoutError):
        return ConnectorError(
            f"could not connect and log in to {where} within {timeout:g} s", reason="Timeout"
        )
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return ConnectorError(f"connection refused by {where}", reason="ConnectionRefused")
    if isinstance(exc, OSError):
        return ConnectorError(
            f"could not connect to {where}: {exc.strerror or exc}", reason="ConnectionFailed"
        )
    return ConnectorError(f"SSH call to {where} failed: {type(exc).__name__}: {exc}")
