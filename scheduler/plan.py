"""Deciding, from a schedule's row and the clock, what is due: no database work here.

A schedule's `next_run_at` is the marker: the first due time nobody has handled yet.
Every due time from the marker up to now is handled at once: the latest fires if it is
within `misfire_grace_seconds`, every earlier one is recorded as missed. Never a burst.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from scheduler.timing import FireTimes
from shared.states import ExecutionStatus, FireOutcome, Overlap
from shared.store.schedules import Record

log = logging.getLogger(__name__)

MAX_MISSED_RECORDED = 100  #: missed due times written individually per catch-up
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Plan:
    """For one schedule: the marker to store, the misses to record, the due time to fire."""

    schedule: Any  # a row of `schedules`
    next_run_at: datetime | None
    missed: list[Record] = field(default_factory=list)
    due: datetime | None = None  # within the grace: fire it (overlap permitting)


def plan(row: Any, now: datetime, allow_seconds: bool) -> Plan | None:
    """What to do for a locked schedule row at `now`; None when there is nothing to write."""
    if not row.enabled:
        return None
    try:
        times = FireTimes.of(row.cron, row.timezone, allow_seconds)
    except ValueError as exc:
        log.warning("schedule %s cannot fire: %s", row.id, exc)
        return None
    marker = row.next_run_at
    if marker is not None and marker > now:
        log.debug("schedule %s: nothing due (handled up to %s)", row.id, marker)
        return None
    due = times.previous(now)
    if marker is None or due is None or due < marker:
        return Plan(row, times.next_after(now))
    missed = [] if due == marker else _missed(times, marker, due)
    late = (now - due).total_seconds()
    if late <= row.misfire_grace_seconds:
        return Plan(row, times.next_after(now), missed, due)
    missed.append(
        Record(
            due,
            FireOutcome.missed,
            f"fired {late:.0f} s late, beyond misfire_grace_seconds ({row.misfire_grace_seconds})",
        )
    )
    return Plan(row, times.next_after(now), missed)


def _missed(times: FireTimes, start: datetime, due: datetime) -> list[Record]:
    """Due times in [start, due) that no scheduler fired, oldest first (the newest 100)."""
    found: list[datetime] = []
    earlier = times.previous(due - _MICROSECOND)
    while earlier is not None and earlier >= start and len(found) < MAX_MISSED_RECORDED:
        found.append(earlier)
        earlier = times.previous(earlier - _MICROSECOND)
    reason = "no scheduler fired it in time; only the latest due time is caught up"
    if earlier is not None and earlier >= start:
        reason += f" (earlier misses back to {start.isoformat()} are not listed)"
    return [Record(when, FireOutcome.missed, reason) for when in reversed(found)]


def overlap_decision(
    overlap: str, busy: Sequence[tuple[str, str]]
) -> tuple[FireOutcome, str] | None:
    """What the overlap policy makes of a fire (outcome, reason), or None to submit it now.

    `busy` holds (id, status) of this schedule's executions still pending or running, and
    (fire id, "claimed" | "waiting") of its fires being submitted or held back.
    """
    if overlap == Overlap.allow or not busy:
        return None
    by_status: dict[str, list[str]] = {}
    for item, status in busy:
        by_status.setdefault(status, []).append(item)
    waiting = by_status.get(FireOutcome.waiting.value)
    if overlap == Overlap.queue and waiting:
        return (
            FireOutcome.skipped,
            f"fire {waiting[0]} of this schedule is already waiting (overlap: queue keeps one)",
        )
    for status, what in (
        (ExecutionStatus.running.value, "previous run {} is still running"),
        (ExecutionStatus.pending.value, "previous run {} is still pending"),
        (FireOutcome.claimed.value, "the previous fire ({}) is still being submitted"),
        (FireOutcome.waiting.value, "fire {} of this schedule is waiting"),
    ):
        if status in by_status:
            busy_with = what.format(by_status[status][0])
            break
    if overlap == Overlap.queue:
        return FireOutcome.waiting, f"{busy_with}; waits for it to end (overlap: queue)"
    return FireOutcome.skipped, f"{busy_with} (overlap: skip)"
