"""Graceful drain: what a worker process does between SIGTERM and its exit.

On the first SIGTERM (Dramatiq's own handler runs too) the process stops taking messages at
once: Dramatiq stops its worker threads after their current message and hands back what it
had fetched, and the executor publishes promoted waiters instead of running them. Running
agents get `AGX_DRAIN_SECONDS` (default 300) to finish; then each is stopped like a Stop and
ends `failed` with the error `worker shutting down` (its transcript kept, its slot released,
the next waiter published for another worker). A later SIGTERM (Ctrl-C twice, `kill` twice,
an orchestrator's second signal) cuts the grace short. Signals that arrive together (a
terminal's Ctrl-C reaches every process of the group, and Dramatiq's master forwards its own)
count as one request: only a signal at least `REPEAT_SECONDS` after the first shortens it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from workers.heartbeat import Heartbeats

log = logging.getLogger(__name__)

DRAIN_ERROR = "worker shutting down"
REPEAT_SECONDS = 1.0  #: signals closer than this to the first are the same request
TICK_SECONDS = 0.2  #: how often, once the grace is over, runs still going are stopped


class Drain:
    """Counts a worker process's stop signals and, past the grace, stops its agents."""

    def __init__(self, heartbeats: Heartbeats, grace_seconds: float):
        self._heartbeats = heartbeats
        self.grace_seconds = grace_seconds
        self._first: float | None = None
        self._hurry = threading.Event()

    def install(self) -> None:
        """Take SIGTERM over from Dramatiq's handler (which is still called, once), so that a
        second signal shortens the grace instead of killing the process with its runs."""
        if threading.current_thread() is not threading.main_thread():
            return  # not a worker process's main thread: nothing to install
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: FrameType | None) -> None:
            if self.signalled(time.monotonic()) and callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_term)

    def signalled(self, now: float) -> bool:
        """Count one stop signal; True for the first, which starts the shutdown."""
        if self._first is None:
            self._first = now
            log.info("draining: running agents have %.0f s to finish", self.grace_seconds)
            return True
        if now - self._first >= REPEAT_SECONDS and not self._hurry.is_set():
            log.warning("draining: stopping running agents now")
            self._hurry.set()
        return False

    def start(self) -> threading.Thread:
        """Begin the grace (at the worker's shutdown); past it, stop every run left."""
        thread = threading.Thread(target=self._run, name="drain", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        self._hurry.wait(self.grace_seconds)
        while True:  # until the process exits: a run starting meanwhile is stopped too
            for watch in self._heartbeats.current():
                watch.kill("drain")
            time.sleep(TICK_SECONDS)
