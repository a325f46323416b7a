"""The schedules due now, waiting for a firer thread: a set taken in random batches."""

from __future__ import annotations

import random
import threading


class DueSet:
    """Schedule ids to fire; `take` hands out random batches, so that two scheduler
    processes woken by the same due second mostly claim different rows instead of
    queueing on the same locks in the same order."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._ready = threading.Condition()
        self._closed = False

    def add(self, schedule_id: str) -> None:
        """Ask for this schedule to be fired (once, however often it is added meanwhile)."""
        with self._ready:
            self._ids.add(schedule_id)
            self._ready.notify()

    def take(self, most: int) -> list[str] | None:
        """Up to `most` ids, waiting for one; None once closed and empty."""
        with self._ready:
            while not self._ids and not self._closed:
                self._ready.wait()
            if not self._ids:
                return None
            batch = random.sample(list(self._ids), min(most, len(self._ids)))
            self._ids.difference_update(batch)
            return batch

    def close(self) -> None:
        """Let every waiting `take` return once the set is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
