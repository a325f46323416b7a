"""Rebuilding Redis state (leases, waiting lists) from PostgreSQL after Redis lost its data.

Admission is refused while the epoch key is missing, so no execution is admitted before the
running ones have their leases back: the concurrency limit holds across a Redis restart.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import select

from shared import keys
from shared.models import Agent, Execution, utcnow
from shared.services import Services
from shared.slots import submitted_us
from shared.states import ExecutionStatus

log = logging.getLogger(__name__)

LOCK_SECONDS = 60  #: how long one rebuilder holds the rebuild lock at most


def ensure_epoch(services: Services) -> bool:
    """Rebuild if Redis lost its data (or wait for whoever rebuilds); True once it is ready."""
    client = services.redis
    deadline = time.monotonic() + LOCK_SECONDS
    token = str(time.time())
    while not client.exists(keys.epoch()):
        if client.set(keys.rebuild_lock(), token, nx=True, ex=LOCK_SECONDS):
            return _rebuild_holding(services, token)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # someone else is rebuilding: only right after a Redis restart
    return True


def _rebuild_holding(services: Services, token: str) -> bool:
    client = services.redis
    try:
        rebuild(services)
        client.set(keys.epoch(), utcnow().isoformat())
        return True
    finally:
        if client.get(keys.rebuild_lock()) == token.encode():
            client.delete(keys.rebuild_lock())


def rebuild(services: Services) -> None:
    """Restore leases of running rows and the FIFO of pending rows from PostgreSQL."""
    settings = services.settings
    seconds, micros = services.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    with services.Session() as session:
        running = session.execute(
            select(
                Execution.id,
                Execution.agent_name,
                Execution.started_at,
                Execution.timeout_seconds,
                Agent.timeout_seconds,
            )
            .join(Agent, Agent.name == Execution.agent_name)
            .where(Execution.status == ExecutionStatus.running.value)
        ).all()
        pending = session.execute(
            select(Execution.id, Execution.agent_name, Execution.created_at).where(
                Execution.status == ExecutionStatus.pending.value
            )
        ).all()
    pipe = services.redis.pipeline(transaction=False)
    for eid, agent, started_at, own_timeout, agent_timeout in running:
        left = (
            (started_at or utcnow())
            + timedelta(seconds=(own_timeout or agent_timeout) + settings.lease_buffer_seconds)
        ) - utcnow()
        cap = now_ms + max(0, int(left.total_seconds() * 1000))
        pipe.zadd(keys.slots(agent), {eid: min(now_ms + int(settings.lease_seconds * 1000), cap)})
        pipe.hset(keys.lease_caps(agent), eid, cap)
        pipe.sadd(keys.agents_index(), agent)
    for eid, agent, created_at in pending:
        pipe.zadd(keys.waiting(agent), {eid: submitted_us(created_at)}, nx=True)
        pipe.sadd(keys.agents_index(), agent)
    pipe.execute()
    log.log(
        logging.WARNING if running or pending else logging.DEBUG,
        "rebuilt Redis state from PostgreSQL: %d leases, %d waiters",
        len(running),
        len(pending),
    )
