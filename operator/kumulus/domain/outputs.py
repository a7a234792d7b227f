"""How big an Execution's outputs are, and how big they may be: one measure, one limit.

The runner checks ``this.save(output_value=...)`` in the flow, the operator checks
``status.outputs`` when an attempt ends and the connection executor checks a connector's
result. If they counted differently, a flow would be told its outputs were saved and the
Execution would then fail with ``OutputTooLarge``; so all of them call :func:`stored_size` and
check against :data:`LIMIT_MAX_BYTES`.

This module is pure standard library, so the runner image (the base install: no pydantic, no
jsonschema) imports it too; an import-linter contract in ``pyproject.toml`` keeps the runner on
the base install.
"""

from __future__ import annotations

import json

LIMIT_DEFAULT_BYTES = 262144
"""The default of ``Settings.output_limit_bytes`` (256 KiB), and the runner's limit when
``KUMULUS_OUTPUT_LIMIT_BYTES`` is not set (it is always set in Pods the operator creates)."""

LIMIT_MAX_BYTES = 1048576
"""The largest output limit that may be configured (1 MiB).

The whole Execution is one etcd value, and etcd refuses a request over its
``--max-request-bytes``: 1.5 MiB by default (the API server's own cap on a request body, 3 MiB,
is higher). Outputs are not alone in the object: ``spec.inputs`` (a webhook call may carry up to
1 MiB), the script, ``status.message``, ``status.statusMessage`` (up to 32,000 characters),
``status.runner`` (a traceback, a webhook's HTML of up to 262,144 characters), conditions,
children and metadata share it. 1 MiB of outputs leaves about half a MiB for all of that, so an
Execution at the limit can still be written as long as its other fields stay small; a higher
limit would let outputs the runner accepted make the object impossible to store. The default
(:data:`LIMIT_DEFAULT_BYTES`) leaves room for large inputs as well."""


def stored_size(value: object) -> int:
    """Bytes ``value`` takes when the API server stores it as JSON in the object.

    The API server stores custom objects as compact JSON in UTF-8, written by Go's
    ``encoding/json``: non-ASCII characters are their UTF-8 bytes (``é`` is 2 bytes, not the
    6 of ``\\u00e9``), while ``<``, ``>``, ``&``, U+2028 and U+2029 are written as 6-byte
    ``\\uXXXX`` escapes and control characters as ``\\n``-style or ``\\u00XX`` escapes, as
    Python's ``json`` writes them. That is exactly what is counted here. Only the spelling of a
    float may differ by a few bytes (``1e+16`` here, ``10000000000000000`` in Go).

    Raises ``TypeError`` or ``ValueError`` for a value JSON cannot hold (an object, NaN, a lone
    surrogate): the API server would refuse it whatever its size.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(text.encode())
    # Outside strings compact JSON has none of these characters, so every one is in a string.
    size += 5 * (text.count("<") + text.count(">") + text.count("&"))  # 1 byte -> \u003c
    size += 3 * (text.count("\u2028") + text.count("\u2029"))  # 3 bytes -> \u2028
    return size


def too_large(size: int, limit: int) -> str:
    """The message of outputs over the limit (without naming whose they are)."""
    return f"Outputs are {size} bytes, over the limit of {limit} bytes."


def check_limit(limit: int, name: str = "output_limit_bytes") -> int:
    """``limit`` if it is a valid output limit (1 to :data:`LIMIT_MAX_BYTES`), else ValueError."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ValueError(f"{name} must be a whole number of bytes, not {limit!r}.")
    if not 1 <= limit <= LIMIT_MAX_BYTES:
        raise ValueError(
            f"{name} must be between 1 and {LIMIT_MAX_BYTES} bytes (1 MiB, what an etcd value "
            f"can hold next to the rest of the Execution), not {limit}."
        )
    return limit
