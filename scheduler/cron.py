"""Standard 5-field cron expressions: parsing, validation and wall-clock matching.

Semantics follow Vixie cron / cronie: minute hour day-of-month month day-of-week, with
day-of-week 0 or 7 = Sunday, three-letter names (`mon`, `jan`), lists, ranges, steps and
the `@hourly`-style macros. When both day fields are restricted (neither begins with `*`)
a day matches if EITHER matches. Fire instants (time zones, DST) live in `scheduler.timing`.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, timedelta

SEARCH_YEARS = 10  #: how far ahead a fire time is looked for (covers leap days, 2100 too)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class CronError(ValueError):
    """A cron expression that is not valid standard cron."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_SECOND = _Field("second", 0, 59, {})
_MINUTE = _Field("minute", 0, 59, {})
_HOUR = _Field("hour", 0, 23, {})
_DOM = _Field("day-of-month", 1, 31, {})
_MONTH = _Field("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)})
_DOW = _Field("day-of-week", 0, 7, {n: i for i, n in enumerate(_DAYS)})


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field, weekdays counted from Sunday=0."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_or: bool  #: both day fields restricted: standard cron's OR rule
    any_hour: bool  #: hour field is `*`: a repeated (fall-back) hour fires at both passes

    def day_matches(self, day: date) -> bool:
        """Whether the day-of-month / day-of-week fields accept this calendar day."""
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays  # isoweekday: Monday=1 ... Sunday=7
        return (dom or dow) if self.day_or else (dom and dow)

    def next_wall(self, start: datetime) -> datetime | None:
        """The first naive wall-clock time >= start (whole seconds) that the fields accept."""
        t = start.replace(microsecond=0) + (
            timedelta(seconds=1) if start.microsecond else timedelta()
        )
        limit = start.year + SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                t = _first_of_next_month(t)
            elif not self.day_matches(t.date()):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            else:
                found = self._time_in_day(t)
                if found is not None:
                    return found
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
        return None

    def _time_in_day(self, t: datetime) -> datetime | None:
        """The first accepted time of day at or after t, on t's own day."""
        for hour in self.hours[bisect_left(self.hours, t.hour) :]:
            same_hour = hour == t.hour
            for minute in self.minutes[bisect_left(self.minutes, t.minute) if same_hour else 0 :]:
                floor = t.second if same_hour and minute == t.minute else 0
                i = bisect_left(self.seconds, floor)
                if i < len(self.seconds):
                    return t.replace(hour=hour, minute=minute, second=self.seconds[i])
        return None


def _first_of_next_month(t: datetime) -> datetime:
    return datetime(t.year + (t.month == 12), t.month % 12 + 1, 1)


def parse(expression: str, allow_seconds: bool = False) -> Cron:
    """Parse standard cron (or a macro); a leading seconds field only with allow_seconds."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronError("must be a cron expression like '0 9 * * mon'")
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise CronError(f"unknown macro '{text[:20]}'; use one of {', '.join(MACROS)}")
        text = MACROS[text.lower()]
    parts = text.split(" ")
    if len(parts) == 6 and allow_seconds:
        second, parts = _values(parts[0], _SECOND), parts[1:]
    elif len(parts) == 5:
        second = frozenset({0})
    else:
        raise CronError(
            f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    minute, hour, dom, month, dow = (
        _values(p, f) for p, f in zip(parts, (_MINUTE, _HOUR, _DOM, _MONTH, _DOW), strict=True)
    )
    cron = Cron(
        text,
        tuple(sorted(second)),
        tuple(sorted(minute)),
        tuple(sorted(hour)),
        dom,
        month,
        frozenset(d % 7 for d in dow),
        day_or=not parts[2].startswith("*") and not parts[4].startswith("*"),
        any_hour=parts[1] == "*",
    )
    if cron.next_wall(datetime(2000, 1, 1)) is None:
        raise CronError("never fires (no such day, like 30 February)")
    return cron


def _values(text: str, field: _Field) -> frozenset[int]:
    """The set of values one field accepts."""
    values: set[int] = set()
    for item in text.split(","):
        values.update(_item(item, field))
    return frozenset(values)


def _item(item: str, field: _Field) -> range:
    """One list item: `*`, `a`, `a-b`, any of them with `/step`."""
    body, slash, step_text = item.partition("/")
    step = _number(step_text, field, "step") if slash else 1
    if slash and step < 1:
        raise CronError(f"{field.name}: step must be at least 1")
    high_default = 6 if field is _DOW else field.high  # `*` for weekdays is 0-6, not 0-7
    if body == "*":
        low, high = field.low, high_default
    elif "-" in body:
        low_text, high_text = body.split("-", 1)
        low, high = _value(low_text, field), _value(high_text, field)
        if field is _DOW and high == 0 and low > 0:
            high = 7  # `sat-sun`, `mon-sun`: Sunday as the end of a range is 7
        if low > high:
            raise CronError(f"{field.name}: range '{body}' runs backwards")
    else:
        low = _value(body, field)
        high = high_default if slash else low  # `5/15` means 5-max/15, as in cronie
    return range(low, high + 1, step)


def _value(text: str, field: _Field) -> int:
    if text.lower() in field.names:
        return field.names[text.lower()]
    value = _number(text, field, "value")
    if not field.low <= value <= field.high:
        raise CronError(f"{field.name}: {value} is out of range {field.low}-{field.high}")
    return value


def _number(text: str, field: _Field, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise CronError(f"{field.name}: '{text[:20]}' is not a valid {what}")
    return int(text)
