"""Fire instants of a cron in an IANA time zone, daylight-saving time included.

A matching wall-clock time becomes one instant. A time that does not exist (the hour
skipped when clocks spring forward) fires once, at the first instant after the gap, as
Vixie cron does; a time that happens twice (clocks fall back) fires once, at its first
pass, unless the hour field is `*`, where both passes are real hours and both fire.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, available_timezones

from scheduler.cron import SEARCH_YEARS, Cron, parse

DST_WINDOW = timedelta(hours=3)  #: wider than any zone's DST shift (Antarctica/Troll: 2 h)
_SECOND = timedelta(seconds=1)


class ZoneError(ValueError):
    """A time zone name that is not an IANA zone."""


@functools.cache
def _zone_names() -> frozenset[str]:
    # `localtime` may be a link to this machine's zone: not a name that means the same anywhere.
    return (frozenset(available_timezones()) | {"UTC"}) - {"localtime", "posixrules"}


def zone(name: str) -> ZoneInfo:
    """The IANA zone called `name` (like 'Europe/Berlin'), or ZoneError."""
    if not isinstance(name, str) or name not in _zone_names():
        raise ZoneError("must be an IANA time zone name like 'Europe/Berlin' or 'UTC'")
    return ZoneInfo(name)


@dataclass(frozen=True)
class FireTimes:
    """A cron read in a time zone: the instants (UTC) at which it fires."""

    cron: Cron
    tz: tzinfo

    @classmethod
    def of(cls, expression: str, zone_name: str, allow_seconds: bool = False) -> FireTimes:
        """Parse and bind; raises CronError or ZoneError."""
        return cls(parse(expression, allow_seconds), zone(zone_name))

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire instant strictly after `after` (aware), in UTC."""
        after = after.astimezone(UTC)
        if self._steady(after):
            wall = self.cron.next_wall(self._local(after) + timedelta(microseconds=1))
            if wall is None:
                return None
            instant = wall.replace(tzinfo=self.tz).astimezone(UTC)
            if self._steady(instant):
                return instant
        return self._next_near_transition(after)

    def previous(self, at: datetime) -> datetime | None:
        """The last fire instant at or before `at`, in UTC (None if none in the search range)."""
        at = at.astimezone(UTC)
        span = _SECOND
        while span < timedelta(days=366 * SEARCH_YEARS):
            found = self.next_after(at - span)
            if found is not None and found <= at:
                while (later := self.next_after(found)) is not None and later <= at:
                    found = later
                return found
            span *= 2  # look further back only when nothing fired in the last `span`
        return None

    def is_fire_time(self, instant: datetime) -> bool:
        """Whether the cron fires exactly at this instant."""
        return self.next_after(instant - timedelta(microseconds=1)) == instant

    def instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants at which a matching naive wall-clock time fires."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        if self._local(first) != wall:  # skipped by a spring-forward gap
            return [self._gap_end(min(first, second), max(first, second))]
        if first != second and self.cron.any_hour:
            return [first, second]
        return [first]

    def _local(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def _steady(self, instant: datetime) -> bool:
        """No offset change within DST_WINDOW either side: wall time maps one-to-one."""
        return (instant - DST_WINDOW).astimezone(self.tz).utcoffset() == (
            instant + DST_WINDOW
        ).astimezone(self.tz).utcoffset()

    def _next_near_transition(self, after: datetime) -> datetime | None:
        """The slow path: walk wall times around `after` and keep the earliest later instant."""
        best: datetime | None = None
        wall = self.cron.next_wall(self._local(after) - DST_WINDOW)
        while wall is not None:
            if best is not None and wall > self._local(best) + DST_WINDOW:
                break
            for instant in self.instants(wall):
                if instant > after and (best is None or instant < best):
                    best = instant
            wall = self.cron.next_wall(wall + _SECOND)
        return best

    def _gap_end(self, before: datetime, after: datetime) -> datetime:
        """The transition instant between `before` (old offset) and `after` (new offset)."""
        target = after.astimezone(self.tz).utcoffset()
        while after - before > _SECOND:
            middle = before + timedelta(seconds=(after - before).total_seconds() // 2)
            if middle.astimezone(self.tz).utcoffset() == target:
                after = middle
            else:
                before = middle
        return after
