"""The executions table, with transcripts: submit, claim, finish, heartbeat, queue marks (hot
paths: psycopg SQL), and the reaper's, rebuild's, stop's and the API's reads (SQLAlchemy)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeVar

import psycopg
from sqlalchemy import ColumnElement, Connection, String, and_, literal, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, aliased

from shared.db import one
from shared.errors import AlreadyFired, NotFound
from shared.models import Agent, Execution, Transcript, utcnow
from shared.states import IN_FLIGHT, STOPPED_ERROR, ExecutionStatus, Trigger

Conn = psycopg.Connection[Any] | Session | Connection

#: The in-flight predicate as SQL, from IN_FLIGHT (the partial index's predicate, so it is used).
IN_FLIGHT_SQL = "status IN (" + ", ".join(f"'{status}'" for status in IN_FLIGHT) + ")"

#: Columns a submission stores (the row passed to `insert` holds every one).
COLUMNS = (
    "id",
    "agent_name",
    "status",
    "triggered_by",
    "message",
    "model",
    "timeout_seconds",
    "source",
    "schedule_id",
    "scheduled_for",
    "parent_execution_id",
    "resume_session_id",
    "chat_session_id",
    "held_for",
    "api_key_id",
    "created_at",
    "queued_at",
    "dispatched_at",
    "attempt",
)

#: Outcome columns `finish` writes; any not given are stored as NULL.
OUTCOME_FIELDS = (
    "response",
    "model_used",
    "cost",
    "input_tokens",
    "output_tokens",
    "num_turns",
    "claude_session_id",
    "exit_code",
    "duration_ms",
    "error",
)


class Claimed(NamedTuple):
    """What a won claim hands back: the attempt (fencing token) and the execution's fields."""

    attempt: int
    message: str
    model: str | None
    resume_session_id: str | None
    chat_session_id: str | None
    timeout_seconds: int | None  #: None: the agent's own
    triggered_by: str
    created_at: datetime


class Written(NamedTuple):
    """A terminal write as it was stored (a stop accepted first turns it into `cancelled`)."""

    id: str
    status: str
    error: str | None
    response: str | None


_INSERT = (
    f"INSERT INTO executions ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join(f'%({c})s' for c in COLUMNS)})"
)
#: What a submission checks of its agent, with the agent's in-flight count.
FOR_SUBMIT = (
    "SELECT a.name, a.max_parallel_tasks, a.queue_limit, a.timeout_seconds, a.default_model,"
    f" (SELECT count(*) FROM executions e WHERE e.agent_name = a.name AND e.{IN_FLIGHT_SQL})"
    " AS in_flight FROM agents a WHERE a.name = %(agent_name)s"
)
_STORED = {
    "model": "coalesce(r.model, a.default_model)",
    "queued_at": "CASE WHEN a.in_flight + r.ord >= a.max_parallel_tasks THEN r.created_at END",
}
_GIVEN = (
    "SELECT name, max_parallel_tasks, queue_limit, timeout_seconds, default_model,"
    " %(in_flight)s::bigint AS in_flight FROM agents WHERE name = %(agent_name)s"
)
#: Most rows `insert_if_room` takes at once (each count of rows is a statement of its own).
MOST_AT_ONCE = 32


@functools.lru_cache(maxsize=2 * MOST_AT_ONCE)
def _insert_if_room_sql(count: int, counted: bool) -> str:
    """The statement of `insert_if_room` for `count` rows, the in-flight count `counted` by
    PostgreSQL or given."""
    columns = ", ".join(COLUMNS)
    values = ", ".join(
        f"({k}, " + ", ".join(f"%({c}_{k})s::{_column_type(c)}" for c in COLUMNS) + ")"
        for k in range(count)
    )
    return (
        f"WITH a AS ({FOR_SUBMIT if counted else _GIVEN}), r (ord, {columns}) AS (VALUES {values}),"
        f" ins AS (INSERT INTO executions ({columns})"
        f" SELECT {', '.join(_STORED.get(c, f'r.{c}') for c in COLUMNS)} FROM a, r"
        " WHERE a.in_flight + %(margin)s < a.max_parallel_tasks + a.queue_limit"
        " AND (r.timeout_seconds IS NULL OR r.timeout_seconds <= a.timeout_seconds)"
        " RETURNING id, model, queued_at)"
        " SELECT a.*, i.ids AS inserted, i.models, i.queued FROM a, (SELECT array_agg(id) AS ids,"
        " array_agg(model) AS models, array_agg(queued_at) AS queued FROM ins) i"
    )


def _column_type(column: str) -> str:
    """The type a placeholder of an executions column is cast to (a NULL has none): `text`
    for strings, so a value too long for its column fails the INSERT instead of being cut."""
    kind = Execution.__table__.c[column].type
    return "text" if isinstance(kind, String) else str(kind.compile(dialect=postgresql.dialect()))


_COPY = f"COPY executions ({', '.join(COLUMNS)}) FROM STDIN"
# The writes that find one execution by id test its other columns with IS NOT DISTINCT FROM
# (the same as = for these NOT NULL columns), which no index can serve: the primary key is
# then the only way in. With `status = ...` or `agent_name = ...`, PostgreSQL, on estimates
# of one row either way (fresh statistics, or few rows in that status), picked
# ix_executions_in_flight or ix_executions_status_created and read every in-flight row of the
# agent, or every running row, for each claim and terminal write (2,000 queued: a claim cost
# 560 µs of PostgreSQL CPU instead of 140). tests/test_schema.py checks the plans.
#
# A claim and a terminal write are each one run's; a worker process's threads that make them at
# the same moment make them together (one statement, one commit): each run's own UPDATE, by
# primary key alone as above (one UPDATE ... FROM a VALUES list was planned as a scan of the
# table on thin statistics), its parameters suffixed with its place ({k}).
_CLAIM = (
    "UPDATE executions SET status = 'running', attempt = attempt + 1, started_at = %(now)s,"
    " heartbeat_at = %(now)s, worker_id = %(worker_{k})s, token_hash = %(token_hash_{k})s"
    " WHERE id = %(id_{k})s AND agent_name IS NOT DISTINCT FROM %(agent_{k})s"
    " AND status IS NOT DISTINCT FROM 'pending'"
    " RETURNING id, attempt, message, model, resume_session_id, chat_session_id,"
    " timeout_seconds, triggered_by, created_at"
)
# The terminal write. A stop accepted before it wins over whatever the run produced
# (invariant 2, docs/architecture.md). The execution token dies with the run: its hash is
# cleared (it authenticates a running attempt only), which also spares its index an entry
# per run. The transcript goes in with the write, and only if it won.
_FINISH = (
    "UPDATE executions SET"
    " status = CASE WHEN cancel_requested_at IS NULL THEN %(status_{k})s ELSE 'cancelled' END,"
    " error = CASE WHEN cancel_requested_at IS NULL THEN %(error_{k})s ELSE %(stopped)s END,"
    " completed_at = %(now)s, token_hash = NULL, "
    + ", ".join(f"{name} = %({name}_{{k}})s" for name in OUTCOME_FIELDS if name != "error")
    + " WHERE id = %(id_{k})s AND status IS NOT DISTINCT FROM 'running'"
    " AND attempt = %(attempt_{k})s RETURNING id, status, error, response"
)
_SAVE_TRANSCRIPT = (
    "INSERT INTO transcripts (execution_id, content, line_count, truncated)"
    " SELECT id, %(content_{k})s, %(line_count_{k})s, %(truncated_{k})s FROM run{k}"
    " WHERE %(content_{k})s::text IS NOT NULL"
)
#: Most runs `claim_together` and `finish_together` take in one statement.
MOST_RUNS_AT_ONCE = 16


@functools.lru_cache(maxsize=4 * MOST_RUNS_AT_ONCE)
def _runs_sql(count: int, write: str, then: str | None = None) -> str:
    """One statement making `write` for `count` runs (and `then`, which reads the run's row
    as `run{k}`), answering each column of the rows `write` returns as an array of them."""
    parts = [f"run{k} AS ({write.format(k=k)})" for k in range(count)]
    if then is not None:
        parts += [f"then{k} AS ({then.format(k=k)})" for k in range(count)]
    columns = write.rpartition(" RETURNING ")[2].split(", ")
    rows = " UNION ALL ".join(f"SELECT * FROM run{k}" for k in range(count))
    arrays = ", ".join(f"array_agg({column}) AS {column}" for column in columns)
    return f"WITH {', '.join(parts)} SELECT {arrays} FROM ({rows}) runs"


class _Run(Protocol):
    @property
    def execution_id(self) -> str: ...


RunT = TypeVar("RunT", bound=_Run)
AnswerT = TypeVar("AnswerT")


def _by_id(row: Any) -> dict[str, tuple[Any, ...]]:
    """The rows of a `_runs_sql` answer by id (its first column), each as a tuple."""
    if row is None or row[0] is None:
        return {}
    return {values[0]: values for values in zip(*row, strict=True)}


_HEARTBEAT = (
    "UPDATE executions SET heartbeat_at = %(now)s"
    " WHERE id = %(id)s AND attempt = %(attempt)s AND status IS NOT DISTINCT FROM 'running'"
    " RETURNING cancel_requested_at"
)
_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', %(ms)s, true)"
_QUEUED = (
    "UPDATE executions SET queued_at = %(now)s"
    " WHERE id = %(id)s AND status IS NOT DISTINCT FROM 'pending' AND queued_at IS NULL"
)
_STATE = (
    "SELECT e.status, e.agent_name, a.max_parallel_tasks"
    " FROM executions e JOIN agents a ON a.name = e.agent_name WHERE e.id = %(id)s"
)
# One transaction-scoped lock per conversation: its turns are submitted one at a time.
_LOCK_CONVERSATION = "SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 7))"
# The conversation's latest execution (a chat turn, or the run it was continued from),
# share-locked: its terminal write waits until the turn held for it is committed.
# Its turns (chat_session_id) and the run it continued (claude_session_id) are each read
# through their own index (IS NOT DISTINCT FROM: see the writes by id above): one query with
# OR was planned as a walk back through the agent's executions, all of them for a new
# conversation.
_LAST_TURN = (
    "SELECT id, status FROM executions WHERE id = (SELECT id FROM ("
    " (SELECT id, created_at FROM executions"
    "  WHERE agent_name = %(agent)s AND chat_session_id = %(session)s"
    "  ORDER BY created_at DESC LIMIT 1)"
    " UNION ALL (SELECT id, created_at FROM executions"
    "  WHERE claude_session_id = %(session)s AND agent_name IS NOT DISTINCT FROM %(agent)s"
    "  ORDER BY created_at DESC LIMIT 1)"
    ") turns ORDER BY created_at DESC, id DESC LIMIT 1) FOR SHARE"
)
_RELEASE_HELD = (
    "UPDATE executions e SET held_for = NULL, dispatched_at = %(now)s FROM agents a"
    " WHERE e.held_for = %(id)s AND e.status = 'pending' AND a.name = e.agent_name"
    " RETURNING e.id, e.agent_name, e.created_at, a.max_parallel_tasks"
)


# -- hot paths: psycopg SQL ------------------------------------------------------------------


def insert(conn: Conn, row: dict[str, Any]) -> None:
    """INSERT a submitted row (every column of COLUMNS); the database's refusals become the
    errors callers handle: AlreadyFired for a due time that has its run, NotFound for an
    agent deleted since it was read."""
    _refusals(conn, _INSERT, row)


def insert_if_room(
    conn: Conn, rows: Sequence[dict[str, Any]], margin: int, in_flight: int | None = None
) -> Any:
    """In one statement: read the agent of `rows` (one agent's, at most MOST_AT_ONCE) with its
    in-flight count (`in_flight` when given, else counted), and, if it has room for all of
    them and `margin` more, INSERT those whose timeout is within the agent's. A row's NULL model
    becomes the agent's default and its queued_at is set when every slot is taken (counting
    the rows before it). Returns None when there is no such agent, else the agent's (name,
    max_parallel_tasks, queue_limit, timeout_seconds, default_model, in_flight) and the
    `inserted` ids (None: none), with their stored `models` and `queued` times in that order."""
    params: dict[str, Any] = {
        "agent_name": rows[0]["agent_name"],
        "margin": margin + len(rows) - 1,
        "in_flight": in_flight,
    }
    for k, row in enumerate(rows):
        params.update((f"{c}_{k}", row[c]) for c in COLUMNS)
    return _refusals(conn, _insert_if_room_sql(len(rows), in_flight is None), params, rows[0])


def _refusals(
    conn: Conn, sql: str, params: dict[str, Any], row: dict[str, Any] | None = None
) -> Any:
    """Run an INSERT of submitted rows (`row` one of them; by default `params` is the row),
    turning the database's refusals into errors."""
    row = params if row is None else row
    try:
        return one(conn, sql, params)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != "one_fire_per_due_time":
            raise
        raise AlreadyFired(
            f"schedule {row['schedule_id']} has an execution for {row['scheduled_for']} already"
        ) from exc
    except psycopg.errors.ForeignKeyViolation as exc:
        raise NotFound(f"agent '{row['agent_name']}' does not exist") from exc


def insert_many(conn: psycopg.Connection[Any], rows: Sequence[dict[str, Any]]) -> None:
    """Store submitted rows (each with every column of COLUMNS) in one COPY: one round trip,
    and no statement of thousands of placeholders for the client to build and the server to
    parse (a 500-row INSERT ... VALUES spent more time in psycopg's query split than in
    PostgreSQL)."""
    with conn.cursor().copy(_COPY) as copy:
        for row in rows:
            copy.write_row([row[column] for column in COLUMNS])


class Claim(NamedTuple):
    """One run's claim: the execution, of this agent, for this worker thread with the hash of
    this attempt's execution token."""

    execution_id: str
    agent: str
    worker_id: str
    token_hash: str | None = None


def claim_returning(
    conn: Conn, execution_id: str, agent: str, worker_id: str, token_hash: str | None = None
) -> Claimed | None:
    """CAS pending -> running, bumping the fencing token (attempt) and storing the hash of this
    attempt's execution token; returns what the run needs, or None when another claim won."""
    return claim_together(conn, [Claim(execution_id, agent, worker_id, token_hash)])[0]


def claim_together(conn: Conn, claims: Sequence[Claim]) -> list[Claimed | None]:
    """The claims of several runs (at most MOST_RUNS_AT_ONCE) in one statement; what each won,
    or None where another claim had won (of one execution claimed twice, the first)."""

    def params(k: int, claim: Claim) -> dict[str, Any]:
        return {
            f"id_{k}": claim.execution_id,
            f"agent_{k}": claim.agent,
            f"worker_{k}": claim.worker_id,
            f"token_hash_{k}": claim.token_hash,
        }

    sql = functools.partial(_runs_sql, write=_CLAIM)
    return _each_run(conn, claims, sql, {"now": utcnow()}, params, lambda v: Claimed(*v[1:]))


class Finish(NamedTuple):
    """One run's terminal write: its fencing token (attempt), status and outcome fields (those
    of OUTCOME_FIELDS not given are stored as NULL), and its transcript (content, line count,
    truncated) if it has one."""

    execution_id: str
    attempt: int
    status: ExecutionStatus
    fields: dict[str, Any]
    transcript: tuple[str, int, bool] | None = None


def finish(
    conn: Conn,
    execution_id: str,
    attempt: int,
    status: ExecutionStatus,
    fields: dict[str, Any],
    transcript: tuple[str, int, bool] | None = None,
) -> Written | None:
    """CAS running(attempt) -> terminal, with the transcript (content, line count, truncated)
    if given; returns the row as written, or None when it had moved on."""
    return finish_together(conn, [Finish(execution_id, attempt, status, fields, transcript)])[0]


def finish_together(conn: Conn, runs: Sequence[Finish]) -> list[Written | None]:
    """The terminal writes of several runs (at most MOST_RUNS_AT_ONCE) in one statement; each
    run's row as written, or None where it had moved on."""

    def params(k: int, run: Finish) -> dict[str, Any]:
        assert run.status.terminal
        content, lines, truncated = run.transcript or (None, None, None)
        return {f"{c}_{k}": run.fields.get(c) for c in OUTCOME_FIELDS} | {
            f"id_{k}": run.execution_id,
            f"attempt_{k}": run.attempt,
            f"status_{k}": run.status.value,
            f"content_{k}": content,
            f"line_count_{k}": lines,
            f"truncated_{k}": truncated,
        }

    sql = functools.partial(_runs_sql, write=_FINISH, then=_SAVE_TRANSCRIPT)
    shared = {"now": utcnow(), "stopped": STOPPED_ERROR}
    return _each_run(conn, runs, sql, shared, params, lambda values: Written(*values))


def _each_run(
    conn: Conn,
    runs: Sequence[RunT],
    sql: Callable[[int], str],
    shared: dict[str, Any],
    params: Callable[[int, RunT], dict[str, Any]],
    make: Callable[[tuple[Any, ...]], AnswerT],
) -> list[AnswerT | None]:
    """Make each run's statement (`sql` of the number of runs, with the `shared` parameters and
    each run's own `params`), all in one; `make` turns each run's returned row into its answer
    (None: no row). An execution that is twice among `runs` (a message delivered twice, to two
    threads) goes in a statement after the first's, so that it sees the first's outcome: one
    statement does not see its own writes."""
    answers: list[AnswerT | None] = [None] * len(runs)
    waiting = list(enumerate(runs))
    while waiting:
        batch: list[tuple[int, RunT]] = []
        later: list[tuple[int, RunT]] = []
        ids: set[str] = set()
        for place, run in waiting:
            (later if run.execution_id in ids else batch).append((place, run))
            ids.add(run.execution_id)
        values = dict(shared)
        for k, (_, run) in enumerate(batch):
            values.update(params(k, run))
        rows = _by_id(one(conn, sql(len(batch)), values))
        for place, run in batch:
            row = rows.get(run.execution_id)
            answers[place] = None if row is None else make(row)
        waiting = later
    return answers


def heartbeat(
    conn: Conn, execution_id: str, attempt: int, timeout_ms: int | None = None
) -> tuple[bool, bool]:
    """Record liveness (within `timeout_ms`, for the rest of a transaction the caller opened);
    returns (still ours, stop requested)."""
    if timeout_ms is not None:
        one(conn, _STATEMENT_TIMEOUT, {"ms": str(timeout_ms)})
    row = one(conn, _HEARTBEAT, {"id": execution_id, "attempt": attempt, "now": utcnow()})
    if row is None:
        return False, True
    return True, row[0] is not None


def mark_queued(conn: Conn, execution_id: str) -> None:
    """Stamp queued_at the first time an execution is parked in its agent's waiting list."""
    one(conn, _QUEUED, {"id": execution_id, "now": utcnow()})


def state(conn: Conn, execution_id: str) -> Any:
    """Where an execution stands, for a worker: (status, agent_name, the agent's
    max_parallel_tasks), or None when there is no such row."""
    return one(conn, _STATE, {"id": execution_id})


class Turn(NamedTuple):
    """A conversation's latest execution, as a new turn finds it."""

    id: str
    status: str


class Released(NamedTuple):
    """A held chat turn let go by the end of the turn before it."""

    id: str
    agent_name: str
    created_at: datetime
    max_parallel_tasks: int


def lock_conversation(conn: Conn, agent: str, session_id: str) -> None:
    """Serialise the submissions of one conversation until the transaction ends."""
    one(conn, _LOCK_CONVERSATION, {"key": f"{agent}/{session_id}"})


def last_turn(conn: Conn, agent: str, session_id: str) -> Turn | None:
    """The conversation's latest execution, share-locked for the transaction; None if none."""
    row = one(conn, _LAST_TURN, {"agent": agent, "session": session_id})
    return None if row is None else Turn(*row)


def release_held(conn: psycopg.Connection[Any], execution_id: str) -> list[Released]:
    """Let go the turns held for `execution_id` (it has ended): each exactly once."""
    rows = conn.execute(_RELEASE_HELD, {"id": execution_id, "now": utcnow()}).fetchall()
    return [Released(*row) for row in rows]


# -- the reaper and rebuild: SQLAlchemy on the caller's Session -------------------------------


def _not_held() -> ColumnElement[bool]:
    """A pending row that waits for no live execution (a held chat turn is in no queue)."""
    before = aliased(Execution)
    live = select(before.id).where(before.id == Execution.held_for, before.status.in_(IN_FLIGHT))
    return or_(Execution.held_for.is_(None), ~live.exists())


def lock_unsent_pending(session: Session, sent_before: datetime, limit: int) -> list[Any]:
    """Lock pending rows dispatched before `sent_before` (skipping locked ones), oldest first:
    (id, agent_name, created_at, max_parallel_tasks)."""
    query = (
        select(Execution.id, Execution.agent_name, Execution.created_at, Agent.max_parallel_tasks)
        .join(Agent, Agent.name == Execution.agent_name)
        .where(
            Execution.status == ExecutionStatus.pending.value,
            Execution.dispatched_at <= sent_before,
            _not_held(),
        )
        .order_by(Execution.created_at)
        .limit(limit)
        .with_for_update(of=Execution, skip_locked=True)
    )
    return list(session.execute(query).all())


def mark_dispatched(session: Session, ids: Collection[str]) -> None:
    """Stamp dispatched_at of these rows: they were sent (again) now, and hold for nothing."""
    if ids:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(ids))
            .values(dispatched_at=utcnow(), held_for=None)
        )


def lock_silent_running(session: Session, silent_since: datetime, limit: int) -> list[Any]:
    """Lock running rows started, and last heard of, before `silent_since` (skipping locked
    ones): (id, agent_name, attempt, output)."""
    query = (
        select(Execution.id, Execution.agent_name, Execution.attempt, Agent.output)
        .join(Agent, Agent.name == Execution.agent_name)
        .where(
            Execution.status == ExecutionStatus.running.value,
            Execution.started_at < silent_since,
            or_(Execution.heartbeat_at.is_(None), Execution.heartbeat_at < silent_since),
        )
        .limit(limit)
        .with_for_update(of=Execution, skip_locked=True)
    )
    return list(session.execute(query).all())


def running_with_timeouts(session: Session) -> list[Any]:
    """Every running row: (id, agent_name, started_at, own timeout_seconds, agent's)."""
    query = select(
        Execution.id,
        Execution.agent_name,
        Execution.started_at,
        Execution.timeout_seconds,
        Agent.timeout_seconds,
    ).join(Agent, Agent.name == Execution.agent_name)
    query = query.where(Execution.status == ExecutionStatus.running.value)
    return list(session.execute(query).all())


def pending_by_agent(session: Session) -> list[Any]:
    """Every pending row that waits for a slot, not for a turn: (id, agent_name, created_at)."""
    query = select(Execution.id, Execution.agent_name, Execution.created_at).where(
        Execution.status == ExecutionStatus.pending.value, _not_held()
    )
    return list(session.execute(query).all())


# -- stop, the scheduler and the API -----------------------------------------------------------


def lock(session: Session, execution_id: str) -> Execution | None:
    """The row, locked for update until the session's transaction ends, or None."""
    return session.get(Execution, execution_id, with_for_update=True)


def accept_stop(row: Execution, now: datetime) -> None:
    """Note the stop request on a locked row; a pending row is cancelled at once."""
    row.cancel_requested_at = row.cancel_requested_at or now
    if row.status == ExecutionStatus.pending.value:
        row.status = ExecutionStatus.cancelled.value
        row.error, row.completed_at = STOPPED_ERROR, now


def of_due_time(session: Session, schedule_id: str, due: datetime) -> str | None:
    """The id of the execution a schedule made for one due time, if any."""
    query = select(Execution.id).where(
        Execution.schedule_id == schedule_id, Execution.scheduled_for == due
    )
    return session.scalar(query)


def get(session: Session, execution_id: str) -> Execution | None:
    """The row, or None."""
    return session.get(Execution, execution_id)


def transcript(session: Session, execution_id: str) -> Transcript | None:
    """The stored transcript (None while the run has none)."""
    return session.get(Transcript, execution_id)


def conversation(session: Session, agent: str, session_id: str) -> list[Execution]:
    """A conversation's executions, oldest first (the run it was continued from included)."""
    query = (
        select(Execution)
        .where(
            Execution.agent_name == agent,
            or_(Execution.chat_session_id == session_id, Execution.claude_session_id == session_id),
        )
        .order_by(Execution.created_at, Execution.id)
    )
    return list(session.scalars(query))


def call_chain(session: Session, execution_id: str, limit: int) -> list[tuple[str, str]]:
    """The execution and the runs whose MCP calls led to it, innermost first, as (id,
    agent_name): parents are followed while a row was triggered by `mcp` (the first run of
    the chain is the last), for at most `limit` steps up (one recursive CTE)."""
    parent = aliased(Execution)
    start = select(
        Execution.id,
        Execution.agent_name,
        Execution.triggered_by,
        Execution.parent_execution_id,
        literal(0).label("depth"),
    ).where(Execution.id == execution_id)
    chain = start.cte("chain", recursive=True)
    step = (
        select(
            parent.id,
            parent.agent_name,
            parent.triggered_by,
            parent.parent_execution_id,
            chain.c.depth + 1,
        )
        .join_from(chain, parent, parent.id == chain.c.parent_execution_id)
        .where(chain.c.triggered_by == Trigger.mcp.value, chain.c.depth < limit)
    )
    chain = chain.union_all(step)
    rows = session.execute(select(chain.c.id, chain.c.agent_name).order_by(chain.c.depth))
    return [(row.id, row.agent_name) for row in rows]


@dataclass(frozen=True)
class Filters:
    """What an execution list is narrowed to (None: no narrowing on that field)."""

    visible: Collection[str] | None = None  #: agents the caller may see; None for all
    agent: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None  #: text in the message or response, or an exact id


def page(
    session: Session, filters: Filters, limit: int, before: tuple[datetime, str] | None = None
) -> list[Execution]:
    """Up to `limit` rows matching `filters`, newest first, after the (created_at, id) cursor."""
    query = select(Execution)
    conditions = _conditions(filters)
    if before is not None:
        conditions.append(tuple_(Execution.created_at, Execution.id) < tuple_(*before))
    if conditions:
        query = query.where(and_(*conditions))
    query = query.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit)
    return list(session.scalars(query))


def _conditions(filters: Filters) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if filters.visible is not None:
        found.append(Execution.agent_name.in_(filters.visible))
    if filters.agent:
        found.append(Execution.agent_name == filters.agent)
    if filters.status:
        found.append(Execution.status == filters.status)
    if filters.trigger:
        found.append(Execution.triggered_by == filters.trigger)
    if filters.since:
        found.append(Execution.created_at >= _aware(filters.since))
    if filters.until:
        found.append(Execution.created_at < _aware(filters.until))
    if filters.q:
        escaped = filters.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        found.append(
            or_(
                Execution.message.ilike(pattern),
                Execution.response.ilike(pattern),
                Execution.id == filters.q,
            )
        )
    return found


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
