"""Sending execution ids to the workers: publish, or leave it for the reaper.

A message that cannot be sent is never an error for the caller: the row in PostgreSQL is
the truth, and the reaper re-sends what nobody sent (its re-dispatch of pending rows nobody
holds or waits for, and its promotion of waiters that fit in free slots).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

from shared.services import Services
from shared.slots import Waiter, submitted_us
from shared.store import executions

log = logging.getLogger(__name__)


def send(services: Services, execution_id: str, agent: str | None = None) -> bool:
    """Publish the id; on any broker failure log it and return False (the reaper re-sends)."""
    try:
        services.publish(execution_id, agent)
        return True
    except Exception:  # any broker failure: the row is the truth, the reaper re-sends
        log.warning(
            "publish of execution %s failed; the reaper will re-send it",
            execution_id,
            exc_info=True,
        )
        return False


def promote(services: Services, heads: list[str], agent: str) -> list[str]:
    """Publish the promoted waiters `heads`; returns those sent (the reaper sends the rest)."""
    return [head for head in heads if send(services, head, agent)]


def enqueue(
    services: Services, agent: str, execution_id: str, created_at: datetime, max_parallel: int
) -> tuple[int | None, bool | None]:
    """Take the execution's FIFO place (at its submission time) and publish it only if a slot
    is free now (a release publishes the rest).

    Returns (queue position or None, published: True/False, or None when not needed yet).
    """
    return enqueue_many(services, agent, [(execution_id, created_at)], max_parallel)[0]


def enqueue_many(
    services: Services, agent: str, items: Sequence[tuple[str, datetime]], max_parallel: int
) -> list[tuple[int | None, bool | None]]:
    """`enqueue` for several executions of one agent: one Redis script, then the publishes."""
    waiters = [Waiter(agent, eid, submitted_us(created_at)) for eid, created_at in items]
    try:
        answers = services.slots.enqueue_many(agent, waiters, max_parallel)
    except Exception:  # Redis away: publish anyway; the worker's admission places them
        log.warning("could not enqueue %d for %s in Redis", len(waiters), agent, exc_info=True)
        answers = [(0, True)] * len(waiters)
    fitting = [w.execution_id for w, (_, fits) in zip(waiters, answers, strict=True) if fits]
    sent = dict(zip(fitting, _send_all(services, fitting, agent), strict=True))
    results: list[tuple[int | None, bool | None]] = []
    for waiter, (position, fits) in zip(waiters, answers, strict=True):
        if not fits:
            results.append((position, None))
            continue
        published = sent[waiter.execution_id]
        if not published:
            with contextlib.suppress(Exception):  # then the reaper's promotion sends it
                services.slots.forget_notice(agent, waiter.execution_id)
        results.append((None, published))
    return results


def _send_all(services: Services, execution_ids: list[str], agent: str) -> list[bool]:
    """Publish several ids: confirmed together on RabbitMQ, one by one otherwise."""
    if len(execution_ids) > 1 and services.batches is not None:
        sent = services.publish_many([(eid, agent) for eid in execution_ids])
        for eid, ok in zip(execution_ids, sent, strict=True):
            if not ok:
                log.warning("publish of execution %s failed; the reaper will re-send it", eid)
        return sent
    return [send(services, eid, agent) for eid in execution_ids]


def release_held(services: Services, execution_id: str) -> list[str]:
    """`execution_id` has ended: the chat turns held for it join their agent's FIFO now.

    Any failure here is only a delay: the reaper re-dispatches held turns whose execution
    has ended."""
    try:
        with services.connections.connection() as conn:
            released = executions.release_held(conn, execution_id)
    except Exception:
        log.warning("turns held for %s not released; the reaper will", execution_id, exc_info=True)
        return []
    for turn in released:
        enqueue(services, turn.agent_name, turn.id, turn.created_at, turn.max_parallel_tasks)
    return [turn.id for turn in released]
