"""One way for tests to wait: poll a check until it holds, or fail saying what never happened.

Integration and e2e tests wait for what a controller does in its own time (a phase, a Ready
condition, a Pod, an answer). Each used to carry its own loop; this is the one they share, so a
timeout always fails the test the same way, naming what was awaited and the last value seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def eventually(
    what: str,
    check: Callable[[], T],
    timeout: float = 90.0,
    every: float = 0.25,
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` every ``every`` seconds until it returns something truthy; return that.

    Exceptions of the ``tolerate`` types count as "not yet" (a service still starting). After
    ``timeout`` seconds the test fails with ``what`` and the last result.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
        except tolerate as err:
            last = err
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            pytest.fail(f"Timed out after {timeout:.0f} s waiting for {what} (last: {last!r}).")
        time.sleep(every)
