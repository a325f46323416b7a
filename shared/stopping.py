"""Stop: a pending execution is cancelled at once; a running one's worker is told to kill it."""

from __future__ import annotations

import logging

from shared import dispatch, events
from shared.errors import Conflict, NotFound
from shared.keys import control_channel
from shared.models import Execution, utcnow
from shared.services import Services
from shared.states import STOPPED_ERROR, ExecutionStatus
from shared.store import agents, executions

log = logging.getLogger(__name__)


def request_stop(services: Services, execution_id: str, agent_name: str | None = None) -> Execution:
    """Accept a stop (409 when already finished); returns the row as it now stands."""
    with services.Session.begin() as session:
        row = executions.lock(session, execution_id)
        if row is None or (agent_name is not None and row.agent_name != agent_name):
            raise NotFound(f"execution '{execution_id}' does not exist")
        status = ExecutionStatus(row.status)
        if status.terminal:
            raise Conflict(f"execution '{execution_id}' already finished ({status.value})")
        executions.accept_stop(row, utcnow())
        max_parallel = agents.max_parallel(session, row.agent_name)
    if status is ExecutionStatus.pending:
        _forget_waiter(services, row, max_parallel)
        if row.chat_session_id:  # the conversation's next turn may go now
            dispatch.release_held(services, row.id)
    else:
        _tell_worker(services, execution_id)
    return row


def _forget_waiter(services: Services, row: Execution, max_parallel: int) -> None:
    try:
        heads = services.slots.release(row.agent_name, row.id, max_parallel)
        events.emit_terminal(
            services.redis, row.id, ExecutionStatus.cancelled.value, error=STOPPED_ERROR
        )
    except Exception:  # the reaper drops stale waiters and promotes
        log.warning("could not update Redis for stopped %s", row.id, exc_info=True)
        return
    dispatch.promote(services, heads, row.agent_name)


def _tell_worker(services: Services, execution_id: str) -> None:
    try:
        services.redis.publish(control_channel(), execution_id)
    except Exception:  # the worker's heartbeat reads cancel_requested_at from the row
        log.warning("stop of %s not announced; the heartbeat will see it", execution_id)
