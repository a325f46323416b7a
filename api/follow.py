"""Following an execution: replay what came before, then live events, with no gap or duplicate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from api.hub import Hub
from shared import events
from shared.models import Execution, Transcript
from shared.services import Services
from shared.states import ExecutionStatus

KEEPALIVE = None  #: yielded when nothing happened for a while (SSE comment, websocket ping)


def is_terminal(event: dict[str, Any]) -> bool:
    """True for the status event that ends an execution."""
    return event["type"] == "status" and ExecutionStatus(event["status"]).terminal


def follow(
    services: Services, hub: Hub, execution_id: str, after: int = 0, keepalive_seconds: float = 15.0
) -> Iterator[dict[str, Any] | None]:
    """Yield events with id > after, in order, ending with the terminal status."""
    sub = hub.subscribe(execution_id)  # subscribe first: nothing published later is missed
    last = after
    try:
        while True:
            for event in _catch_up(services, execution_id, last):
                yield event
                last = event["id"]
                if is_terminal(event):
                    return
            sub.clear_lag()
            for live in _live(sub, last, keepalive_seconds):
                yield live
                if live is KEEPALIVE:
                    break  # re-check stream and row now and then
                last = live["id"]
                if is_terminal(live):
                    return
    finally:
        hub.unsubscribe(sub)


def _catch_up(services: Services, execution_id: str, after: int) -> Iterator[dict[str, Any]]:
    """From the Redis stream; once it has nothing newer, from PostgreSQL if the run ended."""
    last = after
    while batch := events.read_stream(services.redis, execution_id, last):
        yield from batch
        last = batch[-1]["id"]
        if is_terminal(batch[-1]):
            return
    stored = _stored_events(services, execution_id)
    if stored is not None:
        yield from (e for e in stored if e["id"] > last)


def _stored_events(services: Services, execution_id: str) -> list[dict[str, Any]] | None:
    """A finished execution's events rebuilt from PostgreSQL; None while it is not finished."""
    with services.Session() as session:
        row = session.get(Execution, execution_id)
        if row is None or not ExecutionStatus(row.status).terminal:
            return None
        transcript = session.get(Transcript, execution_id)
    lines = transcript.content.split("\n") if transcript and transcript.line_count else []
    return list(
        events.replay_stored(
            lines,
            row.started_at is not None,
            row.status,
            {"error": row.error, "response": row.response},
        )
    )


def _live(sub: Any, after: int, keepalive_seconds: float) -> Iterator[dict[str, Any] | None]:
    """Live batches; stops (to catch up) on lag or a gap in the ids."""
    last = after
    while True:
        batch = sub.get(keepalive_seconds)
        if sub.lagged:
            return
        if batch is None:
            yield KEEPALIVE
            continue
        for event in batch:
            if event["id"] <= last:
                continue
            if event["id"] != last + 1:
                return
            yield event
            last = event["id"]
