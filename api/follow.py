"""Following an execution: replay what came before, then live events, with no gap or duplicate.

Events travel in batches (as the worker published them), so a relay writes one message per
batch to each client rather than one per line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from api.hub import Hub, Subscriber
from shared import events
from shared.services import Services
from shared.states import ExecutionStatus
from shared.store import executions

Event = dict[str, Any]
KEEPALIVE: list[Event] = []  #: yielded when nothing happened for a while (an empty batch)
STORED_BATCH = 1000  #: events per batch when replaying from PostgreSQL
CATCH_UP_BATCH = 2000  #: events per read (and per message) when catching up from the stream


def is_terminal(event: Event) -> bool:
    """True for the status event that ends an execution."""
    return event["type"] == "status" and ExecutionStatus(event["status"]).terminal


def follow(
    services: Services, hub: Hub, execution_id: str, after: int = 0, keepalive_seconds: float = 15.0
) -> Iterator[list[Event]]:
    """Yield batches of events with id > after, in order, until the execution has ended.

    The last batch ends with the terminal status event, unless the client had it already
    (`after` at or beyond the end of a finished run): then it ends at once, having yielded
    nothing, and the row has the status. An empty batch is a keepalive.
    """
    sub = hub.subscribe(execution_id)  # subscribe first: nothing published later is missed
    last = after
    try:
        while True:
            for batch in _from_stream(services, execution_id, last):
                yield batch
                last = batch[-1]["id"]
                if is_terminal(batch[-1]):
                    return
            rest = _stored_after(services, execution_id, last)
            if rest is not None:  # finished: the stored events are all there will ever be
                for start in range(0, len(rest), STORED_BATCH):
                    yield rest[start : start + STORED_BATCH]
                return
            sub.clear_lag()
            for batch in _live(sub, last, keepalive_seconds):
                yield batch
                if not batch:
                    break  # re-check stream and row now and then
                last = batch[-1]["id"]
                if is_terminal(batch[-1]):
                    return
    finally:
        hub.unsubscribe(sub)


def _from_stream(services: Services, execution_id: str, after: int) -> Iterator[list[Event]]:
    """What the Redis stream holds after `after`, up to its terminal event."""
    last = after
    while batch := events.read_stream(services.redis, execution_id, last, CATCH_UP_BATCH):
        yield batch
        last = batch[-1]["id"]
        if is_terminal(batch[-1]):
            return


def _stored_after(services: Services, execution_id: str, after: int) -> list[Event] | None:
    """A finished execution's events after `after` (from PostgreSQL); None while it runs."""
    stored = _stored_events(services, execution_id)
    return None if stored is None else [e for e in stored if e["id"] > after]


def _stored_events(services: Services, execution_id: str) -> list[Event] | None:
    """A finished execution's events rebuilt from PostgreSQL; None while it is not finished."""
    with services.Session() as session:
        row = executions.get(session, execution_id)
        if row is None or not ExecutionStatus(row.status).terminal:
            return None
        transcript = executions.transcript(session, execution_id)
    lines = transcript.content.split("\n") if transcript and transcript.line_count else []
    extra = {"error": row.error, "response": row.response}
    return list(events.replay_stored(lines, row.started_at is not None, row.status, extra))


def _live(sub: Subscriber, after: int, keepalive_seconds: float) -> Iterator[list[Event]]:
    """Live batches trimmed to ids > after; stops (to catch up) on lag or a gap in the ids."""
    last = after
    while True:
        batch = sub.get(keepalive_seconds)
        if sub.lagged:
            return
        if batch is None:
            yield KEEPALIVE
            continue
        # A batch wholly new is passed on as it came (with its published text, see Batch).
        fresh = batch if batch and batch[0]["id"] > last else [e for e in batch if e["id"] > last]
        if not fresh:
            continue
        if fresh[0]["id"] != last + 1 or fresh[-1]["id"] != last + len(fresh):
            return  # a gap: the stream has what is missing
        yield fresh
        last = fresh[-1]["id"]
