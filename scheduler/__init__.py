"""The cron service: standard cron in IANA zones, one fire per due time, submits only."""

from scheduler.cron import Cron, CronError, parse
from scheduler.fire import fire_batch, release_waiting
from scheduler.recovery import recover_stale_claims
from scheduler.service import SchedulerService
from scheduler.timing import FireTimes, ZoneError, zone
from shared.states import FireOutcome, Overlap

__all__ = [
    "Cron",
    "CronError",
    "FireOutcome",
    "FireTimes",
    "Overlap",
    "SchedulerService",
    "ZoneError",
    "fire_batch",
    "parse",
    "recover_stale_claims",
    "release_waiting",
    "zone",
]
