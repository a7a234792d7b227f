"""Deterministic names: the same Execution attempt always maps to the same Pod name.

Deterministic names are what make Pod creation idempotent across operator restarts and
duplicated operator processes (no leader election): a second create of the same attempt gets
``AlreadyExists`` instead of a second Pod.
"""

from __future__ import annotations

import hashlib

MAX_NAME = 63
"""Longest name/label value we produce (DNS label: Pod hostnames and label values)."""

LABEL_EXECUTION = "kumulus.dev/execution"
LABEL_ATTEMPT = "kumulus.dev/attempt"
LABEL_PARENT = "kumulus.dev/parent"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kumulus"


def shorten(name: str, limit: int = MAX_NAME, suffix: str = "") -> str:
    """Return ``name + suffix`` if it fits in ``limit``, else a hash-shortened form.

    The shortened form keeps a readable prefix of ``name`` and replaces the rest with the first
    10 hex digits of its SHA-256, so distinct long names stay distinct and the result is stable.
    """
    if len(name) + len(suffix) <= limit:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    keep = limit - len(suffix) - len(digest) - 1
    prefix = name[:keep].rstrip("-.")
    return f"{prefix}-{digest}{suffix}"


def pod_name(execution: str, attempt: int) -> str:
    """Name of the Pod of ``attempt`` (from 1) of Execution ``execution``: ``<execution>-a<n>``."""
    return shorten(execution, MAX_NAME, f"-a{attempt}")


def execution_label_value(execution: str) -> str:
    """Value of the ``kumulus.dev/execution`` label (the name, or its shortened form)."""
    return shorten(execution, MAX_NAME)
