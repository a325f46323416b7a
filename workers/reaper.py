"""The reaper: re-dispatches lost pending rows, fails rows whose worker was lost, promotes waiters.

Safe with several copies running: row work locks rows skipping those already locked, writes
with compare-and-set, and every Redis step is an idempotent Lua script.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.orm import Session

from shared import dispatch, events, logs, metrics, payments
from shared.models import utcnow
from shared.rebuild import ensure_epoch
from shared.services import Services
from shared.states import AgentOutput, ExecutionStatus
from shared.store import agents, executions
from workers.stream_json import outcome_fields, parser_for

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost: its slot lease lapsed without renewal"
BATCH = 500  #: rows looked at per sweep step


def redispatch(services: Services) -> list[str]:
    """Re-send pending rows nobody holds or waits for (lost publish, Redis wiped, a chat turn
    held for one that has ended but was not released).

    Each goes back into its agent's waiting list at its submission time, so FIFO holds.
    """
    cutoff = utcnow() - timedelta(seconds=services.settings.redispatch_after_seconds)
    with services.Session.begin() as session:
        rows = executions.lock_unsent_pending(session, cutoff, BATCH)
        lost = [r for r in rows if not services.slots.knows(r.agent_name, r.id)]
        executions.mark_dispatched(session, [r.id for r in lost])
    for row in lost:
        dispatch.enqueue(services, row.agent_name, row.id, row.created_at, row.max_parallel_tasks)
    return [r.id for r in lost]


def fail_lost(services: Services) -> list[str]:
    """Settle running rows whose lease is gone: their worker died, or was paused past its lease.

    The run is judged from its event stream: a Claude-shaped run whose stream holds a
    successful `result` line completed (its worker lost the database, or died, after the
    agent's work was done); any other is failed as `worker lost`. The transcript is rebuilt
    from the stream, and the terminal event is published.
    """
    grace = utcnow() - timedelta(seconds=services.settings.lease_seconds)
    settled = []
    with services.Session.begin() as session:
        rows = executions.lock_silent_running(session, grace, BATCH)
        for eid, agent, attempt, output in rows:
            if not services.slots.holds(agent, eid):
                final = _settle(services, session, eid, attempt, output)
                if final is not None:
                    settled.append(final)
                    extra = logs.fields(eid, agent, status=final.status)
                    log.warning("execution settled by the reaper: its lease lapsed", extra=extra)
    for final in settled:
        events.emit_terminal(
            services.redis, final.id, final.status, error=final.error, response=final.response
        )
        dispatch.release_held(services, final.id)  # a chat turn's next one may go now
    return [final.id for final in settled]


def _settle(
    services: Services, session: Session, execution_id: str, attempt: int, output: str
) -> executions.Written | None:
    """Store the outcome the stream shows (compare-and-set on the attempt); the written row."""
    lines = events.stream_lines(services.redis, execution_id)
    status, fields = ExecutionStatus.failed, {"error": WORKER_LOST}
    if output == AgentOutput.claude_stream_json.value:
        parser = parser_for(output)
        for line in lines:
            parser.feed(line)
        parsed = parser.result()
        if parsed.has_result and not parsed.is_error:
            status, fields = ExecutionStatus.completed, outcome_fields(parsed)
    transcript = ("\n".join(lines), len(lines), False)
    return executions.finish(session, execution_id, attempt, status, fields, transcript)


def promote(services: Services) -> list[str]:
    """Purge lapsed leases and re-send the waiters that fit in free slots."""
    with services.Session() as session:
        limits = agents.limits(session)
    sent = []
    for agent, limit in limits.items():
        sent += dispatch.promote(services, services.slots.heads(agent, limit), agent)
    return sent


def sweep(services: Services) -> dict[str, list[str]]:
    """One pass of every reaper duty (after rebuilding Redis state if Redis lost it)."""
    if not ensure_epoch(services):
        return {}
    return {
        "failed": fail_lost(services),
        "promoted": promote(services),
        "redispatched": redispatch(services),
        "payments": payments.sweep(services),  # x402: settle completed runs, void the rest
    }


def run_forever(
    services: Services, interval_seconds: float = 2.0, stop: threading.Event | None = None
) -> None:
    """Sweep every `interval_seconds` until `stop` is set; errors are logged, never fatal."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            result = sweep(services)
            for kind, ids in result.items():
                metrics.RECOVERIES.labels(kind).inc(len(ids))
            if any(result.values()):
                log.info("reaper: %s", {k: len(v) for k, v in result.items()})
        except Exception:
            log.exception("reaper sweep failed; retrying")
        stop.wait(interval_seconds)
