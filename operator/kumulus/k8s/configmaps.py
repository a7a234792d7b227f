"""ConfigMaps: the source of a Flow's ``codeFrom.configMapKeyRef``."""

from __future__ import annotations

from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap

from kumulus.k8s.resources import client, is_not_found


async def get_configmap_key(namespace: str, name: str, key: str) -> str | None:
    """The value of ``key`` in ConfigMap ``name``; ``None`` if the map or key is missing."""
    try:
        cm = await client().get(ConfigMap, name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return None
        raise
    data = cm.data or {}
    return data.get(key)
