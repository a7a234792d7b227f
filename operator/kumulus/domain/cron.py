"""Cron expressions and their instants in an IANA time zone, with explicit DST rules.

Kumulus parses cron itself (instead of using croniter) to control exactly what Schedule users
rely on: the optional seconds field, the day-of-month/day-of-week rule of Kubernetes CronJob,
clear error messages naming the bad field, and what happens to local times that a daylight
saving transition skips or repeats.

Syntax
    ``minute hour day-of-month month day-of-week`` (5 fields, as in a Kubernetes CronJob), or
    ``second minute hour day-of-month month day-of-week`` (6 fields: **seconds first**, like
    Quartz and robfig ``cron.WithSeconds``), or a macro: ``@yearly`` (= ``@annually``),
    ``@monthly``, ``@weekly``, ``@daily`` (= ``@midnight``), ``@hourly``. Each field is a
    comma-separated list of ``*``, ``N``, ``N-M``, with an optional step ``/S`` (``*/S``,
    ``N-M/S``, ``N/S`` = ``N-max/S``). Months accept ``JAN``-``DEC``, days of week ``SUN``-``SAT``
    and ``0``-``7`` (0 and 7 are Sunday); ``?`` equals ``*`` in the two day fields.

Day of month and day of week
    As in Kubernetes CronJob (robfig/cron): when both day fields are restricted, a day matches
    if *either* matches; when one is ``*`` (or ``?``), only the other one counts.

Daylight saving time (the expression is read in local wall-clock time)
    * A local time that does not exist (skipped when clocks go forward, e.g. 02:30 in
      Europe/Vienna on the last Sunday of March) runs at the first instant after the gap
      (03:00 local). Several skipped times collapse into that one instant: one run, not many.
    * A local time that occurs twice (clocks go back, e.g. 02:30 on the last Sunday of October)
      runs once, at its first occurrence. An expression matching every minute therefore has no
      runs during the repeated hour; use ``timeZone: UTC`` for a steady interval.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import re
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

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
"""The supported macros and the 5-field expressions they stand for."""

_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
_DAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_SEARCH_YEARS = 30
"""How far ahead a next time is searched; satisfiable expressions match within 8 years."""


class CronError(ValueError):
    """An invalid cron expression; the message names the field and says what is wrong."""


class TimeZoneError(ValueError):
    """An unknown or invalid IANA time zone name."""


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS)
_DOW = _Field("day-of-week", 0, 7, _DAYS)


@dataclasses.dataclass(frozen=True)
class CronExpr:
    """A parsed cron expression: the allowed values of each field (sorted)."""

    source: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    """0 = Sunday ... 6 = Saturday."""
    days_any: bool
    weekdays_any: bool
    has_seconds: bool

    def day_matches(self, year: int, month: int, day: int) -> bool:
        """Whether the calendar day matches the day-of-month/day-of-week fields."""
        weekday = (calendar.weekday(year, month, day) + 1) % 7
        dom = day in self.days
        dow = weekday in self.weekdays
        if self.days_any or self.weekdays_any:
            return dom and dow
        return dom or dow

    def next_local(self, after: datetime) -> datetime | None:
        """The first matching wall-clock time strictly after ``after`` (both naive)."""
        if self.has_seconds:
            t = after.replace(microsecond=0) + timedelta(seconds=1)
        else:
            t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t.year + _SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                month = _next_value(self.months, t.month)
                t = datetime(t.year, month, 1) if month else datetime(t.year + 1, self.months[0], 1)
                continue
            if not self.day_matches(t.year, t.month, t.day):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                hour = _next_value(self.hours, t.hour)
                if hour is None:
                    t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                else:
                    t = t.replace(hour=hour, minute=0, second=0)
                continue
            if t.minute not in self.minutes:
                minute = _next_value(self.minutes, t.minute)
                if minute is None:
                    t = t.replace(minute=0, second=0) + timedelta(hours=1)
                else:
                    t = t.replace(minute=minute, second=0)
                continue
            if t.second not in self.seconds:
                second = _next_value(self.seconds, t.second)
                if second is None:
                    t = t.replace(second=0) + timedelta(minutes=1)
                else:
                    t = t.replace(second=second)
                continue
            return t
        return None


def _next_value(values: tuple[int, ...], current: int) -> int | None:
    """The smallest value greater than ``current``, or ``None``."""
    index = bisect.bisect_right(values, current)
    return values[index] if index < len(values) else None


# --------------------------------------------------------------------------- parsing

_PART = re.compile(r"^(?P<base>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>[0-9]+))?$")


def _value(field: _Field, text: str, source: str) -> int:
    if text.isdigit():
        value = int(text)
    elif field.names and text.upper() in field.names:
        value = field.names[text.upper()]
    else:
        hint = ""
        if field in (_DOM, _DOW) and any(c in text.upper() for c in "LW"):
            hint = " (L, W and # are not supported)"
        elif field.names is not None:
            hint = f" (a number or one of {', '.join(field.names)})"
        raise CronError(f"schedule {source!r}: {field.name} field: {text!r} is not a value{hint}")
    if not field.low <= value <= field.high:
        raise CronError(
            f"schedule {source!r}: {field.name} field: {value} is out of range "
            f"{field.low}-{field.high}"
        )
    return value


def _parse_field(field: _Field, text: str, source: str) -> tuple[tuple[int, ...], bool]:
    """Allowed values of one field and whether it is unrestricted (``*`` or ``?``)."""
    values: set[int] = set()
    unrestricted = False
    for part in text.split(","):
        match = _PART.match(part)
        if match is None:
            special = ""
            if any(c in part for c in "LW#"):
                special = " (L, W and # are not supported)"
            raise CronError(
                f"schedule {source!r}: {field.name} field: cannot parse {part!r}{special}"
            )
        base, step_text = match.group("base"), match.group("step")
        step = 1
        if step_text is not None:
            step = int(step_text)
            if step == 0:
                raise CronError(f"schedule {source!r}: {field.name} field: step 0 in {part!r}")
        if base in ("*", "?"):
            if base == "?" and field not in (_DOM, _DOW):
                raise CronError(
                    f"schedule {source!r}: {field.name} field: '?' is only allowed in the "
                    "day-of-month and day-of-week fields"
                )
            low, high = field.low, field.high
            if step == 1:
                unrestricted = True
        elif "-" in base:
            first, last = base.split("-", 1)
            low, high = _value(field, first, source), _value(field, last, source)
            if low > high:
                raise CronError(
                    f"schedule {source!r}: {field.name} field: range {base!r} is reversed"
                )
        else:
            low = _value(field, base, source)
            high = field.high if step_text is not None else low
        values.update(range(low, high + 1, step))
    if field is _DOW:
        values = {v % 7 for v in values}
    return tuple(sorted(values)), unrestricted


def parse(text: str) -> CronExpr:
    """Parse a cron expression (5 or 6 fields, or a macro); raises :class:`CronError`."""
    source = " ".join(str(text).split())
    if not source:
        raise CronError("schedule is empty")
    upper = source.upper()
    if upper.startswith(("TZ=", "CRON_TZ=")):
        raise CronError(
            f"schedule {source!r}: a TZ= or CRON_TZ= prefix is not supported; set spec.timeZone"
        )
    expanded = source
    if source.startswith("@"):
        macro = MACROS.get(source.lower())
        if macro is None:
            raise CronError(
                f"schedule {source!r}: unknown macro; supported: {', '.join(sorted(MACROS))}"
            )
        expanded = macro
    fields = expanded.split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
        has_seconds = False
    elif len(fields) == 6:
        has_seconds = True
    else:
        extra = " (a year field is not supported)" if len(fields) == 7 else ""
        raise CronError(
            f"schedule {source!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or 6 fields (second first), got {len(fields)}{extra}"
        )
    parsed = [
        _parse_field(field, part, source)
        for field, part in zip((_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW), fields, strict=True)
    ]
    expr = CronExpr(
        source=source,
        seconds=parsed[0][0],
        minutes=parsed[1][0],
        hours=parsed[2][0],
        days=parsed[3][0],
        months=parsed[4][0],
        weekdays=parsed[5][0],
        days_any=parsed[3][1],
        weekdays_any=parsed[5][1],
        has_seconds=has_seconds,
    )
    _check_satisfiable(expr)
    return expr


def _check_satisfiable(expr: CronExpr) -> None:
    """Reject expressions that never match, such as ``0 0 30 2 *``."""
    if expr.days_any or not expr.weekdays_any:
        return  # every day, or day-of-week alone / OR-ed with day-of-month: matches weekly
    longest = {m: 29 if m == 2 else calendar.monthrange(2001, m)[1] for m in range(1, 13)}
    if not any(day <= longest[month] for month in expr.months for day in expr.days):
        raise CronError(
            f"schedule {expr.source!r} never matches: no day-of-month in "
            f"{','.join(map(str, expr.days))} exists in month(s) "
            f"{','.join(map(str, expr.months))}"
        )


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
        """The UTC instant a matching wall-clock time (naive) runs at (see module DST rules)."""
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
