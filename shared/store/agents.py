"""The agents table: the reads submit and the worker make (psycopg SQL, hot paths), the
agent's lock and in-flight count, and the limits the reaper and stop read (SQLAlchemy)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.db import one
from shared.models import Agent
from shared.store.executions import FOR_SUBMIT, IN_FLIGHT_SQL, Conn

# The in-flight count reads the partial index ix_executions_in_flight (same predicate).
_LOCK_KEY = "SELECT 1 FROM agents WHERE name = %(name)s FOR NO KEY UPDATE"
_IN_FLIGHT = f"SELECT count(*) AS n FROM executions WHERE agent_name = %(name)s AND {IN_FLIGHT_SQL}"
_RUN_CONFIG = (
    "SELECT name, command, output, workdir, env, max_parallel_tasks, timeout_seconds, mcp"
    " FROM agents WHERE name = %(name)s"
)

# One row per agent: its in-flight counts (read from the partial in-flight index), runs
# silent past `stuck` (the reaper should have settled them), and its latest failure.
_OVERVIEW = text(
    "SELECT a.name, a.max_parallel_tasks, f.pending, f.running, f.oldest_pending, f.stuck,"
    " last.failed_at, last.error AS failure"
    " FROM agents a"
    " CROSS JOIN LATERAL (SELECT"
    "   count(*) FILTER (WHERE e.status = 'pending') AS pending,"
    "   count(*) FILTER (WHERE e.status = 'running') AS running,"
    "   min(e.created_at) FILTER (WHERE e.status = 'pending') AS oldest_pending,"
    "   count(*) FILTER (WHERE e.status = 'running'"
    "     AND coalesce(e.heartbeat_at, e.started_at) < :stuck) AS stuck"
    f"   FROM executions e WHERE e.agent_name = a.name AND e.{IN_FLIGHT_SQL}) f"
    " LEFT JOIN LATERAL (SELECT coalesce(completed_at, created_at) AS failed_at, error"
    "   FROM executions x WHERE x.agent_name = a.name AND x.status = 'failed'"
    "   ORDER BY x.created_at DESC LIMIT 1) last ON true"
    " ORDER BY a.name"
)

#: How `get` locks the row: for update (re-read under the lock), or for key share.
_LOCKS: dict[str, Any] = {"update": True, "key share": {"key_share": True}}


def for_submit(conn: Conn, name: str) -> Any:
    """What a submission checks (limits, timeout, default model) with the agent's in-flight
    count, or None when there is no such agent."""
    return one(conn, FOR_SUBMIT, {"agent_name": name})


def lock_key(conn: Conn, name: str) -> None:
    """Lock the agent row against changes of its key (deletion) and other lockers, for the
    rest of the caller's transaction."""
    one(conn, _LOCK_KEY, {"name": name})


def in_flight(conn: Conn, name: str) -> int:
    """How many of the agent's executions are pending or running (a new snapshot each call)."""
    return int(one(conn, _IN_FLIGHT, {"name": name}).n)


def run_config(conn: Conn, name: str) -> Any:
    """What a worker needs to run the agent's executions, or None when there is no such agent:
    (name, command, output, workdir, env, max_parallel_tasks, timeout_seconds, mcp)."""
    return one(conn, _RUN_CONFIG, {"name": name})


def get(
    session: Session, name: str, lock: Literal["update", "key share"] | None = None
) -> Agent | None:
    """The agent, or None; locked as asked for the rest of the session's transaction."""
    locking = _LOCKS.get(lock) if lock else None
    return session.get(Agent, name, with_for_update=locking, populate_existing=lock == "update")


def all_agents(session: Session) -> list[Agent]:
    """Every agent, by name."""
    return list(session.scalars(select(Agent).order_by(Agent.name)))


def limits(session: Session) -> dict[str, int]:
    """max_parallel_tasks of every agent, by name."""
    rows = session.execute(select(Agent.name, Agent.max_parallel_tasks))
    return {name: limit for name, limit in rows}


def max_parallel(session: Session, name: str) -> int:
    """The agent's max_parallel_tasks (it exists: the caller holds one of its executions)."""
    agent = session.get(Agent, name)
    assert agent is not None
    return agent.max_parallel_tasks


def overview(session: Session, stuck_before: datetime) -> list[Any]:
    """Every agent: (name, max_parallel_tasks, pending, running, oldest_pending, stuck,
    failed_at, failure), `stuck` counting running rows not heard of since `stuck_before`."""
    return list(session.execute(_OVERVIEW, {"stuck": stuck_before}).all())
