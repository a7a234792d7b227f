"""Cloudomation status strings for Execution phases.

Flows compare ``execution.load('status')`` with Cloudomation's strings, so the runner maps the
operator's ``status.phase`` onto them. The table (also in the compatibility docs):

================  =====================  ==============================================
phase             status string          meaning
================  =====================  ==============================================
(none yet)        ``PENDING``            created, the operator has not looked at it yet
Pending           ``PENDING``            created, not started (e.g. ``run=False``)
Running           ``RUNNING``            its runner is running flow code
Waiting           ``WAITING_DEPENDENCY`` joined on its own children
Paused            ``PAUSED``             blocked in a flow API call by desiredState Paused
Succeeded         ``ENDED_SUCCESS``      ended successfully
Failed            ``ENDED_ERROR``        ended in error (exception, error(), timeout, ...)
Cancelled         ``ENDED_CANCELLED``    cancelled
================  =====================  ==============================================

An execution asking for its own status gets ``RUNNING``: it is running flow code right now.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PENDING = "PENDING"
RUNNING = "RUNNING"
WAITING_DEPENDENCY = "WAITING_DEPENDENCY"
PAUSED = "PAUSED"
ENDED_SUCCESS = "ENDED_SUCCESS"
ENDED_ERROR = "ENDED_ERROR"
ENDED_CANCELLED = "ENDED_CANCELLED"

PHASE_TO_STATUS: Mapping[str, str] = {
    "Pending": PENDING,
    "Running": RUNNING,
    "Waiting": WAITING_DEPENDENCY,
    "Paused": PAUSED,
    "Succeeded": ENDED_SUCCESS,
    "Failed": ENDED_ERROR,
    "Cancelled": ENDED_CANCELLED,
}

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})


def phase_of(obj: Mapping[str, Any]) -> str | None:
    """Return ``status.phase`` of an Execution object, or None."""
    status = obj.get("status") or {}
    phase = status.get("phase")
    return phase if isinstance(phase, str) else None


def status_string(obj: Mapping[str, Any]) -> str:
    """Return the Cloudomation status string of an Execution object."""
    phase = phase_of(obj)
    if phase is None:
        return PENDING
    return PHASE_TO_STATUS.get(phase, PENDING)


def is_ended(obj: Mapping[str, Any]) -> bool:
    """Whether the Execution reached a terminal phase."""
    return phase_of(obj) in TERMINAL_PHASES


def is_succeeded(obj: Mapping[str, Any]) -> bool:
    """Whether the Execution ended successfully."""
    return phase_of(obj) == "Succeeded"
