"""The cron service: standard cron in IANA zones, one fire per due time, submits only."""

from scheduler.cron import TEST_SECONDS_ENV, Cron, CronError, parse, test_seconds_enabled
from scheduler.fire import fire_batch, fire_due, release_waiting
from scheduler.records import FireOutcome, Overlap
from scheduler.recovery import recover_stale_claims
from scheduler.service import SchedulerService
from scheduler.timing import FireTimes, ZoneError, zone

__all__ = [
    "TEST_SECONDS_ENV",
    "Cron",
    "CronError",
    "FireOutcome",
    "FireTimes",
    "Overlap",
    "SchedulerService",
    "ZoneError",
    "fire_batch",
    "fire_due",
    "parse",
    "recover_stale_claims",
    "release_waiting",
    "test_seconds_enabled",
    "zone",
]
