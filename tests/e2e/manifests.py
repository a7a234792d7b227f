"""What the e2e tests apply and read back, built one way: a Flow from code, an Execution from a
spec, and the Events of an object."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
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


def events_of(kubectl: Callable[..., Any], namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events whose involved object is ``name`` in ``namespace``, through ``kubectl``."""
    out = kubectl(
        "get", "events", "-n", namespace,
        "--field-selector", f"involvedObject.name={name}", "-o", "json",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items
