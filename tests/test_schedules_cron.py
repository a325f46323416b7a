"""Standard cron parsing and fire instants: weekdays from Sunday, the OR rule, DST, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from scheduler import CronError, FireTimes, ZoneError, parse, zone
from tests.helpers import WEEKDAYS, ZONES


def fires(expression: str, tz: str, start: datetime, count: int) -> list[datetime]:
    times = FireTimes.of(expression, tz, allow_seconds=True)
    found, t = [], start
    for _ in range(count):
        t = times.next_after(t)
        found.append(t)
    return found


def local(instants: list[datetime], tz: str) -> list[datetime]:
    return [i.astimezone(zone(tz)) for i in instants]


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize(("dow", "weekday"), WEEKDAYS.items())
def test_every_weekday_number_and_name_fires_on_that_weekday(tz, dow, weekday):
    # Ten weeks from 1 March 2026 cross the US and EU clock changes.
    found = local(fires(f"30 9 * * {dow}", tz, datetime(2026, 3, 1, tzinfo=UTC), 10), tz)
    assert [t.weekday() for t in found] == [weekday] * 10
    assert {(t.hour, t.minute) for t in found} == {(9, 30)}
    assert all(
        b - a in (timedelta(days=7), timedelta(days=7, hours=1), timedelta(days=7, hours=-1))
        for a, b in pairwise(found)
    )


def test_monday_is_monday_not_tuesday_as_in_apschedulers_own_cron_trigger():
    first = fires("0 9 * * 1", "UTC", datetime(2026, 3, 3, tzinfo=UTC), 1)[0]  # a Tuesday
    assert first == datetime(2026, 3, 9, 9, 0, tzinfo=UTC) and first.strftime("%a") == "Mon"


@pytest.mark.parametrize(
    ("dow", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat-sun", {5, 6}),
        ("5-7", {4, 5, 6}),
        ("0-7", set(range(7))),
        ("*/2", {6, 1, 3, 5}),
        ("MON,Wed,fri", {0, 2, 4}),
        ("1-5/2", {0, 2, 4}),
        ("mon-sun", set(range(7))),
    ],
)
def test_weekday_lists_ranges_and_steps(dow, days):
    found = fires(f"0 12 * * {dow}", "UTC", datetime(2026, 3, 1, tzinfo=UTC), 30)
    assert {t.weekday() for t in found} == days


def test_both_day_fields_restricted_fire_when_either_matches():
    found = fires("0 0 13 * fri", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 20)
    assert all(t.day == 13 or t.weekday() == 4 for t in found)
    assert datetime(2026, 4, 13, tzinfo=UTC) in found  # a Monday the 13th
    assert datetime(2026, 1, 2, tzinfo=UTC) in found  # a Friday the 2nd


def test_a_day_field_starting_with_a_star_is_unrestricted_as_in_vixie_cron():
    found = fires("0 0 */2 * fri", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 10)
    assert all(t.day % 2 == 1 and t.weekday() == 4 for t in found)


@pytest.mark.parametrize(
    ("macro", "first"),
    [
        ("@yearly", datetime(2027, 1, 1)),
        ("@annually", datetime(2027, 1, 1)),
        ("@monthly", datetime(2026, 4, 1)),
        ("@weekly", datetime(2026, 3, 15)),
        ("@daily", datetime(2026, 3, 11)),
        ("@midnight", datetime(2026, 3, 11)),
        ("@hourly", datetime(2026, 3, 10, 13)),
        ("@DAILY", datetime(2026, 3, 11)),
    ],
)
def test_macros(macro, first):
    start = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    assert fires(macro, "UTC", start, 1) == [first.replace(tzinfo=UTC)]


def test_month_names_steps_and_lists():
    found = fires("15 6,18 1 jan,JUL *", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 4)
    assert found == [
        datetime(2026, month, 1, hour, 15, tzinfo=UTC) for month in (1, 7) for hour in (6, 18)
    ]
    assert fires("*/20 * * * *", "UTC", datetime(2026, 1, 1, tzinfo=UTC), 3)[-1].minute == 0


def test_the_next_fire_is_strictly_after_the_given_instant():
    at = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    assert fires("0 9 * * *", "UTC", at, 1) == [at + timedelta(days=1)]
    assert fires("0 9 * * *", "UTC", at - timedelta(microseconds=1), 1) == [at]


def test_a_leap_day_schedule_waits_for_the_next_leap_year():
    assert fires("0 0 29 2 *", "UTC", datetime(2097, 1, 1, tzinfo=UTC), 1) == [
        datetime(2104, 2, 29, tzinfo=UTC)
    ]  # 2100 is not a leap year


def test_a_time_skipped_by_spring_forward_fires_once_right_after_the_gap():
    berlin = "Europe/Berlin"
    found = local(fires("30 2 * * *", berlin, datetime(2026, 3, 27, tzinfo=UTC), 4), berlin)
    assert [t.strftime("%m-%d %H:%M %Z") for t in found] == [
        "03-27 02:30 CET",
        "03-28 02:30 CET",
        "03-29 03:00 CEST",
        "03-30 02:30 CEST",
    ]


def test_a_time_repeated_by_fall_back_fires_once():
    berlin = "Europe/Berlin"
    found = local(fires("30 2 * * *", berlin, datetime(2026, 10, 23, tzinfo=UTC), 4), berlin)
    assert [t.strftime("%m-%d %H:%M %Z") for t in found] == [
        "10-23 02:30 CEST",
        "10-24 02:30 CEST",
        "10-25 02:30 CEST",
        "10-26 02:30 CET",
    ]


@pytest.mark.parametrize(
    ("day", "hours"), [(datetime(2026, 3, 29), 23), (datetime(2026, 10, 25), 25)]
)
def test_an_hourly_schedule_fires_every_real_hour_across_a_clock_change(day, hours):
    tz = zone("Europe/Berlin")
    start, end = day.replace(tzinfo=tz), (day + timedelta(days=1)).replace(tzinfo=tz)
    found = [
        t for t in fires("0 * * * *", "Europe/Berlin", start - timedelta(seconds=1), 30) if t < end
    ]
    assert len(found) == hours
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(found))


def test_a_quarter_hourly_schedule_does_not_burst_after_spring_forward():
    found = fires("*/15 * * * *", "Europe/Berlin", datetime(2026, 3, 29, 0, 40, tzinfo=UTC), 3)
    assert found == [
        datetime(2026, 3, 29, 0, 45, tzinfo=UTC) + timedelta(minutes=15 * i) for i in range(3)
    ]


def test_previous_finds_the_last_fire_at_or_before_an_instant():
    times = FireTimes.of("30 2 * * *", "Europe/Berlin")
    assert times.previous(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )
    assert times.previous(datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == datetime(
        2026, 3, 28, 1, 30, tzinfo=UTC
    )
    assert times.is_fire_time(datetime(2026, 3, 29, 1, 0, tzinfo=UTC))


def test_a_seconds_field_is_accepted_only_when_asked_for():
    assert parse("*/2 * * * * *", allow_seconds=True).seconds == tuple(range(0, 60, 2))
    with pytest.raises(CronError, match="5 fields"):
        parse("*/2 * * * * *")


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("* 24 * * *", "hour: 24"),
        ("* * 0 * *", "day-of-month: 0"),
        ("* * * 13 *", "month: 13"),
        ("* * * * 8", "day-of-week: 8"),
        ("* * * * mon-", "day-of-week"),
        ("* * * * funday", "day-of-week"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("* * * *", "5 fields"),
        ("@reboot", "unknown macro"),
        ("0 0 30 2 *", "never fires"),
        ("", "cron expression"),
        ("* * * * ١", "day-of-week"),
    ],
)
def test_bad_expressions_are_refused_saying_which_field(expression, problem):
    with pytest.raises(CronError, match=problem):
        parse(expression)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "+02:00", "localtime"])
def test_only_iana_zone_names_are_accepted(name):
    with pytest.raises(ZoneError):
        zone(name)
