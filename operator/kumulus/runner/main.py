"""``kumulus-runner``: the entrypoint of an execution Pod.

It exists to run one attempt of one Execution per the contract in ``runner-image/README.md``:
read the Execution (and its Flow), compile the code, call ``handler(system, this[, inputs])``,
report ``status.runner`` and exit with the contract's code (0 success, 1 error, 2 could not
start or outputs over the limit, 3 cancelled). SIGTERM (the operator deleting the Pod to cancel)
ends the flow as ``ENDED_CANCELLED`` with exit code 3. Locks the flow still holds
(``system.setting(name).acquire()``) are released however it ends.
"""

from __future__ import annotations

import builtins
import inspect
import linecache
import logging
import os
import signal
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from kumulus.domain import flowcode, outputs
from kumulus.runner.client import ApiClient, Obj
from kumulus.runner.engine import Engine
from kumulus.runner.errors import (
    ENDED_CANCELLED,
    ENDED_ERROR,
    ENDED_SUCCESS,
    EngineException,
    ExecutionEnd,
    OutputLimitExceeded,
    Terminated,
)
from kumulus.runner.settings import Locks

log = logging.getLogger("kumulus.runner")

EXIT_SUCCESS, EXIT_ERROR, EXIT_NOT_STARTED, EXIT_CANCELLED = 0, 1, 2, 3
EXIT_BY_STATUS = {
    ENDED_SUCCESS: EXIT_SUCCESS,
    ENDED_ERROR: EXIT_ERROR,
    ENDED_CANCELLED: EXIT_CANCELLED,
}
MAX_TRACEBACK_CHARS = 16384
_RUNNER_DIR = os.path.dirname(os.path.abspath(__file__))

_ending = False


class StartError(Exception):
    """The flow cannot start (exit code 2); ``reason`` goes to ``status.runner.result``."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


CODE_CHANGED = "CodeChanged"
"""``status.runner.result.reason`` when the Flow's code is not the code the operator checked."""


@dataclass
class Outcome:
    """How the attempt ended."""

    status: str
    message: str | None
    exit_code: int
    traceback: str | None = None
    reason: str | None = None


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    if not _ending:
        raise Terminated(signal.Signals(signum).name)


def wants_inputs(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` takes a third positional argument (``handler(system, this, inputs)``)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in positional) >= 3


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_RUNNER_DIR + os.sep) or os.path.basename(path) == "flow_api.py"


def format_flow_traceback(exc: BaseException, filename: str) -> str:
    """The traceback from the flow's first frame on, without the runner's own frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    start = next((i for i, f in enumerate(frames) if f.filename == filename), 0)
    kept = [f for f in frames[start:] if not _is_internal(f.filename)]
    text = "".join(
        [
            "Traceback (most recent call last):\n",
            *traceback.format_list(kept),
            *traceback.format_exception_only(type(exc), exc),
        ]
    )
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    return text


def load_code(client: ApiClient, execution: Obj) -> tuple[str, str, str]:
    """Return ``(code, filename, handler name)`` of the Execution or raise StartError."""
    from kumulus.runner.system import flow_code

    spec = execution.get("spec") or {}
    kind = spec.get("type", "FLOW")
    if kind == "SCRIPT":
        if not spec.get("script"):
            raise StartError("SCRIPT Execution has no spec.script.")
        return str(spec["script"]), f"<script {execution['metadata']['name']}>", "handler"
    if kind != "FLOW":
        raise StartError(f"The runner runs FLOW and SCRIPT executions, not {kind}.")
    flow_name = (spec.get("flowRef") or {}).get("name")
    if not flow_name:
        raise StartError("FLOW Execution has no spec.flowRef.name.")
    try:
        flow = client.get_flow(flow_name)
        code = flow_code(client, flow)
    except EngineException as exc:
        raise StartError(str(exc)) from None
    return code, f"<flow {flow_name}>", str((flow.get("spec") or {}).get("handler") or "handler")


def check_code_hash(code: str, expected: str | None, filename: str) -> None:
    """Refuse code other than what the operator checked (``KUMULUS_CODE_HASH``) with
    :data:`CODE_CHANGED`: e.g. a ``codeFrom`` ConfigMap patched after the Flow was Ready.
    Without an expected hash (a SCRIPT, or a runner started by hand) nothing is compared."""
    if not expected:
        return
    found = flowcode.code_hash(code)
    if found == expected:
        return
    raise StartError(
        f"The code of {filename} changed after the operator checked it (the operator checked "
        f"{expected}, the runner read {found}); it did not run. Run it again once the operator "
        "has checked the Flow again (its status.codeHash shows the new hash).",
        reason=CODE_CHANGED,
    )


def compile_handler(code: str, filename: str, handler_name: str) -> Callable[..., Any]:
    """Compile and execute the flow's module, return its handler (StartError if impossible)."""
    try:
        compiled = compile(code, filename, "exec")
    except SyntaxError as exc:
        raise StartError(
            f"The code of {filename} does not compile: {exc.msg} (line {exc.lineno})."
        ) from None
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    module: dict[str, Any] = {"__name__": "__flow__", "__builtins__": builtins}
    exec(compiled, module)  # noqa: S102 - running the flow's code is the runner's job.
    handler = module.get(handler_name)
    if not callable(handler):
        raise StartError(f"The code of {filename} defines no function {handler_name}().")
    return handler  # type: ignore[no-any-return]


def invoke(
    handler: Callable[..., Any], system: Any, this: Any, inputs: Obj, filename: str
) -> Outcome:
    """Call the handler and map how it ended onto an Outcome."""
    try:
        if wants_inputs(handler):
            handler(system, this, inputs)
        else:
            handler(system, this)
    except ExecutionEnd as end:
        return Outcome(end.status, end.message, EXIT_BY_STATUS[end.status])
    except OutputLimitExceeded as exc:
        return Outcome(ENDED_ERROR, exc.message, EXIT_NOT_STARTED)
    except Terminated:
        return Outcome(ENDED_CANCELLED, "Cancelled: the runner got SIGTERM.", EXIT_CANCELLED)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return Outcome(ENDED_SUCCESS, None, EXIT_SUCCESS)
        return Outcome(ENDED_ERROR, f"The flow called sys.exit({exc.code!r}).", EXIT_ERROR)
    except Exception as exc:
        tb = format_flow_traceback(exc, filename)
        return Outcome(ENDED_ERROR, tb, EXIT_ERROR, traceback=tb)
    return Outcome(ENDED_SUCCESS, None, EXIT_SUCCESS)


def _output_limit(env: Mapping[str, str]) -> int:
    """The operator's output limit (``Settings.output_limit_bytes``), trusted within the maximum.

    The operator validated it; a value out of range here means a runner image and an operator
    that disagree, so the attempt does not start rather than run with another limit.
    """
    raw = env.get("KUMULUS_OUTPUT_LIMIT_BYTES") or str(outputs.LIMIT_DEFAULT_BYTES)
    try:
        limit = int(raw)
    except ValueError:
        raise StartError(f"KUMULUS_OUTPUT_LIMIT_BYTES is not a number: {raw!r}.") from None
    try:
        return outputs.check_limit(limit, "KUMULUS_OUTPUT_LIMIT_BYTES")
    except ValueError as exc:
        raise StartError(str(exc)) from None


def run(
    env: Mapping[str, str],
    client: ApiClient | None = None,
    *,
    out: IO[str] | None = None,
    watch_self: bool = True,
) -> int:
    """Run one attempt; return the exit code."""
    global _ending
    _ending = False
    name = env.get("KUMULUS_EXECUTION", "")
    namespace = env.get("KUMULUS_NAMESPACE", "")
    if not name or not namespace:
        log.error("Failed to start: KUMULUS_EXECUTION and KUMULUS_NAMESPACE must be set.")
        return EXIT_NOT_STARTED
    try:
        attempt = int(env.get("KUMULUS_ATTEMPT", "1"))
        limit = _output_limit(env)
    except (ValueError, StartError) as exc:
        log.error("Failed to start Execution %s/%s: %s", namespace, name, exc)
        return EXIT_NOT_STARTED
    try:
        if client is None:
            from kumulus.runner.client import LightkubeClient

            client = LightkubeClient(namespace)
        obj = client.get_execution(name)
    except (EngineException, Terminated) as exc:
        log.error("Failed to read Execution %s/%s: %s", namespace, name, exc)
        return EXIT_NOT_STARTED

    engine = Engine(client, obj, attempt=attempt, output_limit=limit, watch_self=watch_self)
    locks = Locks(client, name)
    expected_hash = env.get("KUMULUS_CODE_HASH") or None
    try:
        outcome = _run_attempt(engine, client, obj, out, locks, expected_hash)
    except Terminated:
        outcome = Outcome(ENDED_CANCELLED, "Cancelled: the runner got SIGTERM.", EXIT_CANCELLED)
    _ending = True
    locks.release_all()
    engine.stop()
    result: Obj = {"status": outcome.status, "message": outcome.message}
    if outcome.reason:
        result["reason"] = outcome.reason
    if outcome.traceback:
        result["traceback"] = outcome.traceback
    message = outcome.message if outcome.traceback is None else None
    try:
        engine.finish(result, message=message if outcome.exit_code != EXIT_NOT_STARTED else None)
    except Exception as exc:
        log.error("Failed to report the end of Execution %s: %s", engine.ref, exc)
    log.info(
        "Ended Execution %s attempt %d with %s (exit code %d).",
        engine.ref,
        attempt,
        outcome.status,
        outcome.exit_code,
    )
    return outcome.exit_code


def _run_attempt(
    engine: Engine,
    client: ApiClient,
    obj: Obj,
    out: IO[str] | None,
    locks: Locks,
    expected_hash: str | None = None,
) -> Outcome:
    from kumulus.runner.execution import Execution
    from kumulus.runner.system import System

    try:
        engine.start()
        engine.checkpoint()
        code, filename, handler_name = load_code(client, obj)
        if (obj.get("spec") or {}).get("type", "FLOW") == "FLOW":
            check_code_hash(code, expected_hash, filename)
        inputs = (obj.get("spec") or {}).get("inputs") or {}
        if not isinstance(inputs, dict):
            raise StartError("spec.inputs must be an object.")
    except (StartError, EngineException) as exc:
        log.error("Failed to start Execution %s: %s", engine.ref, exc)
        reason = exc.reason if isinstance(exc, StartError) else None
        return Outcome(ENDED_ERROR, str(exc), EXIT_NOT_STARTED, reason=reason)
    this = Execution(engine, obj, is_self=True)
    if out is not None:
        this.out = out
    log.info("Started Execution %s attempt %d (%s).", engine.ref, engine.attempt, filename)
    try:
        handler = compile_handler(code, filename, handler_name)
    except StartError as exc:
        log.error("Failed to start Execution %s: %s", engine.ref, exc)
        return Outcome(ENDED_ERROR, str(exc), EXIT_NOT_STARTED)
    except Terminated:
        raise
    except BaseException as exc:  # the module body raised: an error of the flow's code
        return invoke(_reraise(exc), None, None, {}, filename)
    return invoke(handler, System(client, locks), this, dict(inputs), filename)


def _reraise(exc: BaseException) -> Callable[..., Any]:
    def handler(*_: Any) -> None:
        raise exc

    return handler


def main() -> None:
    """Console script ``kumulus-runner``."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    code = run(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
