"""Cron parsing (5 and 6 fields, macros, errors) and next times, across DST in several zones."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from kumulus.domain.cron import (
    MACROS,
    CronError,
    CronSchedule,
    TimeZoneError,
    load_zone,
    parse,
)

pytestmark = pytest.mark.unit


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def upcoming(expr: str, zone: str, after: datetime, count: int) -> list[datetime]:
    return CronSchedule.of(expr, zone).upcoming(after, count)


# --------------------------------------------------------------------------- parsing


def test_five_fields_have_an_implicit_zero_second() -> None:
    expr = parse("*/15 9-17 * * MON-FRI")
    assert expr.seconds == (0,)
    assert expr.minutes == (0, 15, 30, 45)
    assert expr.hours == tuple(range(9, 18))
    assert expr.weekdays == (1, 2, 3, 4, 5)
    assert not expr.has_seconds


def test_six_fields_put_seconds_first() -> None:
    expr = parse("*/20 5 * * * *")
    assert expr.has_seconds
    assert expr.seconds == (0, 20, 40)
    assert expr.minutes == (5,)
    assert expr.hours == tuple(range(24))


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_macros_equal_their_expansion(macro: str) -> None:
    a, b = parse(macro), parse(MACROS[macro])
    assert (a.seconds, a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.seconds,
        b.minutes,
        b.hours,
        b.days,
        b.months,
        b.weekdays,
    )
    assert parse(macro.upper()).source == macro.upper()


def test_names_steps_ranges_and_sunday_as_seven() -> None:
    expr = parse("0 0 1/10 jan,Jul-SEP 5-7")
    assert expr.days == (1, 11, 21, 31)
    assert expr.months == (1, 7, 8, 9)
    assert expr.weekdays == (0, 5, 6)
    assert parse("0 0 ? * 7").weekdays == (0,)
    assert parse("0 0 * * SUN").weekdays == (0,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "schedule is empty"),
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6"),
        ("0 0 0 1 1 * 2030", "a year field is not supported"),
        ("61 * * * *", "minute field: 61 is out of range 0-59"),
        ("0 24 * * *", "hour field: 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("0 0 * 13 *", "month field: 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("0 0 * FOO *", "month field: 'FOO' is not a value (a number or one of JAN"),
        ("5-1 * * * *", "minute field: range '5-1' is reversed"),
        ("*/0 * * * *", "minute field: step 0"),
        ("0 0 L * *", "L, W and # are not supported"),
        ("0 0 * * 5#2", "L, W and # are not supported"),
        ("? * * * *", "'?' is only allowed in the day-of-month and day-of-week fields"),
        ("1,,2 * * * *", "minute field: cannot parse ''"),
        ("@reboot", "unknown macro; supported: @annually, @daily"),
        ("@every 5m", "unknown macro"),
        ("TZ=Europe/Vienna 0 7 * * *", "set spec.timeZone"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 31 4,6,9,11 *", "never matches"),
    ],
)
def test_errors_name_the_field_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(CronError) as err:
        parse(text)
    assert message in str(err.value)


def test_february_29th_is_satisfiable_and_found() -> None:
    assert upcoming("0 0 29 2 *", "UTC", utc(2024, 3, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_unknown_time_zones_are_rejected() -> None:
    for name in ("Mars/Olympus_Mons", "../../etc/passwd", "", " UTC", "/etc/localtime"):
        with pytest.raises(TimeZoneError):
            load_zone(name)
    assert load_zone("Europe/Vienna").key == "Europe/Vienna"


# --------------------------------------------------------------------------- next times


def test_seconds_level_next_times_are_strictly_after() -> None:
    got = upcoming("*/5 * * * * *", "UTC", utc(2024, 1, 1, 0, 0, 5), 3)
    assert got == [utc(2024, 1, 1, 0, 0, 10), utc(2024, 1, 1, 0, 0, 15), utc(2024, 1, 1, 0, 0, 20)]
    fractional = datetime(2024, 1, 1, 0, 0, 4, 999_000, tzinfo=UTC)
    assert upcoming("*/5 * * * * *", "UTC", fractional, 1) == [utc(2024, 1, 1, 0, 0, 5)]


def test_day_fields_or_when_both_restricted_and_when_one_is_a_star() -> None:
    # 2024-06: the 13th is a Thursday; Fridays are 7, 14, 21, 28.
    both = upcoming("0 0 13 * FRI", "UTC", utc(2024, 6, 1), 4)
    assert [d.day for d in both] == [7, 13, 14, 21]
    only_dow = upcoming("0 0 * * FRI", "UTC", utc(2024, 6, 1), 2)
    assert [d.day for d in only_dow] == [7, 14]
    only_dom = upcoming("0 0 13 * ?", "UTC", utc(2024, 6, 1), 2)
    assert [(d.month, d.day) for d in only_dom] == [(6, 13), (7, 13)]
    # As in Kubernetes CronJob, a stepped star is a restriction: */10 OR Friday.
    stepped = upcoming("0 0 */10 * FRI", "UTC", utc(2024, 6, 1), 3)
    assert [d.day for d in stepped] == [7, 11, 14]


def test_between_latest_and_count_agree() -> None:
    sched = CronSchedule.of("*/5 * * * * *")
    start, end = utc(2024, 1, 1), utc(2024, 1, 1, 0, 1)
    every = list(sched.between(start, end))
    assert len(every) == 12 and every[-1] == end
    assert sched.latest(start, end, 3) == every[-3:]
    assert sched.latest(start, end, 100) == every
    assert sched.count_between(start, end, 5) == 5
    assert sched.count_between(start, end, 1000) == 12


def test_latest_after_a_year_of_a_per_second_schedule_is_cheap() -> None:
    sched = CronSchedule.of("* * * * * *")
    got = sched.latest(utc(2023, 1, 1), utc(2024, 1, 1), 5)
    assert got == [utc(2023, 12, 31, 23, 59, 56) + timedelta(seconds=i) for i in range(5)]


# --------------------------------------------------------------------------- DST


def test_vienna_skipped_time_runs_at_the_end_of_the_gap() -> None:
    # 2024-03-31 02:00 CET -> 03:00 CEST (01:00Z): 02:30 does not exist that day.
    got = upcoming("30 2 * * *", "Europe/Vienna", utc(2024, 3, 30, 2), 3)
    assert got == [utc(2024, 3, 31, 1, 0), utc(2024, 4, 1, 0, 30), utc(2024, 4, 2, 0, 30)]


def test_vienna_skipped_times_collapse_into_one_run() -> None:
    got = upcoming("*/15 2,3 * * *", "Europe/Vienna", utc(2024, 3, 30, 23), 5)
    # 02:00, 02:15, 02:30, 02:45 and 03:00 (local) are all one instant, then 03:15 ...
    assert got == [
        utc(2024, 3, 31, 1, 0),
        utc(2024, 3, 31, 1, 15),
        utc(2024, 3, 31, 1, 30),
        utc(2024, 3, 31, 1, 45),
        utc(2024, 4, 1, 0, 0),
    ]


def test_vienna_repeated_time_runs_once_at_its_first_occurrence() -> None:
    # 2024-10-27 03:00 CEST -> 02:00 CET (01:00Z): 02:30 happens at 00:30Z and at 01:30Z.
    got = upcoming("30 2 * * *", "Europe/Vienna", utc(2024, 10, 26, 2), 2)
    assert got == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_searching_from_the_second_occurrence_skips_the_repeated_hour() -> None:
    sched = CronSchedule.of("*/20 * * * *", "Europe/Vienna")
    # 01:05Z is 02:05 CET, the second pass through 02:xx: next is 03:00 CET.
    assert sched.next_after(utc(2024, 10, 27, 1, 5)) == utc(2024, 10, 27, 2, 0)


def test_an_hourly_schedule_has_one_run_per_wall_clock_hour_in_a_dst_year() -> None:
    runs = list(
        CronSchedule.of("0 * * * *", "Europe/Vienna").between(
            utc(2023, 12, 31, 23), utc(2024, 12, 31, 23)
        )
    )
    # 366 days * 24 wall-clock hours, minus the skipped 02:00 (collapsed into 03:00); the
    # repeated 02:00 runs once.
    assert len(runs) == 366 * 24 - 1
    assert all(b > a for a, b in itertools.pairwise(runs))


def test_new_york_gap_and_fold() -> None:
    # 2024-03-10 02:00 EST -> 03:00 EDT (07:00Z); 2024-11-03 02:00 EDT -> 01:00 EST (06:00Z).
    spring = upcoming("30 2 * * *", "America/New_York", utc(2024, 3, 9, 12), 2)
    assert spring == [utc(2024, 3, 10, 7, 0), utc(2024, 3, 11, 6, 30)]
    autumn = upcoming("30 1 * * *", "America/New_York", utc(2024, 11, 2, 12), 2)
    assert autumn == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


def test_lord_howe_thirty_minute_dst() -> None:
    # 2024-10-06 02:00 +10:30 -> 02:30 +11:00 (15:30Z on the 5th): 02:15 is skipped.
    spring = upcoming("15 2 * * *", "Australia/Lord_Howe", utc(2024, 10, 5, 10), 2)
    assert spring == [utc(2024, 10, 5, 15, 30), utc(2024, 10, 6, 15, 15)]
    # 2024-04-07 02:00 +11:00 -> 01:30 +10:30: 01:45 happens twice; it runs once, the first.
    autumn = upcoming("45 1 * * *", "Australia/Lord_Howe", utc(2024, 4, 6, 10), 2)
    assert autumn == [utc(2024, 4, 6, 14, 45), utc(2024, 4, 7, 15, 15)]


def test_kolkata_half_hour_offset_without_dst() -> None:
    sched = CronSchedule.of("0 9 1 * *", "Asia/Kolkata")
    got = sched.upcoming(utc(2024, 1, 1), 12)
    assert [d.month for d in got] == list(range(1, 13))
    assert {(d.hour, d.minute) for d in got} == {(3, 30)}


def test_dst_instants_are_whole_seconds_and_increasing_in_many_zones() -> None:
    for zone in ("Europe/Vienna", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"):
        sched = CronSchedule.of("*/7 */3 * * * *", zone)
        previous = utc(2024, 3, 1)
        for instant in sched.upcoming(previous, 2000):
            assert instant > previous and instant.microsecond == 0
            previous = instant
