"""``flow_api.System``: the flow's read access to stored records.

It exists so a flow can look at Flows and Connections the way Cloudomation's ``system`` does,
and keep settings (which double as locks; see :mod:`kumulus.runner.settings`). User messages
and files come in later issues and are deliberately absent (see the compatibility table in
``operator/flow_api.py``): a missing method fails loudly with ``AttributeError`` rather than
silently doing nothing.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from kumulus.runner.client import ApiClient, Obj
from kumulus.runner.engine import ReturnWhen
from kumulus.runner.errors import InvalidInputError, ResourceNotFoundError

if TYPE_CHECKING:
    from kumulus.runner.settings import Locks, Setting


def flow_code(client: ApiClient, flow: Obj) -> str:
    """The code of a Flow: inline ``spec.code`` or the ConfigMap key of ``spec.codeFrom``."""
    spec = flow.get("spec") or {}
    name = (flow.get("metadata") or {}).get("name")
    if spec.get("code") is not None:
        return str(spec["code"])
    ref = (spec.get("codeFrom") or {}).get("configMapKeyRef") or {}
    if not ref.get("name") or not ref.get("key"):
        raise ResourceNotFoundError(f"Flow {name} has neither spec.code nor spec.codeFrom.")
    cm = client.get_configmap(ref["name"])
    data = cm.get("data") or {}
    if ref["key"] not in data:
        raise ResourceNotFoundError(
            f"ConfigMap {ref['name']} has no key {ref['key']!r} (Flow {name})."
        )
    return str(data[ref["key"]])


class _Record:
    """A stored record read on demand (``exists``/``get`` re-read the cache lazily)."""

    kind = ""
    fields: tuple[str, ...] = ()

    def __init__(self, client: ApiClient, name: str) -> None:
        self._client = client
        self.name = name
        self._obj: Obj | None = None

    def _read(self) -> Obj:
        raise NotImplementedError

    def _load(self) -> Obj:
        if self._obj is None:
            self._obj = self._read()
        return self._obj

    def exists(self) -> bool:
        """Whether the record exists."""
        try:
            self._load()
        except ResourceNotFoundError:
            return False
        return True

    def _field(self, obj: Obj, field: str) -> Any:
        raise NotImplementedError

    def get(self, *fields: str) -> Any:
        """One field gives its value, several a dict."""
        if not fields:
            raise InvalidInputError(f"Name at least one field: {', '.join(self.fields)}.")
        obj = self._load()
        for f in fields:
            if f not in self.fields:
                raise InvalidInputError(
                    f"Unknown field {f!r} of {self.kind} {self.name}; "
                    f"known: {', '.join(self.fields)}."
                )
        if len(fields) == 1:
            return self._field(obj, fields[0])
        return {f: self._field(obj, f) for f in fields}

    def load(self, *fields: str) -> Any:
        """Re-read the record, then return fields like ``get``."""
        self._obj = None
        return self.get(*fields)


class FlowRecord(_Record):
    """A Flow as ``system.flow(name)`` returns it."""

    kind = "Flow"
    fields = ("name", "code", "description", "handler", "input_schema", "timeout_seconds")

    def _read(self) -> Obj:
        return self._client.get_flow(self.name)

    def _field(self, obj: Obj, field: str) -> Any:
        spec = obj.get("spec") or {}
        if field == "code":
            return flow_code(self._client, obj)
        if field == "name":
            return self.name
        key = {"input_schema": "inputSchema", "timeout_seconds": "timeoutSeconds"}.get(field, field)
        value = spec.get(key)
        if field == "handler" and value is None:
            return "handler"
        return copy.deepcopy(value)


class ConnectionRecord(_Record):
    """A Connection as ``system.connection(name)`` returns it: never its Secret."""

    kind = "Connection"
    fields = ("name", "type", "values", "description")

    def _read(self) -> Obj:
        return self._client.get_connection(self.name)

    def _field(self, obj: Obj, field: str) -> Any:
        spec = obj.get("spec") or {}
        if field == "name":
            return self.name
        if field == "values":
            return copy.deepcopy(spec.get("values") or {})
        return spec.get(field)


class System:
    """What a flow gets as ``system``."""

    return_when = ReturnWhen

    def __init__(self, client: ApiClient, locks: Locks | None = None) -> None:
        self._client = client
        self._locks = locks

    def flow(self, name: str) -> FlowRecord:
        """The Flow ``name`` (read when first used)."""
        return FlowRecord(self._client, name)

    def connection(self, name: str) -> ConnectionRecord:
        """The Connection ``name`` without secrets (read when first used)."""
        return ConnectionRecord(self._client, name)

    def setting(self, name: str) -> Setting:
        """The setting ``name``: ``exists()``, ``get('value')``, ``save(value=...)``, and a lock
        between executions with ``acquire(timeout=None)`` / ``release()``."""
        from kumulus.runner.settings import Setting

        return Setting(self._client, name, self._locks)
