"""`submit_execution`: the single entry point that every trigger goes through."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import SimpleNamespace
from typing import Any, NamedTuple

import psycopg
import redis

from shared import dispatch
from shared.agents import MODEL_PATTERN
from shared.combine import Combiner
from shared.errors import AlreadyFired, InvalidField, NotFound, QueueFull
from shared.models import new_id, utcnow
from shared.services import Services
from shared.states import IN_FLIGHT, ExecutionStatus, Trigger
from shared.store import agents, executions

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 100 * 1024  #: largest message accepted, in UTF-8 bytes
MAX_SOURCE_CHARS = 200  #: the width of executions.source: a longer name is cut, never a 500
#: Concurrent submissions to one agent that the lock-free path tolerates near queue_limit.
LOCK_MARGIN = 256
#: A timeout above this (PostgreSQL's integer) is judged against its agent before any INSERT.
MAX_TIMEOUT_SECONDS = 2**31 - 1
#: How long this process remembers that an agent's whole limit is within LOCK_MARGIN (so its
#: submissions go straight to the locked path, without the lock-free attempt).
SMALL_LIMIT_SECONDS = 2.0


class Publication(StrEnum):
    """What became of a submission's message to the workers."""

    sent = "sent"  #: published to the broker
    failed = "failed"  #: the publish failed: the row stays pending and the reaper re-sends it
    parked = "parked"  #: it waits for a slot: the release that frees one sends it
    held = "held"  #: a chat turn waiting for the turn before it: that turn's end queues it

    @classmethod
    def of(cls, published: bool | None) -> Publication:
        """From a publish attempt's result: True, False, or None when none was made."""
        return cls.parked if published is None else cls.sent if published else cls.failed


class NewExecution(SimpleNamespace):
    """A submitted execution as stored: every column of `executions.COLUMNS` as an attribute.
    Not an ORM object: building one cost more than its INSERT on the bulk path."""

    id: str
    agent_name: str
    status: str
    held_for: str | None
    created_at: datetime


@dataclass(frozen=True)
class Submitted:
    """What a producer hands back: the stored row, its place in the FIFO, whether it was sent."""

    execution: NewExecution
    queue_position: int | None
    publication: Publication


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


def whole_seconds(timeout: object, field: str = "timeout_seconds") -> int | None:
    """None, or an int (not a bool): what a timeout may be before its agent is known."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise InvalidField(field, "must be a whole number of seconds")
    return timeout


def validate_timeout(timeout: object, agent: Any, field: str = "timeout_seconds") -> int | None:
    """None, or whole seconds between 1 and the agent's own timeout_seconds."""
    timeout = whole_seconds(timeout, field)
    if timeout is None:
        return None
    if not 1 <= timeout <= agent.timeout_seconds:
        raise InvalidField(field, f"must be between 1 and {agent.timeout_seconds} for this agent")
    return timeout


def _agent(conn: psycopg.Connection[Any], agent_name: str) -> Any:
    agent = agents.for_submit(conn, agent_name)
    if agent is None:
        raise NotFound(f"agent '{agent_name}' does not exist")
    return agent


def refuse_if_full(agent: Any, in_flight: int) -> None:
    """429 when the agent has max_parallel_tasks + queue_limit executions in flight."""
    limit = agent.max_parallel_tasks + agent.queue_limit
    if in_flight >= limit:
        raise QueueFull(
            f"agent '{agent.name}' has {in_flight} executions in flight, its limit "
            f"({agent.max_parallel_tasks} running, max_parallel_tasks, + {agent.queue_limit} "
            f"waiting, queue_limit = {limit}); try again when some have finished"
        )


@dataclass(frozen=True)
class ChatTurn:
    """A message to a conversation (a Claude session): its turns are submitted one at a time
    and run one at a time, in order."""

    session_id: str
    resume: bool  #: False for the first turn, which starts the session under this id


def _insert_exactly(
    services: Services, agent: Any, row: dict[str, Any], chat: ChatTurn | None
) -> None:
    """Near the limit, or for a chat turn: lock the agent row, count afresh (a new statement,
    a new snapshot), then refuse or insert, in one transaction, so the limit is exact under
    concurrency. A chat turn also takes its conversation's lock and, while the conversation's
    latest execution is in flight, is held for it (in no queue, holding no slot)."""
    with services.connections.connection() as conn, conn.transaction():
        agents.lock_key(conn, agent.name)
        in_flight = agents.in_flight(conn, agent.name)
        refuse_if_full(agent, in_flight)
        row["queued_at"] = row["created_at"] if in_flight >= agent.max_parallel_tasks else None
        if chat is not None:
            _follow_last_turn(conn, agent.name, row, chat)
        executions.insert(conn, row)


def _follow_last_turn(
    conn: psycopg.Connection[Any], agent: str, row: dict[str, Any], chat: ChatTurn
) -> None:
    """Place a chat turn after its conversation's latest execution (its parent by default)."""
    executions.lock_conversation(conn, agent, chat.session_id)
    last = executions.last_turn(conn, agent, chat.session_id)
    if last is None and chat.resume:
        raise NotFound(f"agent '{agent}' has no conversation '{chat.session_id}'")
    if last is None:
        return
    row["parent_execution_id"] = row["parent_execution_id"] or last.id
    if last.status in IN_FLIGHT:
        row["held_for"], row["queued_at"] = last.id, row["created_at"]


def _store(services: Services, row: dict[str, Any], chat: ChatTurn | None) -> Stored:
    """Store the row (filling in its model and queued_at); return its agent's settings and,
    when it was stored with others (below), its FIFO place and whether it was published.

    Far from the limit: no lock, so one agent's submissions run in parallel, and the rows
    submitted at the same moment by this process's threads are stored by one of them in one
    autocommitted statement that also reads their agent, and take their FIFO places in one
    Redis script (`Combiner`). Near or at the limit, with a timeout beyond the agent's, or for
    a chat turn: the rows are counted under the lock, one submission at a time."""
    timeout, name = row["timeout_seconds"], row["agent_name"]
    fast = chat is None and (timeout is None or 1 <= timeout <= MAX_TIMEOUT_SECONDS)
    if fast and not _small_limit(services, name):
        stored: Stored = _together(services)(row)
        if stored.placed is not None:
            return stored
        agent = stored.agent
    else:
        with services.connections.connection() as conn:
            agent = agents.for_submit(conn, name)
        if agent is None:
            raise NotFound(f"agent '{name}' does not exist")
        _note_limit(services, agent)
    validate_timeout(timeout, agent)
    row["model"] = row["model"] or agent.default_model
    _insert_exactly(services, agent, row, chat)
    return Stored(agent, None)


_MAKING = threading.Lock()


class Stored(NamedTuple):
    """A row's agent's settings and, if the lock-free path stored it, its FIFO place and
    publication (None: stored by the locked path, or not yet: the locked path decides)."""

    agent: Any
    placed: tuple[int | None, bool | None] | None


def _together(services: Services) -> Combiner[dict[str, Any], Stored]:
    """The process's combiner of lock-free submissions (made at first use)."""
    if services.submissions is None:
        with _MAKING:
            if services.submissions is None:
                services.submissions = Combiner(
                    lambda rows: _store_rows(services, rows), most=executions.MOST_AT_ONCE
                )
    return services.submissions


def _store_rows(services: Services, rows: list[dict[str, Any]]) -> list[Stored | Exception]:
    """The lock-free path for rows submitted together: one statement and one Redis script
    per agent."""
    by_agent: dict[str, list[int]] = {}
    for k, row in enumerate(rows):
        by_agent.setdefault(row["agent_name"], []).append(k)
    outcomes: dict[int, Stored | Exception] = {}
    for name, ks in by_agent.items():
        try:
            done = _store_agents_rows(services, name, [rows[k] for k in ks])
        except Exception as exc:  # PostgreSQL or Redis away: the callers of these rows raise it
            done = [exc] * len(ks)
        outcomes.update(zip(ks, done, strict=True))
    return [outcomes[k] for k in range(len(rows))]


def _store_agents_rows(
    services: Services, name: str, rows: list[dict[str, Any]]
) -> list[Stored | Exception]:
    """Store one agent's rows if it has room for all of them, and take their FIFO places.
    A row the database refuses (a due time that has its run) is stored alone, as each other
    row of its batch then is, so it refuses no other."""
    fifo = sorted(rows, key=lambda row: row["created_at"])  # in submission order (queued_at)
    known = _known_in_flight(services, name)
    try:
        with services.connections.connection() as conn:
            agent = executions.insert_if_room(conn, fifo, LOCK_MARGIN, known)
    except (AlreadyFired, NotFound) as refused:
        if len(rows) == 1:
            return [refused]
        return [_store_agents_rows(services, name, [row])[0] for row in rows]  # each alone
    if agent is None:
        return [NotFound(f"agent '{name}' does not exist") for _ in rows]
    _note_limit(services, agent)
    if agent.inserted is None:
        return [Stored(agent, None) for _ in rows]
    stored = dict(zip(agent.inserted, zip(agent.models, agent.queued, strict=True), strict=True))
    placed_rows = [row for row in fifo if row["id"] in stored]
    for row in placed_rows:
        row["model"], row["queued_at"] = stored[row["id"]]
    items = [(row["id"], row["created_at"]) for row in placed_rows]
    places = dispatch.enqueue_many(services, name, items, agent.max_parallel_tasks)
    placed = dict(zip((row["id"] for row in placed_rows), places, strict=True))
    return [Stored(agent, placed.get(row["id"])) for row in rows]  # in the callers' order


def _small_limit(services: Services, agent: str) -> bool:
    """Whether the agent's limit was seen within LOCK_MARGIN lately (the default 3 + 100 is):
    its submissions always end on the locked path."""
    seen = services.small_limits.get(agent)
    return seen is not None and time.monotonic() - seen < SMALL_LIMIT_SECONDS


def _note_limit(services: Services, agent: Any) -> None:
    if agent.max_parallel_tasks + agent.queue_limit <= LOCK_MARGIN:
        services.small_limits[agent.name] = time.monotonic()
    else:
        services.small_limits.pop(agent.name, None)


def _known_in_flight(services: Services, agent: str) -> int | None:
    """The agent's executions in flight as Redis counts them (leases and waiters), in O(1):
    enough to tell a submission is far from the queue limit, where counting the rows would
    cost PostgreSQL time in proportion to the queue. None when Redis cannot say (away, or its
    state lost): the rows are counted then. Redis does not know a chat turn held for the one
    before it, nor a submission between its INSERT and its FIFO place: LOCK_MARGIN covers
    those, and near the limit the rows are counted under the agent's lock."""
    try:
        return services.slots.in_flight(agent)
    except redis.RedisError:
        return None


def _row(agent_name: str, message: str, model: str | None, **given: Any) -> dict[str, Any]:
    """Every column of executions.COLUMNS for a new pending row (model None: the agent's
    default; queued_at is set where the agent's in-flight count is known)."""
    chat: ChatTurn | None = given.pop("chat")
    now = utcnow()
    return dict(
        id=new_id(),
        agent_name=agent_name,
        status=ExecutionStatus.pending.value,
        message=message,
        model=model,
        chat_session_id=None if chat is None else chat.session_id,
        resume_session_id=chat.session_id if chat is not None and chat.resume else None,
        held_for=None,
        created_at=now,
        queued_at=None,
        dispatched_at=now,
        attempt=0,
        **given,
    )


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
    chat: ChatTurn | None = None,
    api_key_id: str | None = None,
) -> Submitted:
    """Validate, store the row `pending`, then publish its id (re-sent if that fails)."""
    message, model = validate_message(message), validate_model(model)
    timeout = whole_seconds(timeout_seconds)
    row = _row(
        agent_name,
        message,
        model,
        chat=chat,
        triggered_by=Trigger(triggered_by).value,
        timeout_seconds=timeout,
        source=None if source is None else source[:MAX_SOURCE_CHARS],
        schedule_id=schedule_id,
        scheduled_for=scheduled_for,
        parent_execution_id=parent_execution_id,
        api_key_id=api_key_id,
    )
    stored = _store(services, row, chat)
    agent, execution = stored.agent, NewExecution(**row)
    if execution.held_for is not None:  # the end of the turn before it releases it
        return Submitted(execution, None, Publication.held)
    position, published = stored.placed or dispatch.enqueue(
        services, agent.name, execution.id, execution.created_at, agent.max_parallel_tasks
    )
    return Submitted(execution, position, Publication.of(published))


MAX_BATCH = 1000  #: tasks one bulk submission may hold


@dataclass(frozen=True)
class Task:
    """One task of a bulk submission (validated like a single one)."""

    message: object
    model: object = None
    timeout_seconds: object = None


def submit_many(
    services: Services,
    agent_name: str,
    tasks: Sequence[Task],
    *,
    triggered_by: Trigger = Trigger.manual,
    source: str | None = None,
    api_key_id: str | None = None,
) -> list[Submitted]:
    """Submit tasks to one agent, all or none: every task is validated and the queue limit is
    judged for the whole batch before one multi-row INSERT; one Redis script takes their FIFO
    places, in order; those that fit a free slot are published. Answers in the tasks' order."""
    if not tasks or len(tasks) > MAX_BATCH:
        raise InvalidField("tasks", f"must hold 1 to {MAX_BATCH} tasks")
    with services.connections.connection() as conn, conn.transaction():
        agent = _agent(conn, agent_name)
        rows = [
            _batch_row(agent, i, task, triggered_by, source, api_key_id)
            for i, task in enumerate(tasks)
        ]
        agents.lock_key(conn, agent.name)  # the count and the inserts are exact together
        in_flight = agents.in_flight(conn, agent.name)
        room = agent.max_parallel_tasks + agent.queue_limit - in_flight
        if len(rows) > room:
            raise QueueFull(
                f"agent '{agent.name}' has room for {max(room, 0)} more executions "
                f"({in_flight} in flight); none of these {len(rows)} were submitted"
            )
        for k, row in enumerate(rows):
            waits = in_flight + k >= agent.max_parallel_tasks
            row["queued_at"] = row["created_at"] if waits else None
        executions.insert_many(conn, rows)
    placed = dispatch.enqueue_many(
        services, agent.name, [(r["id"], r["created_at"]) for r in rows], agent.max_parallel_tasks
    )
    return [
        Submitted(NewExecution(**row), position, Publication.of(published))
        for row, (position, published) in zip(rows, placed, strict=True)
    ]


def _batch_row(
    agent: Any, index: int, task: Task, trigger: Trigger, source: str | None, key: str | None
) -> dict[str, Any]:
    """Task `index` of a batch as a row; its submission time is 1 us after the one before,
    so the FIFO keeps the batch's order."""
    field = f"tasks.{index}."
    row = _row(
        agent.name,
        validate_message(task.message, field + "message"),
        validate_model(task.model, field + "model") or agent.default_model,
        chat=None,
        triggered_by=Trigger(trigger).value,
        timeout_seconds=validate_timeout(task.timeout_seconds, agent, field + "timeout_seconds"),
        source=None if source is None else source[:MAX_SOURCE_CHARS],
        schedule_id=None,
        scheduled_for=None,
        parent_execution_id=None,
        api_key_id=key,
    )
    row["created_at"] = row["dispatched_at"] = row["created_at"] + timedelta(microseconds=index)
    return row
