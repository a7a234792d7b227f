"""The CLI's connection to the cluster: kubeconfig, namespace and readable errors.

The ``kumulus`` CLI finds its cluster and namespace the way kubectl does (``--kubeconfig``, then
``KUBECONFIG``, then ``~/.kube/config``, or the in-cluster ServiceAccount; the namespace from
``-n``, else the current context, else ``default``) and turns API failures into one-line
messages (:class:`CliError`) instead of tracebacks. It uses lightkube's synchronous client and
generic resources only, so the CLI runs on the base install (no operator extras).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ConfigError
from lightkube.generic_resource import create_namespaced_resource

from kumulus import GROUP, VERSION

Obj = dict[str, Any]
FIELD_MANAGER = "kumulus-cli"

Execution: Any = create_namespaced_resource(GROUP, VERSION, "Execution", "executions")
Flow: Any = create_namespaced_resource(GROUP, VERSION, "Flow", "flows")
Schedule: Any = create_namespaced_resource(GROUP, VERSION, "Schedule", "schedules")

#: The kinds the CLI reads, by every name a user may type (kubectl's plural, singular, short).
KINDS: dict[str, tuple[str, Any]] = {}
for _kind, _res, _names in (
    ("Execution", Execution, ("executions", "execution", "ex", "exec", "kex", "kexec")),
    ("Flow", Flow, ("flows", "flow", "kflow", "kfl")),
    ("Schedule", Schedule, ("schedules", "schedule", "ksched")),
):
    for _name in _names:
        KINDS[_name] = (_kind, _res)


@functools.cache
def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of lightkube's HTTP library (httpx2 in lightkube 1.x, else httpx)."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


class CliError(Exception):
    """A failure to report to the user as one line (exit code 1)."""


def kind_of(name: str) -> tuple[str, Any]:
    """``(Kind, resource class)`` of a kind name as typed by the user."""
    try:
        return KINDS[name.lower()]
    except KeyError:
        known = "executions, flows, schedules"
        raise CliError(f"Unknown kind {name!r}; the CLI knows {known}.") from None


def _kubeconfig_path(explicit: str | None) -> Path | None:
    """The kubeconfig file to read, or None for the in-cluster ServiceAccount."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KUBECONFIG", "")
    # kubectl merges a list of files; the CLI reads the first one that exists.
    for part in env.split(os.pathsep):
        if part and Path(part).expanduser().is_file():
            return Path(part).expanduser()
    if env.strip(os.pathsep):
        raise CliError(f"KUBECONFIG={env} names no existing file.")
    default = Path("~/.kube/config").expanduser()
    if default.is_file():
        return default
    return None


def load_config(kubeconfig: str | None, context: str | None) -> SingleConfig:
    """The chosen context of the kubeconfig (or the in-cluster configuration)."""
    path = _kubeconfig_path(kubeconfig)
    try:
        config = KubeConfig.from_service_account() if path is None else KubeConfig.from_file(path)
        single = config.get(context_name=context)
    except FileNotFoundError:
        raise CliError(f"No kubeconfig at {path}.") from None
    except ConfigError as err:
        if path is None:
            raise CliError(
                "No cluster configured: set KUBECONFIG, pass --kubeconfig or create ~/.kube/config."
            ) from None
        raise CliError(f"Cannot use kubeconfig {path}: {err}") from None
    if single is None:
        raise CliError(f"Kubeconfig {path} has no current context; pass --context.")
    return single


def api_error_message(err: ApiError, what: str) -> str:
    """One line for a failed request about ``what`` (e.g. ``Execution default/x``)."""
    code = int(err.status.code or 0)
    message = err.status.message or str(err)
    if code == 404:
        return f"{what} not found."
    if code == 403:
        return f"Forbidden: {message}"
    if code == 401:
        return f"Unauthorized: the cluster rejected your credentials ({message})."
    if code == 409:
        return f"{what} already exists."
    if code == 422:
        return f"{what} is invalid: {message}"
    return f"{what}: {message} (HTTP {code})"


@dataclass
class Kube:
    """A lightkube client bound to one namespace, with error translation."""

    client: Client
    namespace: str
    server: str

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Kube:
        single = load_config(kubeconfig, context)
        ns = namespace or single.namespace or "default"
        client = Client(config=single, namespace=ns, field_manager=FIELD_MANAGER, trust_env=False)
        return cls(client=client, namespace=ns, server=single.cluster.server)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as err:
            raise CliError(api_error_message(err, what)) from None
        except transport_errors() as err:
            raise CliError(f"Cannot reach the cluster at {self.server}: {err}") from None

    def ref(self, kind: str, name: str) -> str:
        return f"{kind} {self.namespace}/{name}"

    def get(self, res: Any, name: str) -> Obj:
        kind = res._api_info.resource.kind
        obj = self._call(self.ref(kind, name), self.client.get, res, name, namespace=self.namespace)
        return to_dict(obj)

    def list_objects(
        self, res: Any, *, labels: dict[str, Any] | None = None, all_namespaces: bool = False
    ) -> list[Obj]:
        kind = res._api_info.resource.kind
        where = "all namespaces" if all_namespaces else f"namespace {self.namespace}"
        ns = "*" if all_namespaces else self.namespace
        items = self._call(
            f"Listing {kind}s in {where}",
            lambda: list(self.client.list(res, namespace=ns, labels=labels)),
        )
        return [to_dict(o) for o in items]

    def create(self, res: Any, body: Obj) -> Obj:
        kind = body.get("kind", "object")
        name = (body.get("metadata") or {}).get("name") or "(generated name)"
        obj = res.from_dict(body) if hasattr(res, "from_dict") else res(**body)
        created = self._call(
            self.ref(kind, name), self.client.create, obj, namespace=self.namespace
        )
        return to_dict(created)

    def patch(self, res: Any, name: str, patch: Obj) -> Obj:
        from lightkube.types import PatchType

        kind = res._api_info.resource.kind
        obj = self._call(
            self.ref(kind, name),
            self.client.patch,
            res,
            name,
            patch,
            namespace=self.namespace,
            patch_type=PatchType.MERGE,
        )
        return to_dict(obj)

    def watch(self, res: Any, name: str, server_timeout: int = 60) -> Iterator[tuple[str, Obj]]:
        """Events of one object until the server closes the watch (first: its current state)."""
        kind = res._api_info.resource.kind
        try:
            for event, obj in self.client.watch(
                res,
                namespace=self.namespace,
                fields={"metadata.name": name},
                server_timeout=server_timeout,
            ):
                yield event, to_dict(obj)
        except ApiError as err:
            raise CliError(api_error_message(err, self.ref(kind, name))) from None
        except transport_errors() as err:
            raise CliError(f"Cannot reach the cluster at {self.server}: {err}") from None

    def pods(self, labels: dict[str, Any]) -> list[Obj]:
        from lightkube.resources.core_v1 import Pod

        items = self._call(
            f"Listing Pods in namespace {self.namespace}",
            lambda: list(self.client.list(Pod, namespace=self.namespace, labels=labels)),
        )
        return [to_dict(p) for p in items]

    def pod(self, name: str) -> Obj:
        from lightkube.resources.core_v1 import Pod

        obj = self._call(
            self.ref("Pod", name), self.client.get, Pod, name, namespace=self.namespace
        )
        return to_dict(obj)

    def pod_log(self, pod: str, follow: bool) -> Iterator[str]:
        """Lines of a Pod's log; raises ApiError (e.g. 400 while the container starts)."""
        return self.client.log(pod, namespace=self.namespace, follow=follow)

    def close(self) -> None:
        self.client.close()


def to_dict(obj: Any) -> Obj:
    """A lightkube object (typed model or generic resource) as a plain dict."""
    if isinstance(obj, dict):
        return obj
    result: Obj = obj.to_dict()
    return result
