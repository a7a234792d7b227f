"""Cron expressions and their instants in an IANA time zone: croniter, plus the rules it lacks.

croniter (7.x) parses the expression and finds the next matching wall-clock time: the values,
names, ranges, steps and ``?`` of each field, the macros, the seconds field
(``second_at_beginning=True``), the day-of-month/day-of-week OR rule, and the check that rejects
day/month combinations that never occur (``strict=True``). This module adds, as a thin layer,
only the documented Schedule rules that croniter does not meet (docs/schedules.md, "How the
parser is built"):

1. **Errors name the field.** croniter's messages echo the expression but name no field
   (``[61 * * * *] is not acceptable, out of range``); a field that croniter refuses is parsed
   again alone, part by part, so the message says which field and which part is wrong.
2. **Only the documented syntax.** croniter also accepts ``L``, ``W``, ``#``, ``H``, ``R`` and
   a 7th (year) field; a per-part whitelist (``*``, ``?``, ``N``, ``N-M``, each with ``/S``, and
   the names JAN-DEC, SUN-SAT) rejects them before croniter sees the expression.
3. **Ranges, steps and the OR rule as documented.** croniter reads ``N-N`` as the whole field
   and wraps a reversed range (``5-1`` = 5..59, 0, 1); here ``N-N`` is ``N`` and a reversed
   range is an error. ``N/S`` is ``N-max/S`` with the documented maximum (day-of-week 7, so
   ``5/2`` is Friday and Sunday; croniter stops at 6). ``*/1`` and ``?`` are ``*`` (``?/S`` is
   ``*/S``), and a list with ``*`` in it is ``*``. croniter treats a day field that lists every
   value (``0-6``) as ``*`` when the other day field contains a star (``*/3``), which drops the
   OR rule, so a stepped star in a day field is handed to croniter spelt as a range
   (``1-31/3``).
4. **Daylight saving time.** croniter on aware datetimes drops a skipped time when the hour
   field is ``*`` and runs a repeated time twice; the documented rules (below) differ. croniter
   therefore iterates naive wall-clock times, and :meth:`CronSchedule.instant` maps each one to
   its UTC instant.
5. **Never-matching expressions.** croniter's ``strict`` check ignores the OR rule
   (``0 0 30 2 MON`` matches every Monday of February), so it is applied only when day-of-week
   is unrestricted.

Syntax
    ``minute hour day-of-month month day-of-week`` (5 fields, as in a Kubernetes CronJob), or
    ``second minute hour day-of-month month day-of-week`` (6 fields: **seconds first**, like
    Quartz and robfig ``cron.WithSeconds``), or a macro: ``@yearly`` (= ``@annually``),
    ``@monthly``, ``@weekly``, ``@daily`` (= ``@midnight``), ``@hourly``.

Daylight saving time (the expression is read in local wall-clock time)
    * A local time that does not exist (skipped when clocks go forward, e.g. 02:30 in
      Europe/Vienna on the last Sunday of March) runs at the first instant after the gap
      (03:00 local). Several skipped times collapse into that one instant: one run, not many.
    * A local time that occurs twice (clocks go back, e.g. 02:30 on the last Sunday of October)
      runs once, at its first occurrence. An expression matching every minute therefore has no
      runs during the repeated hour; use ``timeZone: UTC`` for a steady interval.
"""

from __future__ import annotations

import dataclasses
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, CroniterError, croniter
from croniter.croniter import DOW_ALPHAS, M_ALPHAS

__all__ = [
    "MACROS",
    "CronError",
    "CronExpr",
    "CronSchedule",
    "TimeZoneError",
    "load_zone",
    "parse",
]

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The supported macros and the 5-field expressions they stand for (croniter expands them)."""

_UNSUPPORTED = " (L, W, #, H and R are not supported)"
_CRONITER_SPECIAL = re.compile(r"^[0-9]*[LWHR][0-9]*$")
"""A token that croniter would read as one of its extensions (``L``, ``15W``, ``L5``, ``H``)."""
_PART = re.compile(
    r"^(?:(?P<star>[*?])|(?P<low>[A-Za-z0-9]+)(?:-(?P<high>[A-Za-z0-9]+))?)"
    r"(?:/(?P<step>[0-9]+))?$"
)
_ECHO = re.compile(r"^\[[^\]]*\]\s*(is not acceptable)?[.,]?\s*")
"""The start of a croniter message that repeats the expression."""
_START = datetime(2000, 1, 1)
"""Any start time for croniter's constructor: every search passes its own."""


class CronError(ValueError):
    """An invalid cron expression; the message names the field and says what is wrong."""


class TimeZoneError(ValueError):
    """An unknown or invalid IANA time zone name."""


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int | str] = dataclasses.field(default_factory=dict)

    @property
    def is_day(self) -> bool:
        return self.name in ("day-of-month", "day-of-week")


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, M_ALPHAS)
_DOW = _Field("day-of-week", 0, 7, DOW_ALPHAS)
_FIVE = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
_SIX = (_SECOND, *_FIVE)


@dataclasses.dataclass(frozen=True)
class CronExpr:
    """A parsed cron expression and the croniter that searches its wall-clock times."""

    source: str
    """The expression as written (whitespace normalised)."""
    expression: str
    """What croniter reads: ``source`` after the rules of this module (a macro stays a macro)."""
    has_seconds: bool
    iterator: croniter = dataclasses.field(compare=False, repr=False)
    """croniter keeps a current time, but every search here passes its own start, so calls do
    not depend on each other (not thread-safe: Schedules are decided on one event loop)."""

    def next_local(self, after: datetime) -> datetime | None:
        """The first matching wall-clock time strictly after ``after`` (both naive)."""
        try:
            found = self.iterator.get_next(datetime, start_time=after)  # type: ignore[no-untyped-call]
        except CroniterBadDateError:
            return None
        assert isinstance(found, datetime)
        return found


# --------------------------------------------------------------------------- parsing


def _number(field: _Field, token: str, source: str) -> int:
    """A range bound as a number (names by croniter's tables); the value range is croniter's."""
    if token.isdigit():
        return int(token)
    value = field.names.get(token.lower())
    if isinstance(value, int):
        return value
    if _CRONITER_SPECIAL.match(token.upper()):
        hint = _UNSUPPORTED
    elif field.names:
        hint = f" (a number or one of {', '.join(n.upper() for n in field.names)})"
    else:
        hint = " (a number)"
    raise CronError(f"schedule {source!r}: {field.name} field: {token!r} is not a value{hint}")


def _part(field: _Field, part: str, source: str) -> str:
    """One comma-separated part, checked against the documented syntax and rewritten for
    croniter where its reading differs (rules 2 and 3 of the module docstring)."""
    match = _PART.match(part)
    if match is None:
        hint = _UNSUPPORTED if "#" in part else ""
        raise CronError(f"schedule {source!r}: {field.name} field: cannot parse {part!r}{hint}")
    step = match["step"]
    if match["star"] is not None:
        if match["star"] == "?" and not field.is_day:
            raise CronError(
                f"schedule {source!r}: {field.name} field: '?' is only allowed in the "
                "day-of-month and day-of-week fields"
            )
        if step is None or int(step) == 1:
            return "*"
        if field.is_day and int(step) > 1:
            # The same values, spelt without a star: croniter reads a day field that lists
            # every value as *, and so drops the OR rule, when the other day field has a star.
            return f"{field.low}-{6 if field is _DOW else field.high}/{step}"
        return f"*/{step}"
    low = _number(field, match["low"], source)
    if step is not None and int(step) == 0:
        return part  # croniter reports step 0
    if match["high"] is None:
        if step is None or low > field.high:
            return part  # a value out of range is croniter's to report
        # N/S is N-max/S; spelt out so that day-of-week reaches 7 (Sunday) as documented
        # (croniter's maximum is 6) and 59/S is 59.
        high, part = field.high, f"{match['low']}-{field.high}/{step}"
    else:
        high = _number(field, match["high"], source)
    if low > high:
        raise CronError(f"schedule {source!r}: {field.name} field: range {part!r} is reversed")
    if low == high:
        return match["low"]
    return part


def _croniter_message(err: CroniterError, field: _Field, part: str) -> str:
    detail = _detail(err)
    if "out of range" in detail or "out of bands" in detail:
        return f"{part} is out of range {field.low}-{field.high}"
    return f"{part!r} is not valid ({detail})" if detail else f"{part!r} is not valid"


def _check_field(fields: tuple[_Field, ...], index: int, text: str, source: str) -> None:
    """Let croniter parse one field alone; on error, find the part and name the field."""

    def refused(candidate: str) -> CroniterError | None:
        probe = ["*"] * len(fields)
        probe[index] = candidate
        try:
            croniter.expand(" ".join(probe), second_at_beginning=len(fields) == 6)
        except CroniterError as err:
            return err
        return None

    err = refused(text)
    if err is None:
        return
    part, culprit = text, err
    for candidate in text.split(","):
        found = refused(candidate)
        if found is not None:
            part, culprit = candidate, found
            break
    message = _croniter_message(culprit, fields[index], part)
    raise CronError(f"schedule {source!r}: {fields[index].name} field: {message}") from culprit


def parse(text: str) -> CronExpr:
    """Parse a cron expression (5 or 6 fields, or a macro); raises :class:`CronError`."""
    source = " ".join(str(text).split())
    if not source:
        raise CronError("schedule is empty")
    if source.upper().startswith(("TZ=", "CRON_TZ=")):
        raise CronError(
            f"schedule {source!r}: a TZ= or CRON_TZ= prefix is not supported; set spec.timeZone"
        )
    if source.startswith("@"):
        if source.lower() not in MACROS:
            raise CronError(
                f"schedule {source!r}: unknown macro; supported: {', '.join(sorted(MACROS))}"
            )
        return _build(source, source.lower(), has_seconds=False, check_days=False)
    words = source.split(" ")
    if len(words) not in (5, 6):
        extra = " (a year field is not supported)" if len(words) == 7 else ""
        raise CronError(
            f"schedule {source!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or 6 fields (second first), got {len(words)}{extra}"
        )
    fields = _FIVE if len(words) == 5 else _SIX
    parts = [
        [_part(field, part, source) for part in word.split(",")]
        for field, word in zip(fields, words, strict=True)
    ]
    for index, listed in enumerate(parts):
        if "*" in listed and len(listed) > 1:  # a list with * in it is * (rule 3), but the
            _check_field(fields, index, ",".join(listed), source)  # rest must be valid
    normalised = ["*" if "*" in listed else ",".join(listed) for listed in parts]
    try:
        return _build(
            source,
            " ".join(normalised),
            has_seconds=len(words) == 6,
            # rule 5: only a day of month in given months can never occur, and only when
            # day-of-week is unrestricted (a restricted one matches weekly under the OR rule)
            check_days="*" not in (normalised[-3], normalised[-2]) and normalised[-1] == "*",
        )
    except CronError:
        for index, word in enumerate(normalised):  # rule 1: which field croniter refused
            _check_field(fields, index, word, source)
        raise


def _build(source: str, expression: str, *, has_seconds: bool, check_days: bool) -> CronExpr:
    try:
        iterator = croniter(expression, _START, ret_type=datetime, second_at_beginning=has_seconds)
    except CroniterError as err:
        raise CronError(f"schedule {source!r}: {_detail(err) or 'invalid'}") from err
    if check_days:
        try:
            croniter.expand(expression, second_at_beginning=has_seconds, strict=True)
        except CroniterError as err:
            raise CronError(f"schedule {source!r} never matches: {_detail(err)}") from err
    return CronExpr(source, expression, has_seconds, iterator)


def _detail(err: CroniterError) -> str:
    """croniter's message without its echo of the expression and its own field numbers."""
    first = str(err).splitlines()[0] if str(err) else ""
    return re.sub(r"\s*in field \d+", "", _ECHO.sub("", first)).strip()


def load_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; raises :class:`TimeZoneError` if unknown."""
    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        raise TimeZoneError(f"timeZone {name!r} is not an IANA time zone name")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as err:
        raise TimeZoneError(
            f"timeZone {name!r} is not a known IANA time zone (e.g. UTC, Europe/Vienna)"
        ) from err


# --------------------------------------------------------------------------- instants


@dataclasses.dataclass(frozen=True)
class CronSchedule:
    """A cron expression read in a time zone: the instants (UTC) it is due at."""

    expr: CronExpr
    zone: zoneinfo.ZoneInfo

    @classmethod
    def of(cls, schedule: str, time_zone: str = "UTC") -> CronSchedule:
        """Parse ``schedule`` and load ``time_zone``; raises CronError or TimeZoneError."""
        return cls(parse(schedule), load_zone(time_zone))

    def instant(self, local: datetime) -> datetime:
        """The UTC instant a matching wall-clock time (naive) runs at (rule 4: DST)."""
        first = local.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if first.astimezone(self.zone).replace(tzinfo=None) == local:
            return first  # exists; for a repeated time fold=0 is its first occurrence
        second = local.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        return self._transition(min(first, second), max(first, second))

    def _transition(self, low: datetime, high: datetime) -> datetime:
        """The first instant in ``(low, high]`` with ``high``'s UTC offset (the gap's end)."""
        target = high.astimezone(self.zone).utcoffset()
        lo, hi = int(low.timestamp()), int(high.timestamp())
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, UTC).astimezone(self.zone).utcoffset() == target:
                hi = mid
            else:
                lo = mid
        return datetime.fromtimestamp(hi, UTC)

    def next_after(self, after: datetime) -> datetime | None:
        """The first instant strictly after ``after`` (aware), in UTC; ``None`` if none."""
        after_utc = after.astimezone(UTC)
        local = after_utc.astimezone(self.zone).replace(tzinfo=None)
        # Wall-clock candidates after ``local`` map to non-decreasing instants; only those in a
        # repeated hour (when ``after`` is its second occurrence) can still be <= after.
        for _ in range(100_000):
            candidate = self.expr.next_local(local)
            if candidate is None:
                return None
            instant = self.instant(candidate)
            if instant > after_utc:
                return instant
            local = candidate
        return None

    def between(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The instants in ``(after, until]``, oldest first."""
        current = after
        while True:
            nxt = self.next_after(current)
            if nxt is None or nxt > until:
                return
            yield nxt
            current = nxt

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` instants strictly after ``after``."""
        out: list[datetime] = []
        current = after
        while len(out) < count:
            nxt = self.next_after(current)
            if nxt is None:
                break
            out.append(nxt)
            current = nxt
        return out

    def latest(self, after: datetime, until: datetime, count: int) -> list[datetime]:
        """The newest ``count`` instants in ``(after, until]``, oldest first.

        Searches backwards in growing windows, so a long gap (a year of a per-second
        schedule) costs about as much as a short one.
        """
        if count <= 0 or until <= after:
            return []
        window = timedelta(seconds=60)
        while True:
            start = max(after, until - window)
            found: list[datetime] = []
            for instant in self.between(start, until):
                found.append(instant)
                if len(found) > 4 * count:
                    found = found[-count:]
            if len(found) >= count or start == after:
                return found[-count:]
            window *= 4

    def count_between(self, after: datetime, until: datetime, cap: int) -> int:
        """How many instants are in ``(after, until]``, counting at most to ``cap``."""
        n = 0
        for _ in self.between(after, until):
            n += 1
            if n >= cap:
                break
        return n
