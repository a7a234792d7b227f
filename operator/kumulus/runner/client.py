"""The runner's only door to the Kubernetes API.

``ApiClient`` is the small interface the runner needs (Executions, their status subresource,
Flows, Connections, ConfigMaps and Leases in one namespace); ``LightkubeClient`` implements it over
lightkube generic resources with ONE HTTP client, and unit tests put an in-memory fake behind the
same interface. API errors come out as flow API exceptions, so flows see Cloudomation's types.
lightkube is imported lazily: a runner that fails before its first request starts faster.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from kumulus.runner.errors import EngineException, PermissionDenied, ResourceNotFoundError

if TYPE_CHECKING:
    from lightkube import Client

Obj = dict[str, Any]

GROUP = "kumulus.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "kumulus-runner"

#: How long one request is tried again while the API server cannot answer (restarting, rolling
#: over, overloaded): a runner started in that moment waits instead of failing its attempt.
TRANSIENT_RETRY_SECONDS = 60.0
#: HTTP answers that mean "not now": too many requests, a proxy or the server not ready.
TRANSIENT_CODES = frozenset({429, 502, 503, 504})
_RETRY_FIRST_DELAY = 0.2
#: Each wait is at most one second, so a SIGTERM is handled at once (see runner.main).
_RETRY_MAX_DELAY = 1.0

log = logging.getLogger("kumulus.runner")


def _is_transport_error(exc: BaseException) -> bool:
    """A failure to reach the API server at all (refused, reset, timed out).

    lightkube raises its HTTP library's ``TransportError`` family; it is matched by name so the
    runner does not import that library itself (it comes with lightkube, see pyproject.toml).
    """
    return any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0].startswith("httpx")
        for cls in type(exc).__mro__
    )


class AlreadyExistsError(EngineException):
    """The object to create exists already (HTTP 409 on create)."""


class ApiRequestError(EngineException):
    """Any other failed API request."""


class ConflictError(EngineException):
    """An update lost a race: the object changed since it was read (HTTP 409)."""


class _TransportFailure(ApiRequestError):
    """The API server could not be reached at all (kept apart so it is tried again)."""


class ApiClient(Protocol):
    """What the runner asks of the Kubernetes API, all in the runner's namespace."""

    namespace: str

    def get_execution(self, name: str) -> Obj: ...

    def list_executions(
        self, *, labels: Mapping[str, str] | None = None, name: str | None = None
    ) -> tuple[list[Obj], str]:
        """Return the matching Executions and the list's resourceVersion."""
        ...

    def watch_executions(
        self,
        *,
        resource_version: str,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> Iterator[tuple[str, Obj]]:
        """Yield ``(event type, object)`` after ``resource_version``; blocks between events."""
        ...

    def create_execution(self, body: Obj) -> Obj: ...

    def patch_execution(self, name: str, patch: Obj) -> Obj:
        """JSON merge patch of the Execution (spec, metadata)."""
        ...

    def patch_execution_status(self, name: str, patch: Obj) -> Obj:
        """JSON merge patch through the status subresource."""
        ...

    def json_patch_execution_status(self, name: str, ops: list[Obj]) -> Obj:
        """JSON patch (RFC 6902) through the status subresource."""
        ...

    def get_flow(self, name: str) -> Obj: ...

    def get_connection(self, name: str) -> Obj: ...

    def get_configmap(self, name: str) -> Obj: ...

    def create_configmap(self, body: Obj) -> Obj: ...

    def patch_configmap(self, name: str, patch: Obj) -> Obj:
        """JSON merge patch of a ConfigMap (settings)."""
        ...

    def get_lease(self, name: str) -> Obj: ...

    def create_lease(self, body: Obj) -> Obj: ...

    def replace_lease(self, name: str, body: Obj) -> Obj:
        """Update (PUT) a Lease; ``ConflictError`` when its resourceVersion is stale."""
        ...


@functools.cache
def _resources() -> tuple[Any, Any, Any, Any]:
    """The lightkube resource classes, created once per process (lightkube registers them)."""
    from lightkube.generic_resource import create_namespaced_resource

    execution = create_namespaced_resource(GROUP, VERSION, "Execution", "executions")
    flow = create_namespaced_resource(GROUP, VERSION, "Flow", "flows")
    connection = create_namespaced_resource(GROUP, VERSION, "Connection", "connections")
    try:  # a generic ConfigMap avoids importing lightkube's large typed models ...
        configmap: Any = create_namespaced_resource("", "v1", "ConfigMap", "configmaps")
    except ValueError:  # ... unless they are loaded already (then the typed class is registered)
        from lightkube.resources.core_v1 import ConfigMap

        configmap = ConfigMap
    return execution, flow, connection, configmap


@functools.cache
def _lease_resource() -> Any:
    """The Lease class (``coordination.k8s.io/v1``), generic unless the typed one is loaded."""
    from lightkube.generic_resource import create_namespaced_resource

    try:
        return create_namespaced_resource("coordination.k8s.io", "v1", "Lease", "leases")
    except ValueError:
        from lightkube.resources.coordination_v1 import Lease

        return Lease


class LightkubeClient:
    """``ApiClient`` over lightkube generic resources (in-cluster config or ``KUBECONFIG``)."""

    def __init__(
        self,
        namespace: str,
        client: Client | None = None,
        *,
        retry_seconds: float = TRANSIENT_RETRY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from lightkube import Client

        self.namespace = namespace
        self._client = client or Client(namespace=namespace, field_manager=FIELD_MANAGER)
        self._execution, self._flow, self._connection, self._configmap = _resources()
        self._retry_seconds = retry_seconds
        self._sleep = sleep
        self._clock = clock

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One request, tried again while the failure is transient (within ``retry_seconds``).

        Creates use deterministic names and patches are idempotent, so a request that reached
        the server before the connection broke is safe to send again.
        """
        from lightkube import ApiError

        deadline = self._clock() + self._retry_seconds
        delay = _RETRY_FIRST_DELAY
        while True:
            try:
                return self._request(what, fn, *args, **kwargs)
            except (ApiError, ApiRequestError) as exc:
                transient = (
                    isinstance(exc, ApiError) and exc.status.code in TRANSIENT_CODES
                ) or isinstance(exc, _TransportFailure)
                left = deadline - self._clock()
                if not transient or left <= 0:
                    if isinstance(exc, ApiError):
                        raise self._mapped(what, exc) from None
                    raise
                log.warning("Failed to %s (%s); trying again.", what, exc)
                self._sleep(min(delay, left, _RETRY_MAX_DELAY))
                delay = min(delay * 2, _RETRY_MAX_DELAY)

    @staticmethod
    def _request(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _is_transport_error(exc):
                raise _TransportFailure(f"Failed to {what}: {exc}") from None
            raise

    @staticmethod
    def _mapped(what: str, exc: Any) -> EngineException:
        """The flow API exception for an API server's error answer."""
        code = exc.status.code
        message = f"Failed to {what}: {exc.status.message}"
        if code == 404:
            return ResourceNotFoundError(message)
        if code == 403:
            return PermissionDenied(message)
        if code == 409 and what.startswith("create"):
            return AlreadyExistsError(message)
        if code == 409:
            return ConflictError(message)
        return ApiRequestError(message)

    @staticmethod
    def _plain(obj: Any) -> Obj:
        return dict(obj.to_dict()) if hasattr(obj, "to_dict") else dict(obj)

    def get_execution(self, name: str) -> Obj:
        obj = self._call(
            f"get Execution {self.namespace}/{name}", self._client.get, self._execution, name
        )
        return self._plain(obj)

    def list_executions(
        self, *, labels: Mapping[str, str] | None = None, name: str | None = None
    ) -> tuple[list[Obj], str]:
        fields = {"metadata.name": name} if name else None
        result = self._call(
            f"list Executions in {self.namespace}",
            self._client.list,
            self._execution,
            labels=dict(labels) if labels else None,
            fields=fields,
        )
        items = [self._plain(o) for o in result]
        return items, str(result.resourceVersion)

    def watch_executions(
        self,
        *,
        resource_version: str,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> Iterator[tuple[str, Obj]]:
        fields = {"metadata.name": name} if name else None
        watch: Any = self._client.watch
        stream = watch(
            self._execution,
            labels=dict(labels) if labels else None,
            fields=fields,
            resource_version=resource_version,
            server_timeout=300,
        )
        for event, obj in stream:
            yield event, self._plain(obj)

    def create_execution(self, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        obj = self._call(
            f"create Execution {self.namespace}/{name}",
            self._client.create,
            self._execution.from_dict(body),
        )
        return self._plain(obj)

    def _patch(self, res: Any, name: str, patch: Any, json_patch: bool = False) -> Obj:
        from lightkube.types import PatchType

        obj = self._call(
            f"patch Execution {self.namespace}/{name}",
            self._client.patch,
            res,
            name,
            patch,
            patch_type=PatchType.JSON if json_patch else PatchType.MERGE,
        )
        return self._plain(obj)

    def patch_execution(self, name: str, patch: Obj) -> Obj:
        return self._patch(self._execution, name, patch)

    def patch_execution_status(self, name: str, patch: Obj) -> Obj:
        return self._patch(self._execution.Status, name, patch)

    def json_patch_execution_status(self, name: str, ops: list[Obj]) -> Obj:
        return self._patch(self._execution.Status, name, ops, json_patch=True)

    def get_flow(self, name: str) -> Obj:
        obj = self._call(f"get Flow {self.namespace}/{name}", self._client.get, self._flow, name)
        return self._plain(obj)

    def get_connection(self, name: str) -> Obj:
        obj = self._call(
            f"get Connection {self.namespace}/{name}", self._client.get, self._connection, name
        )
        return self._plain(obj)

    def get_configmap(self, name: str) -> Obj:
        obj = self._call(
            f"get ConfigMap {self.namespace}/{name}", self._client.get, self._configmap, name
        )
        return self._plain(obj)

    def create_configmap(self, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        obj = self._call(
            f"create ConfigMap {self.namespace}/{name}",
            self._client.create,
            self._configmap.from_dict(body),
        )
        return self._plain(obj)

    def patch_configmap(self, name: str, patch: Obj) -> Obj:
        from lightkube.types import PatchType

        obj = self._call(
            f"patch ConfigMap {self.namespace}/{name}",
            self._client.patch,
            self._configmap,
            name,
            patch,
            patch_type=PatchType.MERGE,
        )
        return self._plain(obj)

    def get_lease(self, name: str) -> Obj:
        obj = self._call(
            f"get Lease {self.namespace}/{name}", self._client.get, _lease_resource(), name
        )
        return self._plain(obj)

    def create_lease(self, body: Obj) -> Obj:
        lease = _lease_resource()
        obj = self._call(
            f"create Lease {self.namespace}/{body['metadata']['name']}",
            self._client.create,
            lease.from_dict(body),
        )
        return self._plain(obj)

    def replace_lease(self, name: str, body: Obj) -> Obj:
        obj = self._call(
            f"update Lease {self.namespace}/{name}",
            self._client.replace,
            _lease_resource().from_dict(body),
        )
        return self._plain(obj)
