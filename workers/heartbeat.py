"""Heartbeats of a worker process's running executions, in three threads that never wait on
each other:

- `lease-renewal` renews every slot lease each `heartbeat_seconds`, on a Redis connection of
  its own with a socket timeout: it never waits on PostgreSQL, nor long on Redis;
- `lease-fence` (no I/O at all) kills an agent whose lease this worker has not managed to
  renew for `lease_seconds - fence_margin`, measured on this process's monotonic clock from
  when the last successful renewal was *sent*. Redis stamped that renewal later than it was
  sent and purges the lease only `lease_seconds` after its stamp, so the agent is dead before
  anyone may take its slot — as long as the two clocks run at the same rate (within the
  margin) and this process itself is not frozen (a paused VM stops its agents too; see
  docs/architecture.md);
- `row-heartbeat` records `heartbeat_at` in PostgreSQL (bounded by a statement timeout) and
  reads stop requests from the row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import redis

from shared.services import Services
from shared.slots import Slots
from shared.store import executions

log = logging.getLogger(__name__)

ROW_EVERY = 3  #: lease renewals per write of heartbeat_at
FENCE_TICK_SECONDS = 0.1  #: how often the fence looks at the watches (no I/O)
ROW_STATEMENT_TIMEOUT_MS = 5000  #: longest a heartbeat_at write may wait (locks, a slow disk)


def fence_margin(lease_seconds: float) -> float:
    """How long before its lease could lapse a worker kills an agent it cannot renew: a sixth
    of the lease, at least 2 s (5 s of the default 30 s lease)."""
    return max(2.0, lease_seconds / 6)


class Watch:
    """One running execution's heartbeat state: lease, row, and the stop it may trigger."""

    def __init__(
        self,
        services: Services,
        agent: str,
        execution_id: str,
        max_parallel: int,
        timeout_seconds: float,
        attempt: int,
        leased_at: float,
    ):
        self.services, self.agent, self.execution_id = services, agent, execution_id
        self.max_parallel, self.attempt = max_parallel, attempt
        self.deadline = time.monotonic() + timeout_seconds + services.settings.lease_buffer_seconds
        self.renewed_at = leased_at  #: monotonic time the last successful renewal was sent
        self.stop = threading.Event()  # set to kill the agent
        self.reason: str | None = None
        self.unrenewed_seconds = 0.0  #: how long the lease went unrenewed when fenced
        self.pid: int | None = None  #: the agent's pid (= its process group), once started
        self.closed = False
        # Held by a renewal / by a fence; close() takes both. Apart, so that a fence never
        # waits for a renewal stuck on the very outage it is there for.
        self.renewing, self.fencing = threading.Lock(), threading.Lock()

    def started(self, pid: int) -> None:
        """The runner's on_start: the agent's process group, for the fence to kill."""
        self.pid = pid

    def exited(self) -> int | None:
        """The agent's process is gone (and may be reaped): nothing is left for the fence to
        kill, though it still marks a lease that goes unrenewed (the terminal write stops).
        Returns the pid it had, if it started."""
        with self.fencing:
            pid, self.pid = self.pid, None
        return pid

    def holds_lease(self) -> bool:
        """False once the lease was found gone or went unrenewed past the fence."""
        return self.reason not in ("lease", "unrenewed")

    def close(self) -> None:
        """No renewal or fence acts after this returns (a late renewal could restore a
        released lease; the agent's pid may be reaped and reused)."""
        with self.renewing, self.fencing:
            self.closed = True

    def renew(self, slots: Slots) -> None:
        """Renew the lease (raises when Redis fails); a lease found gone stops the agent."""
        with self.renewing:
            if self.closed or self.reason == "unrenewed":
                return
            sent = time.monotonic()
            if slots.renew(self.agent, self.execution_id, self.max_parallel, self.deadline - sent):
                self.renewed_at = sent
            else:
                self.kill("lease")

    def fence(self, fence_after: float) -> None:
        """SIGKILL the agent's group at once if the lease went unrenewed for `fence_after` s."""
        with self.fencing:
            unrenewed = time.monotonic() - self.renewed_at
            if self.closed or unrenewed <= fence_after or not self.holds_lease():
                return
            self.unrenewed_seconds = unrenewed
            self.kill("unrenewed")
            if self.pid is not None:  # not left to the runner's thread: it may be stuck on the
                with contextlib.suppress(ProcessLookupError):  # very outage that stopped us
                    os.killpg(self.pid, signal.SIGKILL)

    def beat_row(self) -> None:
        """Record liveness in the row; a row no longer ours, or a stop request, stops the agent."""
        if self.closed:
            return
        try:
            with self.services.Session.begin() as session:
                ours, stop = executions.heartbeat(
                    session, self.execution_id, self.attempt, ROW_STATEMENT_TIMEOUT_MS
                )
        except Exception:
            log.warning("heartbeat write failed for %s", self.execution_id, exc_info=True)
            return
        if not ours:
            self.kill("lease")
        elif stop:
            self.kill("cancel")

    def kill(self, reason: str) -> None:
        """Stop the agent for `reason` ('cancel', 'lease', 'unrenewed' or 'drain'); the first
        sticks."""
        if self.reason is None:
            self.reason = reason
        self.stop.set()


class Heartbeats:
    """Renews, fences and records every registered Watch, from three threads."""

    def __init__(self, services: Services):
        settings = services.settings
        self.period = settings.heartbeat_seconds
        self.fence_after = settings.lease_seconds - fence_margin(settings.lease_seconds)
        assert settings.redis_url
        timeout = min(self.period, 2.0)  # a frozen Redis costs a round this long, not forever
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._slots = Slots(client, settings.lease_seconds, settings.lease_buffer_seconds)
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._started = False

    def add(self, watch: Watch) -> None:
        """Start renewing, fencing and recording this execution."""
        with self._lock:
            self._watches[id(watch)] = watch
            if not self._started:
                self._started = True
                for name, period, work in (
                    ("lease-renewal", self.period, self._renew_all),
                    ("lease-fence", FENCE_TICK_SECONDS, self._fence_all),
                    ("row-heartbeat", self.period * ROW_EVERY, self._record_all),
                ):
                    thread = threading.Thread(
                        target=_every, args=(period, work), name=name, daemon=True
                    )
                    thread.start()

    def remove(self, watch: Watch) -> None:
        """Stop watching this execution."""
        with self._lock:
            self._watches.pop(id(watch), None)
        watch.close()

    def current(self) -> list[Watch]:
        """The executions being watched now."""
        with self._lock:
            return list(self._watches.values())

    def _renew_all(self) -> None:
        for watch in self.current():
            try:
                watch.renew(self._slots)
            except redis.RedisError:  # out of reach: the rest would wait as long; fence decides
                log.warning("lease renewal failed; Redis out of reach", exc_info=True)
                return

    def _fence_all(self) -> None:
        for watch in self.current():
            watch.fence(self.fence_after)

    def _record_all(self) -> None:
        for watch in self.current():
            watch.beat_row()


def _every(period: float, work: Callable[[], None]) -> None:
    """Call `work` every `period` seconds for the life of the process."""
    while True:
        time.sleep(period)
        try:
            work()
        except Exception:  # a heartbeat thread must survive anything
            log.exception("heartbeat round failed")
