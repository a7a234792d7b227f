"""Settings of the webhook service: one dataclass, each field overridable by the environment.

The service reads its configuration once at start-up from ``KUMULUS_WEBHOOK_<FIELD>``
variables (a prefix of its own, so it never picks up the operator's ``KUMULUS_NAMESPACES``
when both run from one environment). The Helm chart and ``make dev-up`` set them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

PREFIX = "KUMULUS_WEBHOOK_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """Configuration of ``kumulus-webhook``.

    Every field can be overridden by ``KUMULUS_WEBHOOK_<FIELD NAME UPPER>``, e.g.
    ``KUMULUS_WEBHOOK_PORT=9000``. Lists are comma separated.
    """

    namespace: str = "default"
    """Namespace of the Cloudomation-style route ``/api/latest/webhook/<name>/call``."""

    namespaces: tuple[str, ...] = ()
    """Namespaces whose Webhooks are served; empty means all namespaces (cluster-wide read of
    Webhooks and Flows). Secrets are only ever watched in namespaces holding a Webhook that
    references one."""

    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; the Helm chart sets ``0.0.0.0`` in the Pod."""

    port: int = 8080
    """Port to bind."""

    max_in_flight: int = 64
    """Calls admitted at once (body read, auth, Execution creation); more get 503 at once."""

    max_sync_waiting: int = 64
    """Sync calls waiting for their Execution at once (one watch each); more get 503."""

    retry_after_seconds: int = 1
    """``Retry-After`` of the 503 answers."""

    max_inputs_bytes: int = 1048576
    """Largest JSON size of one Execution's inputs; bigger requests get 413."""

    status_interval_seconds: float = 10.0
    """How often ``status.lastTriggeredTime`` of a called Webhook is written, at most."""

    secret_sync_wait_seconds: float = 5.0
    """How long a call to a just-created Webhook waits for its Secrets to be listed."""

    api_timeout_seconds: float = 10.0
    """Timeout of one API request (creating an Execution, patching a status)."""

    log_level: str = "INFO"
    """Python log level of the service."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        """Build the settings from ``KUMULUS_WEBHOOK_*`` (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = PREFIX + field.name.upper()
            if key in env:
                values[field.name] = _parse(key, str(field.type), env[key])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Reject values that cannot work (raises ValueError naming the variable)."""
        for name in ("max_in_flight", "max_sync_waiting", "max_inputs_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{PREFIX}{name.upper()} must be at least 1")
        if not 0 < self.port < 65536:
            raise ValueError(f"{PREFIX}PORT must be a TCP port, got {self.port}")
        if self.status_interval_seconds <= 0 or self.api_timeout_seconds <= 0:
            raise ValueError("intervals and timeouts must be positive")


def _parse(key: str, type_name: str, raw: str) -> Any:
    text = raw.strip()
    try:
        if type_name == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if type_name.startswith("tuple"):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
    except ValueError as err:
        raise ValueError(f"{key}: cannot use {raw!r} ({type_name} expected)") from err
    return text
