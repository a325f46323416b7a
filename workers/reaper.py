"""The reaper: re-dispatches lost pending rows, fails rows whose worker was lost, promotes waiters.

Safe with several copies running: row work uses `FOR UPDATE SKIP LOCKED` and compare-and-set,
and every Redis step is an idempotent Lua script.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select, update

from shared import keys
from shared.models import Agent, Execution, utcnow
from shared.services import Services
from shared.states import ExecutionStatus

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost: its slot lease lapsed without renewal"
BATCH = 500  #: rows looked at per sweep step


def redispatch(services: Services) -> list[str]:
    """Re-send pending rows nobody holds or waits for (lost publish, Redis wiped)."""
    cutoff = utcnow() - timedelta(seconds=services.settings.redispatch_after_seconds)
    with services.Session.begin() as session:
        rows = session.execute(
            select(Execution.id, Execution.agent_name)
            .where(Execution.status == ExecutionStatus.pending.value,
                   Execution.dispatched_at < cutoff)
            .order_by(Execution.created_at).limit(BATCH).with_for_update(skip_locked=True)
        ).all()
        lost = [eid for eid, agent in rows if not _known_to_redis(services, agent, eid)]
        if lost:
            session.execute(update(Execution).where(Execution.id.in_(lost))
                            .values(dispatched_at=utcnow()))
    for eid in lost:
        try:
            services.publish(eid)
        except Exception:
            log.warning("re-dispatch of %s failed; next sweep retries", eid, exc_info=True)
    return lost


def _known_to_redis(services: Services, agent: str, execution_id: str) -> bool:
    pipe = services.redis.pipeline(transaction=False)
    pipe.zscore(keys.slots(agent), execution_id)
    pipe.zscore(keys.waiting(agent), execution_id)
    return any(v is not None for v in pipe.execute())


def fail_lost(services: Services) -> list[str]:
    """Fail running rows whose lease is gone: their worker died or was paused past its lease."""
    grace = utcnow() - timedelta(seconds=services.settings.lease_seconds)
    failed = []
    with services.Session.begin() as session:
        rows = session.execute(
            select(Execution.id, Execution.agent_name, Execution.attempt)
            .where(Execution.status == ExecutionStatus.running.value,
                   Execution.started_at < grace)
            .limit(BATCH).with_for_update(skip_locked=True)
        ).all()
        for eid, agent, attempt in rows:
            if services.redis.zscore(keys.slots(agent), eid) is not None:
                continue
            done = session.execute(
                update(Execution)
                .where(Execution.id == eid, Execution.attempt == attempt,
                       Execution.status == ExecutionStatus.running.value)
                .values(status=ExecutionStatus.failed.value, error=WORKER_LOST,
                        completed_at=utcnow())
                .returning(Execution.id)
            ).scalar_one_or_none()
            if done:
                failed.append(eid)
    return failed


def promote(services: Services) -> list[str]:
    """Purge lapsed leases and re-send the waiters that fit in free slots."""
    with services.Session() as session:
        limits = dict(session.execute(select(Agent.name, Agent.max_parallel_tasks)).all())
    sent = []
    for agent, limit in limits.items():
        for head in services.slots.heads(agent, limit):
            try:
                services.publish(head)
                sent.append(head)
            except Exception:
                log.warning("promotion of %s failed", head, exc_info=True)
    return sent


def sweep(services: Services) -> dict[str, list[str]]:
    """One pass of every reaper duty."""
    return {"failed": fail_lost(services), "promoted": promote(services),
            "redispatched": redispatch(services)}


def run_forever(services: Services, interval_seconds: float = 2.0,
                stop: threading.Event | None = None) -> None:
    """Sweep every `interval_seconds` until `stop` is set; errors are logged, never fatal."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            result = sweep(services)
            if any(result.values()):
                log.info("reaper: %s", {k: len(v) for k, v in result.items()})
        except Exception:
            log.exception("reaper sweep failed; retrying")
        stop.wait(interval_seconds)
