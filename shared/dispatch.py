"""Sending execution ids to the workers: publish, or leave it for the reaper.

A message that cannot be sent is never an error for the caller: the row in PostgreSQL is
the truth, and the reaper re-sends what nobody sent (its re-dispatch of pending rows nobody
holds or waits for, and its promotion of waiters that fit in free slots).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

from shared.db import driver_connection
from shared.services import Services
from shared.slots import submitted_us
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
    try:
        position, fits = services.slots.enqueue(
            agent, execution_id, submitted_us(created_at), max_parallel
        )
    except Exception:  # Redis away: publish anyway; the worker's admission places it
        log.warning("could not enqueue %s in Redis", execution_id, exc_info=True)
        position, fits = 0, True
    if not fits:
        return position, None
    published = send(services, execution_id, agent)
    if not published:
        with contextlib.suppress(Exception):  # then the reaper's promotion sends it
            services.slots.forget_notice(agent, execution_id)
    return None, published


def release_held(services: Services, execution_id: str) -> list[str]:
    """`execution_id` has ended: the chat turns held for it join their agent's FIFO now.

    Any failure here is only a delay: the reaper re-dispatches held turns whose execution
    has ended."""
    try:
        with driver_connection(services.engine) as conn:
            released = executions.release_held(conn, execution_id)
    except Exception:
        log.warning("turns held for %s not released; the reaper will", execution_id, exc_info=True)
        return []
    for turn in released:
        enqueue(services, turn.agent_name, turn.id, turn.created_at, turn.max_parallel_tasks)
    return [turn.id for turn in released]
