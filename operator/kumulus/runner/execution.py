"""``flow_api.Execution``: the object a flow gets as ``this`` and for every child it starts.

Method names, arguments and return values follow Cloudomation's flow API so flows run
unchanged; see the compatibility table in ``operator/flow_api.py``. Every call first passes the
engine's pause checkpoint, so ``spec.desiredState: Paused`` takes effect at the next call.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any, ParamSpec, TypeVar

from kumulus.runner import states
from kumulus.runner.client import Obj
from kumulus.runner.engine import DISPLAY_NAME_ANNOTATION, Engine, ReturnWhen, sliced_sleep
from kumulus.runner.errors import (
    END_STATUSES,
    ENDED_CANCELLED,
    ENDED_ERROR,
    ENDED_SUCCESS,
    EngineException,
    ExecutionEnd,
    InvalidInputError,
)

P = ParamSpec("P")
R = TypeVar("R")

Wait = bool | ReturnWhen | str

FIELDS = (
    "status",
    "input_value",
    "output_value",
    "message",
    "name",
    "status_message",
    "id",
    "type",
    "start_time",
    "end_time",
)
SAVE_FIELDS = ("message", "output_value", "name")


def _api(fn: Callable[P, R]) -> Callable[P, R]:
    """Run the pause checkpoint before a flow API call."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        this = args[0]
        assert isinstance(this, Execution)
        this._engine.checkpoint()
        return fn(*args, **kwargs)

    return wrapper


def _return_when(wait: Wait) -> ReturnWhen | None:
    if wait is True:
        return ReturnWhen.ALL_SUCCEEDED
    if wait is False or wait is None:
        return None
    try:
        return ReturnWhen(wait)
    except ValueError:
        raise InvalidInputError(
            f"wait must be True, False or a system.return_when value, not {wait!r}."
        ) from None


def _parse_time(ts: dt.datetime | str | float | int) -> float:
    """Epoch seconds of a datetime, an ISO 8601 string or an epoch number."""
    if isinstance(ts, dt.datetime):
        when = ts
    elif isinstance(ts, str):
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    else:
        return float(ts)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _merge_inputs(inputs: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = dict(inputs or {})
    merged.update(kwargs)
    return merged


def _version(obj: Obj) -> int:
    """resourceVersion as a number to order two copies of one object (0 when unknown)."""
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(rv))
    except ValueError:
        return 0


class Execution:
    """One execution: the running one (``this``) or a child it created."""

    def __init__(self, engine: Engine, obj: Obj, *, is_self: bool = False) -> None:
        self._engine = engine
        self._obj = obj
        self._is_self = is_self
        self._name: str = (obj.get("metadata") or {})["name"]
        self.out: IO[str] = sys.stdout

    def __repr__(self) -> str:
        return f"<Execution {self._engine.namespace}/{self._name}>"

    @property
    def id(self) -> str:
        """The Execution's name (Kubernetes names are its identity)."""
        return self._name

    # -- children ---------------------------------------------------------------------------

    def _child(self, spec: Obj, name: str | None, run: bool, wait: Wait) -> Execution:
        if not self._is_self:
            raise EngineException(
                f"Only the running execution can start children, not {self._name}."
            )
        return_when = _return_when(wait)
        spec = dict(spec)
        spec["run"] = bool(run)
        child = Execution(self._engine, self._engine.create_child(spec, display_name=name))
        if run and return_when is not None:
            child._join(return_when, None)
        return child

    @_api
    def flow(
        self,
        flow_name: str,
        /,
        inputs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        run: bool = True,
        wait: Wait = True,
        **kwargs: Any,
    ) -> Execution:
        """Start a child FLOW; extra keyword arguments merge into its inputs."""
        spec = {
            "type": "FLOW",
            "flowRef": {"name": flow_name},
            "inputs": _merge_inputs(inputs, kwargs),
        }
        return self._child(spec, name, run, wait)

    @_api
    def script(
        self,
        code: str,
        /,
        inputs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        run: bool = True,
        wait: Wait = True,
        **kwargs: Any,
    ) -> Execution:
        """Start a child SCRIPT running ``code`` (which defines ``handler``)."""
        spec = {"type": "SCRIPT", "script": code, "inputs": _merge_inputs(inputs, kwargs)}
        return self._child(spec, name, run, wait)

    @_api
    def connect(
        self,
        connector_name: str | None = None,
        /,
        *,
        connector_type: str | None = None,
        inputs: dict[str, Any] | None = None,
        name: str | None = None,
        run: bool = True,
        wait: Wait = True,
        **kwargs: Any,
    ) -> Execution:
        """Start a child CONNECTION through a stored Connection or an ad-hoc connector type."""
        if not connector_name and not connector_type:
            raise InvalidInputError("connect() needs a connector name or connector_type=.")
        connection: Obj = {"inputs": _merge_inputs(inputs, kwargs)}
        if connector_name:
            connection["name"] = connector_name
        if connector_type:
            connection["type"] = connector_type
        return self._child({"type": "CONNECTION", "connection": connection}, name, run, wait)

    @_api
    def task(
        self,
        connector_type: str,
        /,
        *,
        inputs: dict[str, Any] | None = None,
        name: str | None = None,
        run: bool = True,
        wait: Wait = True,
        **kwargs: Any,
    ) -> Execution:
        """Old name of ``connect(connector_type=...)``: ``this.task('REST', url=...)``."""
        connection: Obj = {"type": connector_type, "inputs": _merge_inputs(inputs, kwargs)}
        return self._child({"type": "CONNECTION", "connection": connection}, name, run, wait)

    # -- control ----------------------------------------------------------------------------

    def _refresh(self) -> None:
        cached = self._engine.cached_child(self._name)
        if cached is not None and _version(cached) >= _version(self._obj):
            self._obj = cached

    def _spec(self) -> Obj:
        self._refresh()
        return self._obj.get("spec") or {}

    def _join(self, return_when: ReturnWhen, timeout: float | None) -> None:
        objs = self._engine.wait_for([self._name], return_when, timeout)
        if objs:
            self._obj = objs[0]

    @_api
    def run(self) -> Execution:
        """Start a child created with ``run=False`` and wait for it; a started one is returned."""
        if self._start():
            self._join(ReturnWhen.ALL_SUCCEEDED, None)
        return self

    @_api
    def run_async(self) -> Execution:
        """Start a child created with ``run=False`` (or resume a paused one) without waiting."""
        self._start()
        return self

    def _start(self) -> bool:
        if self._is_self:
            raise EngineException("The running execution cannot start itself.")
        spec = self._spec()
        patch: Obj = {}
        if spec.get("run") is False:
            patch["run"] = True
        if spec.get("desiredState") == "Paused":
            patch["desiredState"] = "Running"
        if patch:
            self._obj = self._engine.patch_child_spec(self._name, patch)
        return "run" in patch

    @_api
    def wait(
        self, return_when: ReturnWhen | str = ReturnWhen.ALL_SUCCEEDED, timeout: float | None = None
    ) -> Execution:
        """Wait for this child to end (raises DependencyFailedError per ``return_when``)."""
        if self._is_self:
            raise EngineException("The running execution cannot wait for itself.")
        self._join(ReturnWhen(return_when), timeout)
        return self

    @_api
    def wait_for(
        self,
        *children: Execution | Iterable[Execution],
        return_when: ReturnWhen | str = ReturnWhen.ALL_SUCCEEDED,
        timeout: float | None = None,
    ) -> list[Execution]:
        """Join on children; returns those that ended (all of them unless FIRST_ENDED)."""
        flat: list[Execution] = []
        for c in children:
            if isinstance(c, Execution):
                flat.append(c)
            else:
                flat.extend(c)
        by_name = {c._name: c for c in flat}
        objs = self._engine.wait_for(list(by_name), ReturnWhen(return_when), timeout)
        ended: list[Execution] = []
        for obj in objs:
            child = by_name[obj["metadata"]["name"]]
            child._obj = obj
            if states.is_ended(obj):
                ended.append(child)
        return ended

    @_api
    def pause(self) -> Execution:
        """Pause: a child by patching its spec; the running execution blocks until resumed."""
        if self._is_self:
            self._engine.set_own_desired_state("Paused")
            self._engine.checkpoint()
        else:
            self._obj = self._engine.patch_child_spec(self._name, {"desiredState": "Paused"})
        return self

    @_api
    def cancel(self) -> Execution:
        """Cancel a child (its Pod is stopped by the operator)."""
        if self._is_self:
            raise ExecutionEnd(ENDED_CANCELLED, None)
        self._obj = self._engine.patch_child_spec(self._name, {"desiredState": "Cancelled"})
        return self

    # -- ending -----------------------------------------------------------------------------

    def _own_end(self, status: str, message: str | None) -> ExecutionEnd:
        if not self._is_self:
            raise EngineException(
                f"Only the running execution can end itself; use cancel() on {self._name}."
            )
        if status not in END_STATUSES:
            raise InvalidInputError(
                f"end() needs one of {', '.join(END_STATUSES)}, not {status!r}."
            )
        return ExecutionEnd(status, None if message is None else str(message))

    def success(self, message: str | None = None) -> None:
        """End the running execution successfully, now."""
        raise self._own_end(ENDED_SUCCESS, message)

    def error(self, message: str | None = None) -> None:
        """End the running execution in error, now."""
        raise self._own_end(ENDED_ERROR, message)

    def end(self, status: str = ENDED_SUCCESS, message: str | None = None) -> None:
        """End the running execution with ``status`` (ENDED_SUCCESS|ENDED_ERROR|ENDED_CANCELLED)."""
        raise self._own_end(status, message)

    def webhook_html_response(self, html: str, status_code: int = 200) -> None:
        """Give ``html`` back to a synchronous webhook caller and end successfully."""
        self._engine.webhook_response = {"html": str(html), "statusCode": int(status_code)}
        raise self._own_end(ENDED_SUCCESS, None)

    # -- time -------------------------------------------------------------------------------

    @_api
    def sleep(self, seconds: float) -> None:
        """Sleep (a pause requested meanwhile takes effect when it returns)."""
        if seconds > 0:
            sliced_sleep(seconds)
        self._engine.checkpoint()

    @_api
    def sleep_until(self, ts: dt.datetime | str | float | int) -> None:
        """Sleep until a datetime, an ISO 8601 string or epoch seconds (naive = UTC)."""
        delay = _parse_time(ts) - time.time()
        if delay > 0:
            sliced_sleep(delay)
        self._engine.checkpoint()

    # -- fields -----------------------------------------------------------------------------

    @_api
    def log(self, *args: Any, **kwargs: Any) -> None:
        """Write one JSON line on stdout (``kubectl logs``): message from args, data from kwargs."""
        entry: Obj = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "execution": self._engine.ref,
        }
        if args:
            entry["message"] = " ".join(str(a) for a in args)
        if kwargs:
            entry["data"] = kwargs
        self.out.write(json.dumps(entry, default=repr, ensure_ascii=False) + "\n")
        self.out.flush()

    @_api
    def save(self, **fields: Any) -> Execution:
        """Write own fields: ``message``, ``output_value`` (replaces outputs), ``name``."""
        if not self._is_self:
            raise EngineException(f"An execution can only save its own fields, not {self._name}'s.")
        unknown = sorted(set(fields) - set(SAVE_FIELDS))
        if unknown:
            raise InvalidInputError(
                f"save() cannot write {', '.join(unknown)}; it writes {', '.join(SAVE_FIELDS)}."
            )
        outputs = fields.get("output_value")
        if outputs is not None and not isinstance(outputs, dict):
            raise InvalidInputError("output_value must be a dict.")
        self._engine.save_fields(
            message=None if fields.get("message") is None else str(fields["message"]),
            name=None if fields.get("name") is None else str(fields["name"]),
            outputs=outputs,
        )
        return self

    @_api
    def set_output(self, key: str, value: Any) -> Execution:
        """Set one output key (the other outputs stay)."""
        if not self._is_self:
            raise EngineException(f"An execution can only set its own outputs, not {self._name}'s.")
        outputs = copy.deepcopy(self._engine.outputs)
        outputs[str(key)] = value
        self._engine.save_fields(outputs=outputs)
        return self

    def _field(self, field: str) -> Any:
        obj = self._obj
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        if self._is_self:
            engine = self._engine
            own: dict[str, Any] = {
                "status": states.RUNNING,
                "output_value": copy.deepcopy(engine.outputs),
                "message": engine.message,
                "name": engine.display_name or self._name,
            }
            if field in own:
                return own[field]
        if field == "status":
            return states.status_string(obj)
        if field == "input_value":
            return copy.deepcopy(spec.get("inputs") or {})
        if field == "output_value":
            return copy.deepcopy(status.get("outputs") or {})
        if field == "message":
            return status.get("message")
        if field == "name":
            annotations = meta.get("annotations") or {}
            return (
                status.get("displayName") or annotations.get(DISPLAY_NAME_ANNOTATION) or self._name
            )
        if field == "status_message":
            return status.get("statusMessage")
        if field == "id":
            return self._name
        if field == "type":
            return spec.get("type", "FLOW")
        if field == "start_time":
            return status.get("startTime")
        if field == "end_time":
            return status.get("endTime")
        raise InvalidInputError(f"Unknown field {field!r}; known fields: {', '.join(FIELDS)}.")

    def _fields(self, fields: tuple[str, ...]) -> Any:
        if not fields:
            raise InvalidInputError(f"Name at least one field: {', '.join(FIELDS)}.")
        if len(fields) == 1:
            return self._field(fields[0])
        return {f: self._field(f) for f in fields}

    @_api
    def get(self, *fields: str) -> Any:
        """Read fields from the cached object; one field gives its value, several a dict."""
        if not self._is_self:
            self._refresh()
        return self._fields(fields)

    @_api
    def load(self, *fields: str) -> Any:
        """Re-read the Execution, then return fields like ``get``."""
        self._obj = self._engine.client.get_execution(self._name)
        return self._fields(fields)
