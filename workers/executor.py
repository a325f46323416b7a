"""The actor body: admission, claim, run, record, release. Glue between runner and services."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import psycopg
import redis

from shared import dispatch
from shared.db import driver_connection, one
from shared.events import EventWriter
from shared.models import id_time_us
from shared.rebuild import ensure_epoch
from shared.redact import Redactor
from shared.script_batch import ScriptBatch
from shared.services import Services
from shared.slots import Admission, decode_heads, submitted_us
from shared.states import AgentOutput, ExecutionStatus
from shared.stopping import STOPPED_ERROR
from workers import lifecycle
from workers.control import StopListener
from workers.groups import GroupRegistry
from workers.heartbeat import Heartbeats, Watch
from workers.runner import RunOutcome, run_agent
from workers.stream_json import outcome_fields, parser_for

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STORED_BYTES = 64 * 1024 * 1024  #: transcript bytes kept per execution, then a marker


@dataclass(frozen=True)
class Job:
    """A snapshot of what one run needs, taken before the slot is claimed."""

    execution_id: str
    agent_name: str
    status: ExecutionStatus
    message: str
    model: str | None
    resume_session_id: str | None
    command: list[str]
    output: str
    workdir: str | None
    env: dict[str, str]
    max_parallel: int
    timeout_seconds: int
    submitted_us: int


_LOAD = (
    "SELECT e.id, e.agent_name, e.status, e.message, e.model, e.resume_session_id,"
    " e.timeout_seconds, e.created_at, a.command, a.output, a.workdir, a.env,"
    " a.max_parallel_tasks, a.timeout_seconds AS agent_timeout"
    " FROM executions e JOIN agents a ON a.name = e.agent_name WHERE e.id = %(id)s"
)
_AGENT = (
    "SELECT name, command, output, workdir, env, max_parallel_tasks, timeout_seconds"
    " FROM agents WHERE name = %(name)s"
)
RETRY_FIRST_SECONDS = 0.1  #: first pause before the terminal write is tried again
RETRY_MAX_SECONDS = 2.0  #: longest pause between tries (while the lease is held)
AGENT_CACHE_SECONDS = 2.0  #: how long a worker trusts its copy of an agent's settings
INLINE_SECONDS = 2.0  #: how long a message's thread goes on with promoted waiters itself (short:
#: meanwhile other agents' messages wait for a thread)


class Executor:
    """Runs one execution per call to `handle`; safe to call from many threads."""

    def __init__(self, services: Services):
        self.services = services
        self.stops = StopListener(services.redis)
        self.heartbeats = Heartbeats(services)
        self.groups = GroupRegistry.from_env()
        self._agents: dict[str, tuple[float, Any]] = {}
        self.stopping = threading.Event()  #: set when the worker shuts down: promote, not run

    @property
    def worker_id(self) -> str:
        """host:pid:thread of the calling worker thread."""
        return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def handle(self, execution_id: str, agent: str | None = None) -> None:
        """Take a slot or park; claim with CAS; run; record with CAS; release and promote.

        The waiter a release promotes is run next on this same thread (as if its message had
        come here: no broker round trip), for up to INLINE_SECONDS after this message was
        taken and never once the worker is shutting down; past that it is published.
        """
        started = time.monotonic()
        follow = self._handle_one(execution_id, agent)
        while follow is not None:
            head, name = follow
            if self.stopping.is_set() or time.monotonic() - started >= INLINE_SECONDS:
                dispatch.promote(self.services, [head], name)
                return
            follow = self._handle_one(head, name)

    def _handle_one(self, execution_id: str, agent: str | None) -> tuple[str, str] | None:
        """One execution; returns the promoted waiter (id, agent) its release left to us."""
        config = self._agent(agent) if agent else None
        if config is None:  # a message that does not name its agent (or names a wrong one)
            job = self._load(execution_id)
            if job is None:
                return None
            if job.status is not ExecutionStatus.pending:
                if job.status.terminal:  # a stale waiting entry must not block the list
                    self._release(job)
                return None
            config = self._agent(job.agent_name)
        head = self._claim_and_run(execution_id, config)
        return None if head is None else (head, config.name)

    def _claim_and_run(self, execution_id: str, config: Any) -> str | None:
        """Slot first, then one statement claims and loads the row, then the run."""
        ticket = _job_from(config, execution_id, id_time_us(execution_id))
        leased_at = time.monotonic()  # no later than Redis stamps the lease (self-fencing)
        admission = self._admit(ticket)
        if admission.needs_rebuild:
            return None
        if not admission.admitted:
            self._transaction(lambda s: lifecycle.mark_queued(s, execution_id))
            return None
        try:
            row = self._transaction(
                lambda s: lifecycle.claim_returning(s, execution_id, config.name, self.worker_id)
            )
        except BaseException:
            self._release(ticket)
            raise
        if row is None:  # not pending (cancelled, finished, a duplicate message) or no such row
            again = self._load(execution_id)
            if again is None or again.status.terminal or again.agent_name != config.name:
                self._release(ticket)
            return None
        job = replace(
            ticket,
            message=row.message,
            model=row.model,
            resume_session_id=row.resume_session_id,
            timeout_seconds=row.timeout_seconds or config.timeout_seconds,
            submitted_us=submitted_us(row.created_at),
        )
        try:
            # _run releases the slot right after its terminal write
            return self._run(job, row.attempt, leased_at)
        except BaseException:
            self._release(job)
            raise

    def _agent(self, name: str) -> Any:
        """The agent's settings, cached for AGENT_CACHE_SECONDS (None if there is no such)."""
        now = time.monotonic()
        cached = self._agents.get(name)
        if cached is None or now - cached[0] > AGENT_CACHE_SECONDS:
            row = self._transaction(lambda c: one(c, _AGENT, {"name": name}))
            cached = self._agents[name] = (now, row)
        return cached[1]

    def _transaction(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run one-statement `work` on a pooled connection, autocommitting; again on a fresh
        connection if the pooled one had gone stale (PostgreSQL restarted since)."""
        for tries_left in (1, 0):
            conn = None
            try:
                with driver_connection(self.services.engine) as conn:
                    return work(conn)
            except psycopg.OperationalError:
                if not tries_left or conn is None or not conn.broken:
                    raise
                log.warning("database connection was stale; retrying once")
        raise AssertionError("unreachable")

    def _admit(self, job: Job) -> Admission:
        """Acquire or park; after a Redis reset, rebuild from PostgreSQL and try once more."""
        for retry in (True, False):
            admission = self.services.slots.acquire(
                job.agent_name,
                job.execution_id,
                job.max_parallel,
                job.timeout_seconds,
                job.submitted_us,
            )
            if not (retry and admission.needs_rebuild and ensure_epoch(self.services)):
                return admission
        return admission

    def _load(self, execution_id: str) -> Job | None:
        row = self._transaction(lambda conn: one(conn, _LOAD, {"id": execution_id}))
        if row is None:
            log.warning("execution %s not found; message dropped", execution_id)
            return None
        return Job(
            row.id,
            row.agent_name,
            ExecutionStatus(row.status),
            row.message,
            row.model,
            row.resume_session_id,
            list(row.command),
            row.output,
            row.workdir,
            {str(k): str(v) for k, v in (row.env or {}).items()},
            row.max_parallel_tasks,
            row.timeout_seconds or row.agent_timeout,
            submitted_us(row.created_at),
        )

    def _release(self, job: Job, events: EventWriter | None = None, **final: Any) -> str | None:
        """Release the slot and promote the waiters that now fit: the first is returned for
        the caller to run (with `events`: after a finished run), the others are published.
        With `events`, their terminal event goes in the same Redis round trip."""
        if events is None:
            heads = self.services.slots.release(job.agent_name, job.execution_id, job.max_parallel)
        else:
            batch = ScriptBatch(self.services.redis)
            self.services.slots.release(job.agent_name, job.execution_id, job.max_parallel, batch)
            events.close(via=batch, **final)
            try:
                heads = decode_heads(batch.execute()[0])
            except redis.RedisError:  # the reaper promotes; PostgreSQL has the outcome
                log.warning("could not release %s", job.execution_id, exc_info=True)
                return None
        if events is not None and heads:
            dispatch.promote(self.services, heads[1:], job.agent_name)
            return heads[0]
        dispatch.promote(self.services, heads, job.agent_name)
        return None

    def _run(self, job: Job, attempt: int, leased_at: float) -> str | None:
        transcript: list[str] = []
        parser = parser_for(job.output)
        events = EventWriter(self.services.redis, job.execution_id)
        events.status(ExecutionStatus.running.value, attempt=attempt)

        scrub = Redactor(job.env.values())

        def on_start(pid: int) -> None:
            watch.started(pid)
            self.groups.started(pid)

        def on_line(line: str) -> None:
            line = scrub(line)
            transcript.append(line)
            event = parser.feed(line)
            events.line(line)
            if event is not None and event.get("type") == "result":
                events.flush()  # now: if this worker dies, the reaper judges the run by it

        watch = Watch(
            self.services,
            job.agent_name,
            job.execution_id,
            job.max_parallel,
            job.timeout_seconds,
            attempt,
            leased_at,
        )
        self.stops.register(job.execution_id, lambda: watch.kill("cancel"))
        self.heartbeats.add(watch)
        try:
            outcome: RunOutcome | str = unstartable(job) or run_agent(
                _argv(job),
                stdin_text=job.message,
                on_line=on_line,
                timeout_seconds=job.timeout_seconds,
                stop=watch.stop,
                workdir=job.workdir,
                env=job.env,
                max_total_bytes=MAX_STORED_BYTES,
                on_flush=events.tick,
                on_start=on_start,
            )
        except OSError as exc:
            outcome = _start_error(exc, job)
        finally:
            self.stops.unregister(job.execution_id)
            if (pid := watch.exited()) is not None:
                self.groups.ended(pid)  # the runner killed the whole group on its way out
        try:
            final = self._record(job, attempt, outcome, parser, watch, transcript, events, scrub)
        finally:
            self.heartbeats.remove(watch)  # the lease was held until the outcome was stored
        if final is None:
            log.warning(
                "execution %s attempt %s: row moved on; result discarded", job.execution_id, attempt
            )
            return self._release(job, events)
        return self._release(
            job,
            events,
            final_status=final.status,
            error=final.error,
            response=final.response,
        )

    def _record(
        self,
        job: Job,
        attempt: int,
        outcome: RunOutcome | str,
        parser: Any,
        watch: Watch,
        transcript: list[str],
        events: EventWriter,
        scrub: Redactor,
    ) -> Any:
        """Judge the run and store its outcome (None: the row had moved on)."""
        status, fields = judge(job, outcome, parser.result(), watch.reason)
        if watch.reason == "unrenewed" and status is ExecutionStatus.failed:
            fields["error"] = (
                f"could not renew its slot lease for {watch.unrenewed_seconds:.0f} s; "
                "stopped to keep the agent's limit"
            )
        if fields.get("error"):
            fields["error"] = scrub(fields["error"])  # a stderr tail may print the env too
        stored = (
            "\n".join(transcript),
            len(transcript),
            isinstance(outcome, RunOutcome) and outcome.truncated,
        )
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                final = self._transaction(
                    lambda s: lifecycle.finish(s, job.execution_id, attempt, status, fields, stored)
                )
                return final
            except BaseException as exc:
                # Lingering lines must reach the stream first: if this worker gives up, the
                # reaper judges the run from it (a result line there means it completed).
                events.flush()
                if not isinstance(exc, psycopg.OperationalError) or not watch.holds_lease():
                    raise
            log.warning("terminal write of %s failed; retrying in %.1f s", job.execution_id, delay)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


def _job_from(config: Any, execution_id: str, submitted: int) -> Job:
    """A Job with the agent's settings; the execution's own fields come from its claim."""
    return Job(
        execution_id,
        config.name,
        ExecutionStatus.pending,
        "",
        None,
        None,
        list(config.command),
        config.output,
        config.workdir,
        {str(k): str(v) for k, v in (config.env or {}).items()},
        config.max_parallel_tasks,
        config.timeout_seconds,
        submitted,
    )


def unstartable(job: Job) -> str | None:
    """Why the agent cannot be started at all (text a process cannot be given), else None."""
    try:
        for text in (*job.command, *job.env, *job.env.values(), job.workdir or ""):
            text.encode()
    except UnicodeEncodeError:
        return "could not start agent: its command, env or workdir holds a lone surrogate"
    return None


def _start_error(exc: OSError, job: Job) -> str:
    """The reason a start failed, naming the setting at fault (no server paths)."""
    if exc.filename is not None and exc.filename == job.workdir:
        what = "workdir"
    elif isinstance(exc, FileNotFoundError | PermissionError):
        what = "command[0]"
    else:
        what = "agent"
    return f"could not start agent: {what}: {exc.strerror or type(exc).__name__}"


def _argv(job: Job) -> list[str]:
    argv = list(job.command)
    if job.output == AgentOutput.claude_stream_json.value:
        if job.model:
            argv += ["--model", job.model]
        if job.resume_session_id:
            argv += ["--resume", job.resume_session_id]
    return argv


def judge(
    job: Job, outcome: RunOutcome | str, parsed: Any, reason: str | None
) -> tuple[ExecutionStatus, dict[str, Any]]:
    """Turn a run's outcome and parsed stream into a terminal status and row fields."""
    fields = outcome_fields(parsed)
    if isinstance(outcome, str):
        return ExecutionStatus.failed, {**fields, "error": outcome}
    fields.update(exit_code=outcome.exit_code, duration_ms=outcome.duration_ms)
    error = _error(job, outcome, parsed, reason)
    if reason == "cancel":
        return ExecutionStatus.cancelled, {**fields, "error": STOPPED_ERROR}
    if error:
        return ExecutionStatus.failed, {**fields, "error": error}
    return ExecutionStatus.completed, {**fields, "error": None}


def _error(job: Job, outcome: RunOutcome, parsed: Any, reason: str | None) -> str | None:
    if reason in ("lease", "unrenewed") and parsed.has_result and not parsed.is_error:
        return None  # the agent's work was done (its result is in) before the kill
    if reason == "lease":
        return "slot lease lost (worker paused or Redis reset); agent killed"
    if reason == "unrenewed" and outcome.exit_code != 0:  # killed by the fence, not done
        return "could not renew its slot lease; stopped to keep the agent's limit"
    if outcome.timed_out:
        return f"timed out after {job.timeout_seconds} s; agent killed"
    if outcome.exit_code != 0:
        tail = outcome.stderr_tail.strip()[-500:]
        return f"agent exited with code {outcome.exit_code}" + (f": {tail}" if tail else "")
    if not parsed.has_result:
        return "agent exited without a result line"
    if parsed.is_error:
        return parsed.error or "agent reported an error"
    return None
