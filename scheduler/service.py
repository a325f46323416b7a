"""`agx scheduler`: APScheduler timing one job per enabled schedule, kept in step with PostgreSQL.

The API runs in other processes, so changes are found by polling: every `poll_seconds` the
service reads (id, updated_at) of the enabled schedules, re-adds the jobs whose row changed
and drops those paused or deleted. A job only queues its schedule id; firer threads take
the queue in batches (many schedules due in the same second share one claim transaction)
and call `fire_batch`. Any number of these processes may run: the database admits one
record per due time, and a row another process holds is skipped and retried shortly.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from scheduler.dueset import DueSet
from scheduler.fire import fire_batch, release_waiting
from scheduler.recovery import recover_stale_claims
from scheduler.timing import FireTimes
from shared.models import utcnow
from shared.services import Services
from shared.store.schedules import enabled_versions, prune

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600.0  #: how often settled history older than HISTORY_DAYS goes
HISTORY_DAYS = 30.0  #: days of fire history kept
QUIET_ABOVE = 20  #: a sync loading more schedules than this logs them at debug level
BATCH_SIZE = 50  #: schedules claimed per transaction when many are due at once
RETRY_SECONDS = 0.05  #: wait before retrying a schedule whose row another transaction held
MAX_RETRIES = 100  #: then give up: the marker stays, so the schedule's next run catches up


class CronTrigger(BaseTrigger):
    """An APScheduler trigger on standard cron instants (Sunday = 0, DST handled by FireTimes).

    APScheduler's own CronTrigger counts day_of_week from Monday and has no day-of-month /
    day-of-week OR rule, so it is not used.
    """

    __slots__ = ("times",)

    def __init__(self, times: FireTimes):
        self.times = times

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The next cron instant after the previous fire (or after now)."""
        return self.times.next_after(previous_fire_time or now)

    def __str__(self) -> str:
        return f"cron[{self.times.cron.expression}]"


class SchedulerService:
    """One scheduler process: the APScheduler jobs, the firer threads, the sync loop."""

    def __init__(
        self,
        services: Services,
        poll_seconds: float = 1.0,
        threads: int = 10,
        allow_seconds: bool = False,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.services, self.poll_seconds, self.clock = services, poll_seconds, clock
        self.allow_seconds = allow_seconds
        self.scheduler_id = f"{socket.gethostname()}:{os.getpid()}"
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(2)},  # jobs only queue ids
            # Lateness and catch-up are decided by fire_batch against the database marker;
            # APScheduler must never drop a run as missed on its own.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.due = DueSet()
        self.firers = [
            threading.Thread(target=self._firer, name=f"firer-{i}", daemon=True)
            for i in range(threads)
        ]
        self.versions: dict[str, datetime] = {}
        self.jobless: set[str] = set()  #: loaded, but never fire (bad cron here, or no time left)
        self.retries: dict[str, int] = {}
        self._retries_lock = threading.Lock()
        self._last_prune = float("-inf")

    def run(self, stop: threading.Event) -> None:
        """Fire schedules until `stop` is set, then let the firers finish their batches."""
        for noisy in ("apscheduler", "pika"):  # a line per job added / per connection
            logging.getLogger(noisy).setLevel(logging.WARNING)
        for firer in self.firers:
            firer.start()
        self.scheduler.start()
        log.info("scheduler %s started (poll every %.1f s)", self.scheduler_id, self.poll_seconds)
        try:
            while True:
                self.tick()
                if stop.wait(self.poll_seconds):
                    break
        finally:
            self.scheduler.shutdown(wait=True)
            self.due.close()
            for firer in self.firers:
                firer.join(timeout=30)
            log.info("scheduler %s stopped", self.scheduler_id)

    def tick(self) -> None:
        """One round of housekeeping: sync jobs, settle stale claims, submit queued fires whose
        previous run has ended, prune old history."""
        for step in (self.sync, self._recover, self._release, self._prune):
            try:
                step()
            except Exception:  # database away: keep the jobs we have, try again next round
                log.exception("scheduler %s failed", step.__name__)

    def sync(self) -> None:
        """Add, replace or drop jobs so they match the enabled schedules in the database."""
        with self.services.Session() as session:
            rows = enabled_versions(session)
        now = self.clock()
        changed = [
            row
            for row in rows
            if self.versions.get(row.id) != row.updated_at
            or (row.id not in self.jobless and not self.scheduler.get_job(row.id))
        ]
        gone = set(self.versions) - {row.id for row in rows}
        for row in changed:
            self._load(row, now, logging.DEBUG if len(changed) > QUIET_ABOVE else logging.INFO)
        for schedule_id in gone:
            del self.versions[schedule_id]
            self.jobless.discard(schedule_id)
            self._drop(schedule_id)
            log.info("schedule %s paused or deleted", schedule_id)
        if changed or gone:
            log.info(
                "in sync: %d enabled schedules (%d loaded, %d dropped)",
                len(rows),
                len(changed),
                len(gone),
            )

    def _load(self, row: Any, now: datetime, level: int = logging.INFO) -> None:
        """(Re)add the job of one schedule: at once when a due time is pending, else at its next."""
        self.versions[row.id] = row.updated_at
        try:
            times = FireTimes.of(row.cron, row.timezone, self.allow_seconds)
        except ValueError as exc:
            log.warning("schedule %s is not loaded: %s", row.id, exc)
            times = None
        upcoming = [t for t in (row.next_run_at, times and times.next_after(now)) if t]
        if times is None or not upcoming:
            self.jobless.add(row.id)  # not retried until the row changes
            self._drop(row.id)
            return
        self.jobless.discard(row.id)
        self.scheduler.add_job(
            self._enqueue,
            CronTrigger(times),
            args=[row.id],
            id=row.id,
            replace_existing=True,
            next_run_time=max(min(upcoming), now),
        )
        log.log(
            level,
            "schedule %s loaded: %s %s, next %s",
            row.id,
            row.cron,
            row.timezone,
            min(upcoming).isoformat(),
        )

    def _drop(self, schedule_id: str) -> None:
        if self.scheduler.get_job(schedule_id):
            self.scheduler.remove_job(schedule_id)

    def _enqueue(self, schedule_id: str) -> None:
        """The APScheduler job: hand the schedule to the firers."""
        self.due.add(schedule_id)

    def _firer(self) -> None:
        """Take due schedule ids in batches and fire them, until the set is closed."""
        while (batch := self.due.take(BATCH_SIZE)) is not None:
            self._fire(batch)

    def _fire(self, ids: list[str]) -> None:
        try:
            fired = fire_batch(
                self.services,
                ids,
                self.clock(),
                self.scheduler_id,
                self.allow_seconds,
                skip_locked=True,
            )
        except Exception:  # the markers are untouched: the next run catches up
            log.exception("firing %d schedules failed", len(ids))
            return
        self._retry(ids, fired.locked)

    def _retry(self, ids: list[str], locked: list[str]) -> None:
        """Queue the locked ones again shortly (their holder is usually the other scheduler)."""
        again = []
        with self._retries_lock:
            for schedule_id in set(ids) - set(locked):
                self.retries.pop(schedule_id, None)
            for schedule_id in locked:
                count = self.retries.get(schedule_id, 0) + 1
                if count > MAX_RETRIES:
                    log.warning("schedule %s stayed locked; its next run catches up", schedule_id)
                    self.retries.pop(schedule_id)
                else:
                    self.retries[schedule_id] = count
                    again.append(schedule_id)
        if again:
            self.scheduler.add_job(
                self._requeue,
                "date",
                args=[again],
                run_date=self.clock() + timedelta(seconds=RETRY_SECONDS),
            )

    def _requeue(self, ids: list[str]) -> None:
        for schedule_id in ids:
            self.due.add(schedule_id)

    def _recover(self) -> None:
        recover_stale_claims(self.services, self.clock(), self.scheduler_id)

    def _release(self) -> None:
        release_waiting(self.services, self.scheduler_id)

    def _prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        with self.services.Session.begin() as session:
            removed = prune(session, HISTORY_DAYS)
        if removed:
            log.info("pruned %d schedule history records older than %s days", removed, HISTORY_DAYS)
