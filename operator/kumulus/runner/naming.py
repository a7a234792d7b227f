"""Deterministic names for child Executions and label values.

A child's name is ``<execution>-<attempt>-<seq>`` so that a repeated creation (a retried request,
a restarted runner) never duplicates a child. Pod names derive from Execution names, so a name
must stay within 63 characters: when it would not, the parent's part is cut and a hash of the
full parent name keeps it unique (``<cut parent>-<8 hex of sha256(parent)>-<attempt>-<seq>``).
"""

from __future__ import annotations

import hashlib

MAX_NAME = 63
_HASH_LEN = 8


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:_HASH_LEN]


def child_name(execution: str, attempt: int, seq: int) -> str:
    """Return the name of the ``seq``-th child created by ``attempt`` of ``execution``."""
    full = f"{execution}-{attempt}-{seq}"
    if len(full) <= MAX_NAME:
        return full
    suffix = f"-{_digest(execution)}-{attempt}-{seq}"
    prefix = execution[: MAX_NAME - len(suffix)].rstrip("-.")
    return f"{prefix}{suffix}"


def label_value(name: str) -> str:
    """Return ``name`` as a label value: itself if short enough, else cut plus a hash."""
    if len(name) <= MAX_NAME:
        return name
    suffix = f"-{_digest(name)}"
    return name[: MAX_NAME - len(suffix)].rstrip("-.") + suffix
