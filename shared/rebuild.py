"""Rebuilding Redis state (leases, waiting lists) from PostgreSQL after Redis lost its data.

Admission is refused while the epoch key is missing, so no execution is admitted before the
running ones have their leases back: the concurrency limit holds across a Redis restart.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from shared.models import utcnow
from shared.services import Services
from shared.slots import Lease, Waiter, submitted_us
from shared.store import executions

log = logging.getLogger(__name__)

LOCK_SECONDS = 60  #: how long one rebuilder holds the rebuild lock at most


def ensure_epoch(services: Services) -> bool:
    """Rebuild if Redis lost its data (or wait for whoever rebuilds); True once it is ready."""
    slots = services.slots
    deadline = time.monotonic() + LOCK_SECONDS
    token = str(time.time())
    while not slots.restored():
        if slots.lock_restore(token, LOCK_SECONDS):
            return _rebuild_holding(services, token)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # someone else is rebuilding: only right after a Redis restart
    return True


def _rebuild_holding(services: Services, token: str) -> bool:
    try:
        rebuild(services)
        services.slots.mark_restored()
        return True
    finally:
        services.slots.unlock_restore(token)


def rebuild(services: Services) -> None:
    """Restore leases of running rows and the FIFO of pending rows from PostgreSQL."""
    buffer = timedelta(seconds=services.settings.lease_buffer_seconds)
    with services.Session() as session:
        running = executions.running_with_timeouts(session)
        pending = executions.pending_by_agent(session)
    leases = [
        Lease(agent, eid, _cap_left(started_at, own_timeout or agent_timeout, buffer))
        for eid, agent, started_at, own_timeout, agent_timeout in running
    ]
    waiters = [Waiter(agent, eid, submitted_us(created_at)) for eid, agent, created_at in pending]
    services.slots.restore(leases, waiters)
    log.log(
        logging.WARNING if running or pending else logging.DEBUG,
        "rebuilt Redis state from PostgreSQL: %d leases, %d waiters",
        len(running),
        len(pending),
    )


def _cap_left(started_at: datetime | None, timeout_seconds: int, buffer: timedelta) -> float:
    """Seconds left of a run's timeout + buffer (its lease's hard cap), from now."""
    ends = (started_at or utcnow()) + timedelta(seconds=timeout_seconds) + buffer
    return (ends - utcnow()).total_seconds()
