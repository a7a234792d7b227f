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
    # 2024-06-07 is a Friday: 17:45 is the last run of the week, then Monday 09:00.
    got = upcoming("*/15 9-17 * * MON-FRI", "UTC", utc(2024, 6, 7, 17, 40, 30), 3)
    assert got == [utc(2024, 6, 7, 17, 45), utc(2024, 6, 10, 9, 0), utc(2024, 6, 10, 9, 15)]
    assert not parse("*/15 9-17 * * MON-FRI").has_seconds


def test_six_fields_put_seconds_first() -> None:
    # Second */20 of minute 5 of every hour (read seconds-last, it would be minute */20).
    got = upcoming("*/20 5 * * * *", "UTC", utc(2024, 1, 1, 0, 5, 30), 3)
    assert got == [utc(2024, 1, 1, 0, 5, 40), utc(2024, 1, 1, 1, 5), utc(2024, 1, 1, 1, 5, 20)]
    assert parse("*/20 5 * * * *").has_seconds


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_macros_equal_their_documented_expansion(macro: str) -> None:
    start = utc(2024, 2, 27, 13, 7)
    expected = upcoming(MACROS[macro], "UTC", start, 4)
    assert len(expected) == 4
    assert upcoming(macro, "UTC", start, 4) == expected
    assert upcoming(macro.upper(), "UTC", start, 4) == expected
    assert parse(macro.upper()).source == macro.upper()


def test_macros_run_at_midnight_or_on_the_hour() -> None:
    start = utc(2024, 2, 27, 13, 7)
    assert upcoming("@hourly", "UTC", start, 1) == [utc(2024, 2, 27, 14)]
    assert upcoming("@daily", "UTC", start, 1) == [utc(2024, 2, 28)]
    assert upcoming("@weekly", "UTC", start, 1) == [utc(2024, 3, 3)]  # a Sunday
    assert upcoming("@monthly", "UTC", start, 1) == [utc(2024, 3, 1)]
    assert upcoming("@yearly", "UTC", start, 1) == [utc(2025, 1, 1)]


def days(expr: str, after: datetime, count: int) -> list[tuple[int, int]]:
    return [(d.month, d.day) for d in upcoming(expr, "UTC", after, count)]


def test_names_steps_ranges_and_sunday_as_seven() -> None:
    # N/S is N-max/S: the 1st, 11th, 21st and 31st.
    assert days("0 0 1/10 * *", utc(2024, 1, 1), 5) == [(1, 11), (1, 21), (1, 31), (2, 1), (2, 11)]
    assert days("0 0 1 jan,Jul-SEP *", utc(2024, 1, 1), 4) == [(7, 1), (8, 1), (9, 1), (1, 1)]
    # 2024-06-03 is a Monday; 5-7 is Friday to Sunday, 7 and SUN are Sunday, ? is *.
    assert days("0 0 * * 5-7", utc(2024, 6, 3), 4) == [(6, 7), (6, 8), (6, 9), (6, 14)]
    assert days("0 0 ? * 7", utc(2024, 6, 3), 2) == [(6, 9), (6, 16)]
    assert days("0 0 * * SUN", utc(2024, 6, 3), 2) == [(6, 9), (6, 16)]


def test_an_equal_range_is_one_value() -> None:
    # croniter alone reads N-N as the whole field; a CronJob reads it as N.
    assert upcoming("0 9-9 * * *", "UTC", utc(2024, 1, 1), 2) == [
        utc(2024, 1, 1, 9),
        utc(2024, 1, 2, 9),
    ]
    assert days("0 0 * * MON-MON", utc(2024, 6, 4), 2) == [(6, 10), (6, 17)]
    assert upcoming("0 0 1 JUN-JUN/2 *", "UTC", utc(2024, 1, 1), 2) == [
        utc(2024, 6, 1),
        utc(2025, 6, 1),
    ]


def test_a_star_with_step_one_leaves_a_day_field_unrestricted() -> None:
    # */1 and ?/1 are *: only the 13th counts (croniter alone would OR it with every day).
    assert days("0 0 13 * */1", utc(2024, 6, 1), 2) == [(6, 13), (7, 13)]
    assert days("0 0 13 * ?/1", utc(2024, 6, 1), 2) == [(6, 13), (7, 13)]
    # ?/2 is */2 in a day field.
    assert days("0 0 ?/2 * *", utc(2024, 6, 1), 3) == [(6, 3), (6, 5), (6, 7)]


def test_a_list_with_a_star_is_a_star() -> None:
    # 13,* is *: day-of-month is unrestricted, so only Fridays count (2024-06: 7, 14, 21).
    assert days("0 0 13,* * FRI", utc(2024, 6, 1), 3) == [(6, 7), (6, 14), (6, 21)]
    with pytest.raises(CronError, match="day-of-month field: 60 is out of range 1-31"):
        parse("0 0 *,60 * *")


def test_a_day_field_listing_every_day_still_ors_with_a_stepped_star() -> None:
    # Both day fields are restricted, so every day matches (croniter alone would read 0-6 as *
    # because the other field has a star, and run on the 1st, 11th, 21st and 31st only).
    assert days("0 0 */10 * 0-6", utc(2024, 6, 1), 3) == [(6, 2), (6, 3), (6, 4)]
    assert days("0 0 1-31 * */3", utc(2024, 6, 1), 3) == [(6, 2), (6, 3), (6, 4)]


def test_a_day_of_week_step_reaches_sunday_as_seven() -> None:
    # 5/2 is 5-7/2: Friday and Sunday (2024-06-03 is a Monday).
    assert days("0 0 * * 5/2", utc(2024, 6, 3), 3) == [(6, 7), (6, 9), (6, 14)]
    assert days("0 0 * * 3-7/2", utc(2024, 6, 3), 4) == [(6, 5), (6, 7), (6, 9), (6, 12)]


def test_a_day_that_never_occurs_is_fine_when_day_of_week_is_or_ed() -> None:
    # The 30th of February never comes, but Mondays of February do (2025: 3, 10, 17, 24).
    got = upcoming("0 0 30 2 MON", "UTC", utc(2025, 1, 1), 5)
    assert got == [utc(2025, 2, d) for d in (3, 10, 17, 24)] + [utc(2026, 2, 2)]


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
        ("60 * * * * *", "second field: 60 is out of range 0-59"),
        ("0 60 * * * *", "minute field: 60 is out of range 0-59"),
        ("5-61 * * * *", "minute field: 5-61 is out of range 0-59"),
        ("1,2,61 * * * *", "minute field: 61 is out of range 0-59"),
        ("0 0 * * FRI-MON", "day-of-week field: range 'FRI-MON' is reversed"),
        ("*/0 * * * *", "minute field: '*/0' is not valid"),
        ("0 0 * * 1-3/0", "day-of-week field: '1-3/0' is not valid"),
        ("0 0 * * */0", "day-of-week field: '*/0' is not valid"),
        ("0 0 ?/0 * *", "day-of-month field: '*/0' is not valid"),
        ("0 0 * * 9/2", "day-of-week field: 9/2 is out of range 0-7"),
        ("0 JAN * * *", "hour field: 'JAN' is not a value (a number)"),
        (
            "0 0 L * *",
            "day-of-month field: 'L' is not a value (L, W, #, H and R are not supported)",
        ),
        ("0 0 l * *", "L, W, #, H and R are not supported"),
        ("0 0 15W * *", "L, W, #, H and R are not supported"),
        ("0 0 * * L5", "day-of-week field: 'L5' is not a value (L, W, #, H and R"),
        ("0 0 * * 5#2", "day-of-week field: cannot parse '5#2' (L, W, #, H and R"),
        ("H * * * *", "minute field: 'H' is not a value (L, W, #, H and R are not supported)"),
        ("R R * * *", "minute field: 'R' is not a value (L, W, #, H and R are not supported)"),
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


def test_an_hourly_skipped_time_runs_at_the_end_of_the_gap_too() -> None:
    # croniter alone drops 02:30 here (the hour field is *); the documented rule runs it at 03:00.
    got = upcoming("30 * * * *", "Europe/Vienna", utc(2024, 3, 30, 23, 45), 3)
    assert got == [utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 30)]


def test_a_repeated_hour_runs_only_in_its_first_pass() -> None:
    # croniter alone runs 02:00 and 02:30 in both passes; here they run once, at 00:00Z and
    # 00:30Z (CEST), and the next run is 03:00 CET (02:00Z).
    got = upcoming("0,30 * * * *", "Europe/Vienna", utc(2024, 10, 26, 23, 45), 3)
    assert got == [utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 2, 0)]


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
