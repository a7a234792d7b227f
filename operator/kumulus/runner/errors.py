"""Exceptions and end signals of the flow API.

The exception names are Cloudomation's, so flows that catch them run unchanged. The end signals
(``this.success()``, ``this.error()``, ``this.end()``) derive from ``BaseException`` on purpose: a
flow's ``except Exception`` must not swallow the end of its own execution.
"""

from __future__ import annotations

from typing import Any


class EngineException(Exception):
    """Root of every error the flow API raises."""


CloudomationException = EngineException


class DependencyFailedError(EngineException):
    """A child execution the flow waited for ended in error or was cancelled."""

    def __init__(self, message: str, execution: Any = None) -> None:
        super().__init__(message)
        self.execution = execution


class ChildNameTaken(EngineException):
    """A child's deterministic name (``<execution>-<attempt>-<seq>``) is taken by an Execution
    this one does not own: it is not adopted, and the call that would create the child fails."""


class DependencyTimeoutError(EngineException):
    """Waiting for child executions took longer than the given timeout."""


class TimeoutExceededError(EngineException):
    """An operation took longer than its timeout."""


class LockTimeoutError(EngineException):
    """A lock (``system.setting(name).acquire(timeout=...)``) could not be acquired in time."""


class ResourceNotFoundError(EngineException):
    """A Flow, Connection, ConfigMap or Execution does not exist."""


class PermissionDenied(EngineException):
    """The runner's ServiceAccount may not do what the flow asked."""


class MissingInputError(EngineException):
    """A required input is missing."""


class InvalidInputError(EngineException):
    """An input has an invalid value."""


class ExtraInputError(EngineException):
    """An input was given that is not expected."""


class SchemaValidationError(EngineException):
    """Inputs do not match the flow's input schema."""


class OutputLimitExceeded(EngineException):
    """Outputs over the output limit: nothing was written, the message names the limit.

    Raised at once by ``this.save(output_value=...)`` and ``this.set_output``. A flow may catch
    it (and save something smaller); uncaught, the runner ends with exit code 2 and the
    Execution fails without a retry.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


ENDED_SUCCESS = "ENDED_SUCCESS"
ENDED_ERROR = "ENDED_ERROR"
ENDED_CANCELLED = "ENDED_CANCELLED"
END_STATUSES = (ENDED_SUCCESS, ENDED_ERROR, ENDED_CANCELLED)


class ExecutionEnd(BaseException):
    """Ends the flow now with a status; raised by success(), error(), end()."""

    def __init__(self, status: str, message: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class Terminated(BaseException):
    """The Pod got SIGTERM (the operator cancels by deleting the Pod)."""
