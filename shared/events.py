"""Execution events: numbered lines and status changes, in a Redis stream and on pub/sub.

Event ids are dense integers per execution, in a fixed shape that the stored transcript can
reproduce: 1 = `running`, then one per stdout line, then the terminal status. (An execution
cancelled while pending has only its terminal status, id 1.)
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from shared import keys

log = logging.getLogger(__name__)

STREAM_MAXLEN = 200_000  #: events kept per execution stream (approximate trim)
STREAM_TTL_SECONDS = 3600  #: a finished execution's stream expires this long after its end
MAX_PENDING = 500  #: unsent events a run may queue before its output is held back
_EMIT = (Path(__file__).parent / "lua" / "emit.lua").read_text()


def line_event(event_id: int, line: str) -> dict[str, Any]:
    """An event for one stdout line."""
    return {"id": event_id, "type": "line", "line": line}


def status_event(event_id: int, status: str, **extra: Any) -> dict[str, Any]:
    """An event for a status change (extra: error, response, ...)."""
    return {"id": event_id, "type": "status", "status": status, **extra}


@functools.lru_cache(maxsize=16)
def _emit_script(client: redis.Redis) -> Any:
    """The emit script bound to a client (EVALSHA after the first call)."""
    return client.register_script(_EMIT)


def emit(
    client: redis.Redis, execution_id: str, events: list[dict[str, Any]], final: bool = False
) -> None:
    """Append events to the stream and publish them (one round trip)."""
    if not events:
        return
    args: list[Any] = [
        STREAM_MAXLEN,
        STREAM_TTL_SECONDS if final else 0,
        json.dumps(events, separators=(",", ":")),
    ]
    for event in events:
        args += [event["id"], json.dumps(event, separators=(",", ":"))]
    keys_ = [keys.events_stream(execution_id), keys.events_channel(execution_id)]
    _emit_script(client)(keys=keys_, args=args)


def read_stream(
    client: redis.Redis, execution_id: str, after: int, count: int = 1000
) -> list[dict[str, Any]]:
    """Events with id > after from the stream (empty when none, or the stream is gone)."""
    entries: Any = client.xrange(keys.events_stream(execution_id), f"(0-{after}", "+", count=count)
    return [json.loads(fields[b"e"]) for _, fields in entries]


def last_event_id(client: redis.Redis, execution_id: str) -> int:
    """The id of the newest event in the stream, 0 when none."""
    entries: Any = client.xrevrange(keys.events_stream(execution_id), count=1)
    return int(entries[0][0].split(b"-")[1]) if entries else 0


def stream_lines(client: redis.Redis, execution_id: str) -> list[str]:
    """All line events still in the stream, for a transcript the worker could not store."""
    lines: list[str] = []
    after = 0
    while batch := read_stream(client, execution_id, after, 5000):
        lines += [e["line"] for e in batch if e["type"] == "line"]
        after = batch[-1]["id"]
    return lines


class EventWriter:
    """Numbers a run's events and sends them in small batches from a background thread."""

    def __init__(self, client: redis.Redis, execution_id: str, max_batch: int = 500):
        self.client, self.execution_id, self.max_batch = client, execution_id, max_batch
        self.next_id = 1
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"events-{execution_id}", daemon=True
        )
        self._thread.start()

    def status(self, status: str, **extra: Any) -> None:
        """Queue a status change."""
        with self._cond:
            self._append(status_event(self.next_id, status, **extra))

    def line(self, line: str) -> None:
        """Queue one stdout line; blocks while MAX_PENDING events are unsent (back-pressure:
        the agent then waits on its pipe instead of the worker's memory and latency growing)."""
        with self._cond:
            while len(self._pending) >= MAX_PENDING and not self._closed:
                self._cond.wait()
            self._append(line_event(self.next_id, line))

    def _append(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        self.next_id += 1
        if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                closed = self._closed
                self._cond.notify_all()  # wake a writer held back by MAX_PENDING
            self._send(batch, final=closed and not self._pending)
            if closed and not batch:
                return

    def _send(self, batch: list[dict[str, Any]], final: bool = False) -> None:
        for start in range(0, len(batch), self.max_batch):
            try:
                emit(self.client, self.execution_id, batch[start : start + self.max_batch], final)
            except redis.RedisError:  # live view degrades; the transcript in PostgreSQL stays whole
                log.warning("could not publish events of %s", self.execution_id, exc_info=True)

    def close(self, final_status: str | None = None, **extra: Any) -> None:
        """Queue the terminal status (if given), flush everything, and stop the thread."""
        if final_status:
            self.status(final_status, **extra)
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)


def replay_stored(
    lines: list[str], started: bool, status: str, extra: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The events of a finished execution, rebuilt from its stored transcript (same ids)."""
    event_id = 0
    if started:
        event_id += 1
        yield status_event(event_id, "running")
    for line in lines:
        event_id += 1
        yield line_event(event_id, line)
    yield status_event(event_id + 1, status, **extra)
