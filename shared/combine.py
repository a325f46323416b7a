"""`Combiner`: one thread does the work of several concurrent callers at once (group commit).

A process that submits from many threads at once (the API's request threads, a service's
worker pool) would otherwise pay PostgreSQL a transaction and Redis a script call for every
submission; stored together, a row costs PostgreSQL a quarter of that (bench/README.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Call(Generic[T, R]):
    """One caller's item, and what became of it."""

    __slots__ = ("item", "ready", "done", "result", "error")

    def __init__(self, item: T):
        self.item = item
        self.ready = threading.Event()  #: set when done, or when this caller is to lead
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class Combiner(Generic[T, R]):
    """Calls `work` with the items of concurrent callers, up to `most` at a time.

    A caller that finds no batch under way runs one at once, with every item waiting (its own
    first); callers arriving meanwhile wait, and when that batch ends the first of them runs
    the next with all that came in the meantime. Nobody waits for a batch to fill up: a lone
    caller's item is worked on at once, alone. `work` answers each item with its result or
    the exception to raise in that item's caller; an exception `work` itself raises is raised
    in every caller of that batch."""

    def __init__(
        self, work: Callable[[list[T]], Sequence[R | BaseException]], most: int = 32
    ) -> None:
        self._work = work
        self._most = most
        self._lock = threading.Lock()
        self._waiting: list[_Call[T, R]] = []
        self._busy = False

    def __call__(self, item: T) -> R:
        """`work`'s result for `item` (or its exception, raised)."""
        call: _Call[T, R] = _Call(item)
        with self._lock:
            self._waiting.append(call)
            lead, self._busy = not self._busy, True
        if not lead:
            call.ready.wait()
        if not call.done:  # no batch was under way, or the last one handed this caller the lead
            self._run_batch()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def _run_batch(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
        try:
            outcomes = list(self._work([call.item for call in batch]))
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} items")
        except BaseException as exc:  # every caller of the batch raises it
            outcomes = [exc] * len(batch)
        for call, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                call.error = outcome
            else:
                call.result = outcome
            call.done = True
        with self._lock:
            following = self._waiting[0] if self._waiting else None
            self._busy = following is not None
        for call in batch:
            call.ready.set()
        if following is not None:
            following.ready.set()  # not done: it runs the next batch
