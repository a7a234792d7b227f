"""Connector types: the code that calls third-party systems for CONNECTION executions.

Kept apart from the reconciler so the client libraries (httpx, aiosmtplib, asyncpg,
asyncssh) and the credentials they use live only in the connection executor. The plugin
interface and the registry are in :mod:`kumulus.connectors.base`; each built-in type has
its own module (``rest``, ``smtp``, ``sqlpg``, ``ssh``) imported on first use.
"""

from kumulus.connectors.base import (
    BUILTIN_CONNECTORS,
    ENTRY_POINT_GROUP,
    CallContext,
    Connector,
    ConnectorError,
    ConnectorUnavailableError,
    UnknownConnectorTypeError,
    get_connector,
    known_types,
)

__all__ = [
    "BUILTIN_CONNECTORS",
    "ENTRY_POINT_GROUP",
    "CallContext",
    "Connector",
    "ConnectorError",
    "ConnectorUnavailableError",
    "UnknownConnectorTypeError",
    "get_connector",
    "known_types",
]
