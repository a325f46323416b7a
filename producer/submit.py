"""`submit_execution`: the single entry point that every trigger goes through."""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, text

from shared.errors import InvalidField, NotFound, QueueFull
from shared.models import Execution, new_id, utcnow
from shared.services import Services
from shared.slots import submitted_us
from shared.states import ExecutionStatus, Trigger

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 100 * 1024  #: largest message accepted, in UTF-8 bytes
MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/\[\]-]{0,127}")
#: Concurrent submissions to one agent that the lock-free path tolerates near queue_limit.
LOCK_MARGIN = 256


@dataclass(frozen=True)
class Submitted:
    """What a producer hands back: the stored row, its place in the FIFO, whether it was sent."""

    execution: Execution
    queue_position: int | None
    published: bool | None  #: None: it waits for a slot; the release that frees one sends it


def validate_message(message: object, field: str = "message") -> str:
    """A non-empty string of at most 100 KB with no NUL."""
    if not isinstance(message, str) or not message.strip():
        raise InvalidField(field, "must be a non-empty string")
    if "\x00" in message:
        raise InvalidField(field, "must not contain NUL characters")
    if len(message.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise InvalidField(field, f"must be at most {MAX_MESSAGE_BYTES} bytes")
    return message


def validate_model(model: object, field: str = "model") -> str | None:
    """None, or a model name made of safe characters (it becomes an argv item)."""
    if model is None:
        return None
    if not isinstance(model, str) or not MODEL_PATTERN.fullmatch(model):
        raise InvalidField(field, "must be a model name like 'claude-sonnet-4-6'")
    return model


def validate_timeout(timeout: object, agent: Any, field: str = "timeout_seconds") -> int | None:
    """None, or whole seconds between 1 and the agent's own timeout_seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise InvalidField(field, "must be a whole number of seconds")
    if not 1 <= timeout <= agent.timeout_seconds:
        raise InvalidField(field, f"must be between 1 and {agent.timeout_seconds} for this agent")
    return timeout


_AGENT = text(
    "SELECT a.name, a.max_parallel_tasks, a.queue_limit, a.timeout_seconds, a.default_model,"
    " (SELECT count(*) FROM executions e"
    "   WHERE e.agent_name = a.name AND e.status IN ('pending', 'running')) AS in_flight"
    " FROM agents a WHERE a.name = :name"
)
_LOCK_AGENT = text("SELECT 1 FROM agents WHERE name = :name FOR NO KEY UPDATE")
_IN_FLIGHT = text(
    "SELECT count(*) FROM executions WHERE agent_name = :name AND status IN ('pending', 'running')"
)


def _load_agent(session: Connection, agent_name: str) -> tuple[Row[Any], int]:
    """The agent's limits and its in-flight count, refusing beyond max_parallel + queue_limit.

    Far from the limit this is one query and no lock, so one agent's submissions run in
    parallel; within LOCK_MARGIN of it, a row lock on the agent serialises them and a fresh
    count (a new statement, so a new snapshot) makes the limit exact.
    """
    agent = session.execute(_AGENT, {"name": agent_name}).one_or_none()
    if agent is None:
        raise NotFound(f"agent '{agent_name}' does not exist")
    limit = agent.max_parallel_tasks + agent.queue_limit
    in_flight = int(agent.in_flight)
    if in_flight + LOCK_MARGIN >= limit:
        session.execute(_LOCK_AGENT, {"name": agent_name})
        in_flight = int(session.execute(_IN_FLIGHT, {"name": agent_name}).scalar_one())
    if in_flight >= limit:
        raise QueueFull(
            f"agent '{agent_name}' has {agent.queue_limit} executions waiting (queue_limit); "
            "try again when some have finished"
        )
    return agent, in_flight


def submit_execution(
    services: Services,
    agent_name: str,
    message: object,
    *,
    model: object = None,
    timeout_seconds: object = None,
    triggered_by: Trigger = Trigger.manual,
    source: str | None = None,
    schedule_id: str | None = None,
    scheduled_for: datetime | None = None,
    parent_execution_id: str | None = None,
    resume_session_id: str | None = None,
) -> Submitted:
    """Validate, store the row `pending`, commit, then publish its id (re-sent if that fails)."""
    message = validate_message(message)
    model = validate_model(model)
    # A plain connection: a Session's bookkeeping costs more than these three statements.
    with services.engine.begin() as session:
        agent, in_flight = _load_agent(session, agent_name)
        timeout = validate_timeout(timeout_seconds, agent)
        now = utcnow()
        values = dict(
            id=new_id(),
            agent_name=agent.name,
            status=ExecutionStatus.pending.value,
            triggered_by=Trigger(triggered_by).value,
            message=message,
            model=model or agent.default_model,
            timeout_seconds=timeout,
            source=source,
            schedule_id=schedule_id,
            scheduled_for=scheduled_for,
            parent_execution_id=parent_execution_id,
            resume_session_id=resume_session_id,
            created_at=now,
            queued_at=now if in_flight >= agent.max_parallel_tasks else None,
            dispatched_at=now,
            attempt=0,
        )
        # A Core insert: the ORM unit of work costs more CPU than the rest of a submission.
        session.execute(insert(Execution.__table__), values)  # type: ignore[arg-type]
        max_parallel = agent.max_parallel_tasks
    execution = Execution(**values)
    position, published = _enqueue_and_publish(services, execution, max_parallel)
    return Submitted(execution, position, published)


def _enqueue_and_publish(
    services: Services, execution: Execution, max_parallel: int
) -> tuple[int | None, bool | None]:
    """Take the FIFO place; publish only if a slot is free now (a release publishes the rest).

    Returns (queue position or None, published: True/False, or None when not needed yet).
    """
    agent, eid = execution.agent_name, execution.id
    try:
        position, fits = services.slots.enqueue(
            agent, eid, submitted_us(execution.created_at), max_parallel
        )
    except Exception:  # Redis away: publish anyway; the worker's admission places it
        log.warning("could not enqueue %s in Redis", eid, exc_info=True)
        position, fits = 0, True
    if not fits:
        return position, None
    published = publish_or_defer(services, eid, agent)
    if not published:
        with contextlib.suppress(Exception):  # then the reaper's promotion sends it
            services.slots.forget_notice(agent, eid)
    return None, published


def publish_or_defer(services: Services, execution_id: str, agent: str | None = None) -> bool:
    """Publish the id; on failure leave the row pending for the reaper's re-dispatch sweep."""
    try:
        services.publish(execution_id, agent)
        return True
    except Exception:  # any broker failure: the row is the truth, the sweep re-sends
        log.warning(
            "publish of execution %s failed; it will be re-sent", execution_id, exc_info=True
        )
        return False
