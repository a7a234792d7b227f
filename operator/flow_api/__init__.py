"""The Cloudomation-compatible flow API: ``import flow_api`` in a flow.

Flows written for Cloudomation's ``flow_api`` run unchanged on Kumulus: a flow defines
``handler(system: flow_api.System, this: flow_api.Execution)`` (or with a third ``inputs``
argument) and the runner (``kumulus-runner``) calls it. This module only names the public types;
the implementation lives in ``kumulus.runner``. Compatibility:

=========================================  =================================================
Cloudomation                               Kumulus
=========================================  =================================================
``this.flow/script/connect/task``          child Execution (FLOW/SCRIPT/CONNECTION), named
                                           ``<execution>-<attempt>-<seq>``, owned by ``this``
``wait=True/False/return_when.*``          yes; joins watch children, never poll
``run=False``, ``run()``, ``run_async()``  yes (``spec.run``)
``wait()``, ``wait_for()``                 yes, plus ``timeout=`` (DependencyTimeoutError)
``pause()``, ``cancel()``                  yes (``spec.desiredState``)
``success/error/end``                      yes; BaseException signals, uncatchable by
                                           ``except Exception``
``sleep``, ``sleep_until``                 yes
``log``                                    one JSON line on stdout per call
``save/get/load``, ``set_output``          yes; ``status`` strings: see kumulus.runner.states;
                                           outputs over the limit raise OutputLimitExceeded
``webhook_html_response``                  yes (``status.runner.webhookResponse``)
``system.flow``, ``system.connection``     read-only (a Connection without its Secret)
``system.return_when``                     yes
``system.setting`` (and locks)             ConfigMaps and Leases in the namespace; any JSON
                                           value; ``acquire(timeout)``/``release()``; locks
                                           are released when the execution ends
``system.message``, ``this.message``       later
``system.file``                            later
=========================================  =================================================
"""

from kumulus.runner.engine import ReturnWhen
from kumulus.runner.errors import (
    ChildNameTaken,
    CloudomationException,
    DependencyFailedError,
    DependencyTimeoutError,
    EngineException,
    ExtraInputError,
    InvalidInputError,
    LockTimeoutError,
    MissingInputError,
    OutputLimitExceeded,
    PermissionDenied,
    ResourceNotFoundError,
    SchemaValidationError,
    TimeoutExceededError,
)
from kumulus.runner.execution import Execution
from kumulus.runner.settings import Setting
from kumulus.runner.system import ConnectionRecord, FlowRecord, System

return_when = ReturnWhen

__all__ = [
    "ChildNameTaken",
    "CloudomationException",
    "ConnectionRecord",
    "DependencyFailedError",
    "DependencyTimeoutError",
    "EngineException",
    "Execution",
    "ExtraInputError",
    "FlowRecord",
    "InvalidInputError",
    "LockTimeoutError",
    "MissingInputError",
    "OutputLimitExceeded",
    "PermissionDenied",
    "ResourceNotFoundError",
    "ReturnWhen",
    "SchemaValidationError",
    "Setting",
    "System",
    "TimeoutExceededError",
    "return_when",
]
