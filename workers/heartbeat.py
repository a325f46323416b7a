"""Heartbeats: one thread per worker process renews the leases of all its running executions."""

from __future__ import annotations

import logging
import threading
import time

from shared.services import Services
from workers import lifecycle

log = logging.getLogger(__name__)

ROW_EVERY = 3  #: heartbeats between writes of heartbeat_at (the lease is renewed every beat)


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
    ):
        self.services, self.agent, self.execution_id = services, agent, execution_id
        self.max_parallel, self.attempt = max_parallel, attempt
        self.deadline = time.monotonic() + timeout_seconds + services.settings.lease_buffer_seconds
        self.stop = threading.Event()  # set to kill the agent
        self.reason: str | None = None
        self.beats = 0
        self.closed = False
        self.lock = threading.Lock()  # held by a beat; close() waits for it

    def close(self) -> None:
        """No beat runs after this returns (a late renewal could restore a released lease)."""
        with self.lock:
            self.closed = True

    def beat(self) -> None:
        """One heartbeat, unless closed."""
        with self.lock:
            if not self.closed:
                self._beat()

    def _beat(self) -> None:
        """The lease every time (it fences), the row every ROW_EVERY beats."""
        self.beats += 1
        try:
            remaining = self.deadline - time.monotonic()
            if not self.services.slots.renew(
                self.agent, self.execution_id, self.max_parallel, remaining
            ):
                return self.kill("lease")
        except Exception:  # Redis briefly away: the row check below still fences us
            log.warning("lease renewal failed for %s", self.execution_id, exc_info=True)
        if self.beats % ROW_EVERY:
            return None
        try:
            with self.services.Session.begin() as session:
                ours, stop = lifecycle.heartbeat(session, self.execution_id, self.attempt)
        except Exception:
            log.warning("heartbeat write failed for %s", self.execution_id, exc_info=True)
            return None
        if not ours:
            self.kill("lease")
        elif stop:
            self.kill("cancel")
        return None

    def kill(self, reason: str) -> None:
        """Stop the agent for `reason` ('cancel' or 'lease'); the first reason sticks."""
        if self.reason is None:
            self.reason = reason
        self.stop.set()


class Heartbeats:
    """Beats every registered Watch each `period_seconds`, from one thread."""

    def __init__(self, period_seconds: float):
        self.period = period_seconds
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        """Start beating for this execution."""
        with self._lock:
            self._watches[id(watch)] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
                self._thread.start()

    def remove(self, watch: Watch) -> None:
        """Stop beating for this execution."""
        with self._lock:
            self._watches.pop(id(watch), None)
        watch.close()

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            with self._lock:
                watches = list(self._watches.values())
            for watch in watches:
                watch.beat()
