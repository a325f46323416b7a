"""Execution events: numbered lines and status changes, in a Redis stream and on pub/sub.

Event ids are dense integers per execution, in a fixed shape that the stored transcript can
reproduce: 1 = `running`, then one per stdout line, then the terminal status. (An execution
cancelled while pending has only its terminal status, id 1.)
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from shared import keys
from shared.script_batch import ScriptBatch, run_script

log = logging.getLogger(__name__)

STREAM_MAXLEN = 200_000  #: events kept per execution stream (approximate trim)
STREAM_TTL_SECONDS = 3600  #: a finished execution's stream expires this long after its end
MAX_BATCH = 500  #: events per Redis round trip (and per live message)
LINGER_SECONDS = 0.1  #: longest an event waits for others to share its round trip
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
    client: redis.Redis,
    execution_id: str,
    events: list[dict[str, Any]],
    final: bool = False,
    via: ScriptBatch | None = None,
) -> None:
    """Append events (dense ids, in order) to the stream and publish them as one JSON array
    (one round trip, or queued on `via`). Each event is serialised once: the script builds
    the published array from the same strings it stores."""
    if not events:
        return
    first = events[0]["id"]
    assert events[-1]["id"] == first + len(events) - 1, "a batch's event ids are dense"
    args: list[Any] = [STREAM_MAXLEN, STREAM_TTL_SECONDS if final else 0, first]
    args += [json.dumps(event, separators=(",", ":")) for event in events]
    keys_ = [keys.events_stream(execution_id), keys.events_channel(execution_id)]
    if via is not None:
        via.add(_emit_script(client), keys_, args)
    else:
        run_script(client, _emit_script(client), keys_, args)


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


def emit_terminal(client: redis.Redis, execution_id: str, status: str, **extra: Any) -> None:
    """Append and publish the final status event, numbered after the newest one in the stream
    (for settlers other than the run's own writer: the reaper, a stop of a pending row)."""
    event = status_event(last_event_id(client, execution_id) + 1, status, **extra)
    emit(client, execution_id, [event], final=True)


def stream_lines(client: redis.Redis, execution_id: str) -> list[str]:
    """All line events still in the stream, for a transcript the worker could not store."""
    lines: list[str] = []
    after = 0
    while batch := read_stream(client, execution_id, after, 5000):
        lines += [e["line"] for e in batch if e["type"] == "line"]
        after = batch[-1]["id"]
    return lines


class EventWriter:
    """Numbers a run's events and sends them in batches, from the thread that runs the agent.

    An event waits at most LINGER_SECONDS for company (or until MAX_BATCH are queued), so a
    burst of lines costs one Redis round trip, and a short run sends `running`, its lines
    and its end in the single round trip that also releases its slot. Sending on the thread
    that reads the agent's pipe holds a fast agent back while Redis catches up, so memory
    and latency stay bounded. Not thread-safe: one writer per run, used by one thread.
    """

    def __init__(self, client: redis.Redis, execution_id: str):
        self.client, self.execution_id = client, execution_id
        self.next_id = 1
        self._pending: list[dict[str, Any]] = []
        self._since = 0.0  # when the oldest pending event was queued

    def status(self, status: str, **extra: Any) -> None:
        """Queue a status change."""
        self._queue(status_event(self.next_id, status, **extra))

    def line(self, line: str) -> None:
        """Queue one stdout line."""
        self._queue(line_event(self.next_id, line))

    def _queue(self, event: dict[str, Any]) -> None:
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(event)
        self.next_id += 1
        if len(self._pending) >= MAX_BATCH:
            self.flush()

    def tick(self) -> float | None:
        """Send the batch if its oldest event has waited LINGER_SECONDS; else return how long
        until it will have (None when nothing waits). The runner's `on_flush`."""
        if not self._pending:
            return None
        left = self._since + LINGER_SECONDS - time.monotonic()
        if left > 0:
            return left
        self.flush()
        return None

    def flush(self, final: bool = False, via: ScriptBatch | None = None) -> None:
        """Send what is queued (one round trip per MAX_BATCH events; queued on `via` when
        given)."""
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), MAX_BATCH):
            try:
                emit(self.client, self.execution_id, batch[start : start + MAX_BATCH], final, via)
            except redis.RedisError:  # live view degrades; PostgreSQL keeps the transcript
                log.warning("could not publish events of %s", self.execution_id, exc_info=True)

    def close(
        self, final_status: str | None = None, via: ScriptBatch | None = None, **extra: Any
    ) -> None:
        """Send the terminal status (if given) and whatever is still queued."""
        if final_status:
            self._pending.append(status_event(self.next_id, final_status, **extra))
            self.next_id += 1
        self.flush(final=True, via=via)


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
