"""Checks of a Flow's code: does it compile, and does it define its handler?

The Flow handler sets the Flow's ``Ready`` condition from :func:`check_code`, so a syntax error
shows up on the Flow (with its line) before any Execution runs it, and records the code's hash
(:func:`code_hash`) in ``status.codeHash``: the only code its runner Pods will run.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class CodeCheck:
    """Result of checking flow code."""

    ok: bool
    reason: str
    message: str
    code_hash: str


def code_hash(code: str) -> str:
    """Stable hash of flow code (``sha256:<hex>``), recorded as ``status.codeHash``."""
    return "sha256:" + hashlib.sha256(code.encode()).hexdigest()


def checked_hash(flow: Mapping[str, Any] | None) -> str | None:
    """The hash of the code the operator checked for the Flow's current spec, if any.

    ``status.codeHash`` counts only when the status is for the Flow's current generation and
    the code was found (a spec edited since, or a Flow not checked yet, has no checked hash).
    Runner Pods get it as ``KUMULUS_CODE_HASH`` and refuse other code (``CodeChanged``).
    """
    if flow is None:
        return None
    meta = flow.get("metadata") or {}
    status = flow.get("status") or {}
    digest = status.get("codeHash")
    if not digest or status.get("observedGeneration") != meta.get("generation"):
        return None
    return str(digest)


def check_code(code: str, handler: str = "handler", filename: str = "<flow>") -> CodeCheck:
    """Compile ``code`` and look for a top-level function ``handler``."""
    digest = code_hash(code)
    try:
        tree = ast.parse(code, filename=filename)
        compile(tree, filename, "exec")
    except SyntaxError as err:
        line = err.lineno if err.lineno is not None else 0
        text = (err.text or "").strip()
        detail = f": {text}" if text else ""
        return CodeCheck(False, "SyntaxError", f"Line {line}: {err.msg}{detail}", digest)
    except ValueError as err:  # e.g. null bytes in the source
        return CodeCheck(False, "SyntaxError", f"Line 0: {err}", digest)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == handler:
            return CodeCheck(True, "Compiled", f"Code compiles and defines {handler}().", digest)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == handler for t in node.targets
        ):
            return CodeCheck(True, "Compiled", f"Code compiles and defines {handler}.", digest)
    return CodeCheck(
        False, "HandlerMissing", f"Code does not define a top-level {handler}().", digest
    )
