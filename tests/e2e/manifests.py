"""Manifests the e2e tests apply, built one way: a Flow from code and an Execution from a spec."""

from __future__ import annotations

import textwrap
from typing import Any

API = "kumulus.dev/v1alpha1"
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def flow(name: str, code: str, **spec: Any) -> dict[str, Any]:
    """A Flow named ``name`` running ``code`` (dedented), with more ``spec`` fields."""
    return {
        "apiVersion": API,
        "kind": "Flow",
        "metadata": {"name": name},
        "spec": {"code": textwrap.dedent(code), **spec},
    }


def execution(name: str, **spec: Any) -> dict[str, Any]:
    """An Execution named ``name`` with the given ``spec``."""
    return {"apiVersion": API, "kind": "Execution", "metadata": {"name": name}, "spec": spec}
