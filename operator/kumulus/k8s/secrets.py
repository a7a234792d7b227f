"""Reading the Secret a Connection names: the only Secret access in Kumulus.

Only the connection executor calls this (RBAC ``secrets: get`` is granted to it alone, see
``config/rbac/connection-executor-clusterrole.yaml``). The data is returned still base64
encoded; :func:`kumulus.domain.connection.decode_secret` decodes it. Nothing here logs,
caches or copies the data.
"""

from __future__ import annotations

from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret

from kumulus.k8s.resources import client, is_not_found, status_code


class SecretForbiddenError(PermissionError):
    """The executor's identity may not read the Secret (HTTP 403)."""


async def read_secret_data(namespace: str, name: str) -> dict[str, str] | None:
    """The Secret's ``data`` (base64 values), ``{}`` if it has none, ``None`` if it is missing.

    Raises :class:`SecretForbiddenError` when RBAC denies the read.
    """
    try:
        secret = await client().get(Secret, name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return None
        if status_code(err) == 403:
            raise SecretForbiddenError(
                f"secrets {name!r} is forbidden in namespace {namespace}"
            ) from None
        raise
    return dict(secret.data or {})
