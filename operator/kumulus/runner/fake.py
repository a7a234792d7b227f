"""An in-memory ``ApiClient``: run and test flows without a cluster.

It exists for unit tests of the runner and for flow authors who want to try a handler locally.
It keeps Executions, Flows, Connections, ConfigMaps and Leases in dicts, numbers every change with a
resourceVersion and serves watches from an event log. An optional ``on_create`` hook plays the
operator for children (e.g. ends them with a phase and outputs).
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kumulus.runner.client import AlreadyExistsError, ApiRequestError, ConflictError, Obj
from kumulus.runner.errors import ResourceNotFoundError


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeClient:
    """``ApiClient`` in memory; thread-safe; ``close()`` ends open watches."""

    def __init__(
        self,
        namespace: str = "default",
        on_create: Callable[[FakeClient, Obj], None] | None = None,
        on_patch: Callable[[FakeClient, Obj], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.on_create = on_create
        self.on_patch = on_patch
        self.executions: dict[str, Obj] = {}
        self.flows: dict[str, Obj] = {}
        self.connections: dict[str, Obj] = {}
        self.configmaps: dict[str, Obj] = {}
        self.leases: dict[str, Obj] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self._rv = itertools.count(1)
        self._events: list[tuple[int, str, Obj]] = []
        self._cond = threading.Condition()
        self._closed = False

    # -- helpers for tests ------------------------------------------------------------------

    def add_execution(self, name: str, spec: Obj, status: Obj | None = None) -> Obj:
        """Store an Execution as if a user had applied it."""
        obj: Obj = {
            "apiVersion": "kumulus.dev/v1alpha1",
            "kind": "Execution",
            "metadata": {"name": name, "namespace": self.namespace, "uid": f"uid-{name}"},
            "spec": spec,
        }
        if status is not None:
            obj["status"] = status
        self._store(name, obj, "ADDED")
        return copy.deepcopy(obj)

    def add_flow(self, name: str, code: str, **spec: Any) -> None:
        """Store a Flow with inline code."""
        self.flows[name] = {"metadata": {"name": name}, "spec": {"code": code, **spec}}

    def update_status(self, name: str, **status: Any) -> Obj:
        """Merge into an Execution's status, like the operator does (emits MODIFIED)."""
        with self._cond:
            obj = merge_patch(self._get(name), {"status": status})
            self._store(name, obj, "MODIFIED")
            return copy.deepcopy(obj)

    def update_spec(self, name: str, **spec: Any) -> Obj:
        """Merge into an Execution's spec, like a user does (emits MODIFIED)."""
        with self._cond:
            obj = merge_patch(self._get(name), {"spec": spec})
            self._store(name, obj, "MODIFIED")
            return copy.deepcopy(obj)

    def runner_states(self, name: str) -> list[str]:
        """Every ``status.runner.state`` the runner reported for ``name``, in order."""
        found = []
        for method, target, payload in self.calls:
            if method == "patch_execution_status" and target == name:
                state = ((payload.get("status") or {}).get("runner") or {}).get("state")
                if state:
                    found.append(state)
        return found

    def wait_until(self, name: str, predicate: Callable[[Obj], bool]) -> Obj:
        """Block until the Execution ``name`` satisfies ``predicate`` (for test drivers)."""
        with self._cond:
            while True:
                obj = self.executions.get(name)
                if obj is not None and predicate(obj):
                    return copy.deepcopy(obj)
                if self._closed:
                    raise ResourceNotFoundError(f"FakeClient closed while waiting for {name}.")
                self._cond.wait()

    def close(self) -> None:
        """End every open watch."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- internals --------------------------------------------------------------------------

    def _get(self, name: str) -> Obj:
        if name not in self.executions:
            raise ResourceNotFoundError(f"Failed to get Execution {self.namespace}/{name}.")
        return self.executions[name]

    def _store(self, name: str, obj: Obj, event: str) -> None:
        with self._cond:
            rv = next(self._rv)
            obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
            self.executions[name] = obj
            self._events.append((rv, event, copy.deepcopy(obj)))
            self._cond.notify_all()

    @staticmethod
    def _matches(obj: Obj, labels: Mapping[str, str] | None, name: str | None) -> bool:
        meta = obj.get("metadata") or {}
        if name is not None and meta.get("name") != name:
            return False
        own = meta.get("labels") or {}
        return all(own.get(k) == v for k, v in (labels or {}).items())

    # -- ApiClient --------------------------------------------------------------------------

    def get_execution(self, name: str) -> Obj:
        with self._cond:
            self.calls.append(("get_execution", name, None))
            return copy.deepcopy(self._get(name))

    def list_executions(
        self, *, labels: Mapping[str, str] | None = None, name: str | None = None
    ) -> tuple[list[Obj], str]:
        with self._cond:
            self.calls.append(("list_executions", name or "", dict(labels) if labels else None))
            items = [
                copy.deepcopy(o) for o in self.executions.values() if self._matches(o, labels, name)
            ]
            rv = self._events[-1][0] if self._events else 0
            return items, str(rv)

    def watch_executions(
        self,
        *,
        resource_version: str,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> Iterator[tuple[str, Obj]]:
        with self._cond:
            self.calls.append(("watch_executions", name or "", resource_version))
        seen = int(resource_version or 0)
        while True:
            with self._cond:
                while not self._closed and not (self._events and self._events[-1][0] > seen):
                    self._cond.wait()
                if self._closed:
                    return
                batch = [e for e in self._events if e[0] > seen]
                seen = batch[-1][0]
            for _, event, obj in batch:
                if self._matches(obj, labels, name):
                    yield event, copy.deepcopy(obj)

    def create_execution(self, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        with self._cond:
            self.calls.append(("create_execution", name, copy.deepcopy(body)))
            if name in self.executions:
                raise AlreadyExistsError(f"Execution {self.namespace}/{name} exists already.")
            obj = copy.deepcopy(body)
            obj["metadata"].setdefault("uid", f"uid-{name}")
            self._store(name, obj, "ADDED")
            created = copy.deepcopy(obj)
        if self.on_create is not None:
            self.on_create(self, created)
        return created

    def patch_execution(self, name: str, patch: Obj) -> Obj:
        with self._cond:
            self.calls.append(("patch_execution", name, copy.deepcopy(patch)))
            obj = merge_patch(self._get(name), patch)
            self._store(name, obj, "MODIFIED")
            patched: Obj = copy.deepcopy(obj)
        if self.on_patch is not None:
            self.on_patch(self, patched)
        return patched

    def patch_execution_status(self, name: str, patch: Obj) -> Obj:
        with self._cond:
            self.calls.append(("patch_execution_status", name, copy.deepcopy(patch)))
            obj = merge_patch(self._get(name), {"status": patch.get("status")})
            self._store(name, obj, "MODIFIED")
            return copy.deepcopy(obj)

    def json_patch_execution_status(self, name: str, ops: list[Obj]) -> Obj:
        with self._cond:
            self.calls.append(("json_patch_execution_status", name, copy.deepcopy(ops)))
            obj = copy.deepcopy(self._get(name))
            for op in ops:
                if op.get("op") not in ("add", "replace"):
                    raise ApiRequestError(f"Unsupported JSON patch op {op.get('op')!r}.")
                *parents, last = op["path"].strip("/").split("/")
                node = obj
                for part in parents:
                    if not isinstance(node, dict) or part not in node:
                        raise ApiRequestError(f"JSON patch path {op['path']} does not exist.")
                    node = node[part]
                node[last] = copy.deepcopy(op["value"])
            self._store(name, obj, "MODIFIED")
            return copy.deepcopy(obj)

    def get_flow(self, name: str) -> Obj:
        if name not in self.flows:
            raise ResourceNotFoundError(f"Failed to get Flow {self.namespace}/{name}.")
        return copy.deepcopy(self.flows[name])

    def get_connection(self, name: str) -> Obj:
        if name not in self.connections:
            raise ResourceNotFoundError(f"Failed to get Connection {self.namespace}/{name}.")
        return copy.deepcopy(self.connections[name])

    def get_configmap(self, name: str) -> Obj:
        if name not in self.configmaps:
            raise ResourceNotFoundError(f"Failed to get ConfigMap {self.namespace}/{name}.")
        return copy.deepcopy(self.configmaps[name])

    def create_configmap(self, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        with self._cond:
            self.calls.append(("create_configmap", name, copy.deepcopy(body)))
            if name in self.configmaps:
                raise AlreadyExistsError(f"ConfigMap {self.namespace}/{name} exists already.")
            obj = copy.deepcopy(body)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.configmaps[name] = obj
            return copy.deepcopy(obj)

    def patch_configmap(self, name: str, patch: Obj) -> Obj:
        with self._cond:
            self.calls.append(("patch_configmap", name, copy.deepcopy(patch)))
            if name not in self.configmaps:
                raise ResourceNotFoundError(f"Failed to patch ConfigMap {self.namespace}/{name}.")
            obj = merge_patch(self.configmaps[name], patch)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.configmaps[name] = obj
            return copy.deepcopy(obj)

    def get_lease(self, name: str) -> Obj:
        with self._cond:
            if name not in self.leases:
                raise ResourceNotFoundError(f"Failed to get Lease {self.namespace}/{name}.")
            return copy.deepcopy(self.leases[name])

    def create_lease(self, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        with self._cond:
            self.calls.append(("create_lease", name, copy.deepcopy(body)))
            if name in self.leases:
                raise AlreadyExistsError(f"Lease {self.namespace}/{name} exists already.")
            obj = copy.deepcopy(body)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.leases[name] = obj
            return copy.deepcopy(obj)

    def replace_lease(self, name: str, body: Obj) -> Obj:
        with self._cond:
            self.calls.append(("replace_lease", name, copy.deepcopy(body)))
            current = self.leases.get(name)
            if current is None:
                raise ResourceNotFoundError(f"Failed to update Lease {self.namespace}/{name}.")
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise ConflictError(f"Failed to update Lease {self.namespace}/{name}: conflict.")
            obj = copy.deepcopy(body)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.leases[name] = obj
            return copy.deepcopy(obj)
