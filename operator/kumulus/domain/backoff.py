"""Retry backoff: when the next attempt of a failed Execution starts."""

from __future__ import annotations

DEFAULT_BACKOFF_SECONDS = 10.0
DEFAULT_FACTOR = 2.0
MAX_DELAY_SECONDS = 3600.0


def retry_delay(failed_attempt: int, backoff_seconds: float | None, factor: float | None) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (from 1) failed.

    ``backoff * factor ** (failed_attempt - 1)``, capped at one hour.
    """
    base = DEFAULT_BACKOFF_SECONDS if backoff_seconds is None else float(backoff_seconds)
    mult = DEFAULT_FACTOR if factor is None else float(factor)
    exponent = max(failed_attempt - 1, 0)
    try:
        delay = base * mult**exponent
    except OverflowError:
        return MAX_DELAY_SECONDS
    return float(min(max(delay, 0.0), MAX_DELAY_SECONDS))


def retries_left(attempts: int, limit: int | None) -> bool:
    """True if another attempt may start after ``attempts`` attempts (``limit`` retries)."""
    return attempts < (limit or 0) + 1
