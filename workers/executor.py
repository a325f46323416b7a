"""The actor body: admission, claim, run, record, release. Glue between runner and services."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import psycopg
import redis

from shared import dispatch, logs, metrics
from shared.apikeys import hash_key, new_execution_token
from shared.combine import Combiner
from shared.events import EventWriter
from shared.models import id_time_us
from shared.rebuild import ensure_epoch
from shared.redact import Redactor
from shared.script_batch import ScriptBatch
from shared.services import Services
from shared.slots import Admission, decode_heads
from shared.states import STOPPED_ERROR, AgentOutput, ExecutionStatus
from shared.store import agents, executions
from shared.store.executions import Claim, Claimed, Finish, Written
from workers.control import StopListener
from workers.drain import DRAIN_ERROR
from workers.groups import GroupRegistry
from workers.heartbeat import Heartbeats, Watch
from workers.runner import RunOutcome, run_agent
from workers.stream_json import StreamJsonParser, TextParser, outcome_fields, parser_for

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

MAX_STORED_BYTES = 64 * 1024 * 1024  #: transcript bytes kept per execution, then a marker
RETRY_FIRST_SECONDS = 0.1  #: first pause before the terminal write is tried again
RETRY_MAX_SECONDS = 2.0  #: longest pause between tries (while the lease is held)
AGENT_CACHE_SECONDS = 2.0  #: how long a worker trusts its copy of an agent's settings
INLINE_SECONDS = 2.0  #: how long a message's thread goes on with promoted waiters itself (short:
#: meanwhile other agents' messages wait for a thread)


@dataclass(frozen=True)
class AgentConfig:
    """An agent's run settings, as a worker caches them for AGENT_CACHE_SECONDS."""

    name: str
    command: tuple[str, ...]
    output: str
    workdir: str | None
    env: dict[str, str]
    max_parallel: int
    timeout_seconds: int
    mcp: bool = False  #: give its runs agx as an MCP server (Claude-shaped: --mcp-config)

    @classmethod
    def from_row(cls, row: Any) -> AgentConfig:
        """From the agents store's `run_config` row."""
        return cls(
            name=row.name,
            command=tuple(row.command),
            output=row.output,
            workdir=row.workdir,
            env={str(k): str(v) for k, v in (row.env or {}).items()},
            max_parallel=row.max_parallel_tasks,
            timeout_seconds=row.timeout_seconds,
            mcp=bool(row.mcp),
        )


@dataclass(frozen=True)
class Job:
    """One claimed run: the agent's settings and the execution's own fields."""

    execution_id: str
    agent: AgentConfig
    attempt: int
    message: str
    model: str | None
    resume_session_id: str | None
    chat_session_id: str | None
    timeout_seconds: int
    triggered_by: str
    token: str = ""  #: this attempt's execution token (AGX_EXECUTION_TOKEN)

    @classmethod
    def of(cls, execution_id: str, agent: AgentConfig, claimed: Claimed, token: str = "") -> Job:
        """The run of a won claim."""
        return cls(
            execution_id=execution_id,
            agent=agent,
            attempt=claimed.attempt,
            message=claimed.message,
            model=claimed.model,
            resume_session_id=claimed.resume_session_id,
            chat_session_id=claimed.chat_session_id,
            timeout_seconds=claimed.timeout_seconds or agent.timeout_seconds,
            triggered_by=claimed.triggered_by,
            token=token,
        )


@dataclass(frozen=True)
class Promoted:
    """The waiter a release promoted, and leased, for the releasing thread to run."""

    execution_id: str
    agent: str
    leased_at: float  #: monotonic time before the release that granted its lease was sent


@dataclass
class Capture:
    """What a run's stdout becomes: scrubbed transcript lines, the parsed stream, live events."""

    parser: StreamJsonParser | TextParser
    events: EventWriter
    scrub: Redactor
    lines: list[str] = field(default_factory=list)

    def line(self, line: str) -> None:
        """Take one stdout line (the runner's `on_line`)."""
        line = self.scrub(line)
        self.lines.append(line)
        event = self.parser.feed(line)
        self.events.line(line)
        if event is not None and event.get("type") == "result":
            self.events.flush()  # now: if this worker dies, the reaper judges the run by it

    def stored(self, outcome: RunOutcome | str) -> tuple[str, int, bool]:
        """The transcript to store: (content, line count, truncated)."""
        truncated = isinstance(outcome, RunOutcome) and outcome.truncated
        return "\n".join(self.lines), len(self.lines), truncated


class Executor:
    """Runs one execution per call to `handle`; safe to call from many threads."""

    def __init__(self, services: Services):
        self.services = services
        self.db = services.connections  #: kept-open connections for the single statements
        self.stops = StopListener(services.redis)
        self.heartbeats = Heartbeats(services)
        self.groups = GroupRegistry.from_env()
        self._agents: dict[str, tuple[float, AgentConfig | None]] = {}
        self.stopping = threading.Event()  #: set when the worker shuts down: promote, not run
        self._inline = threading.local()  #: `until`: this thread's deadline for promoted runs
        #: the claims, and the terminal writes, this process's threads make at the same moment
        #: are each made together, in one statement
        most = executions.MOST_RUNS_AT_ONCE
        self._claims = Combiner(partial(self._together, executions.claim_together), most)
        self._finishes = Combiner(partial(self._together, executions.finish_together), most)

    @property
    def worker_id(self) -> str:
        """host:pid:thread of the calling worker thread."""
        return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"

    def handle(self, execution_id: str, agent: str | None = None) -> None:
        """Take a slot or park; claim with CAS; run; record with CAS; release and promote.

        For up to INLINE_SECONDS after this message was taken, and never once the worker is
        shutting down, the release also leases the first waiter it promotes and this thread
        runs it next (as if its message had come here: no broker round trip, no acquire);
        past that every promoted waiter is published.
        """
        self._inline.until = time.monotonic() + INLINE_SECONDS
        promoted = self._handle_one(execution_id, agent)
        while promoted is not None:
            promoted = self._handle_one(promoted.execution_id, promoted.agent, promoted.leased_at)

    def _handle_one(
        self, execution_id: str, agent: str | None, leased_at: float | None = None
    ) -> Promoted | None:
        """One execution (already leased at `leased_at`, if given); returns the promoted waiter
        its release leased for this thread."""
        config = self._agent(agent) if agent else None
        if config is None:  # a message that does not name its agent (or names a wrong one)
            config = self._agent_of_row(execution_id)
            if config is None:
                return None
        return self._claim_and_run(execution_id, config, leased_at)

    def _agent_of_row(self, execution_id: str) -> AgentConfig | None:
        """The agent of a pending row; a terminal row's stale waiting entry is released."""
        row = self._one_statement(lambda conn: executions.state(conn, execution_id))
        if row is None:
            log.warning("execution %s not found; message dropped", execution_id)
            return None
        status = ExecutionStatus(row.status)
        if status.terminal:  # a stale waiting entry must not block the list
            self._release(row.agent_name, execution_id, row.max_parallel_tasks)
        if status is not ExecutionStatus.pending:
            return None
        return self._agent(row.agent_name)

    def _claim_and_run(
        self, execution_id: str, config: AgentConfig, leased_at: float | None = None
    ) -> Promoted | None:
        """Slot first (unless a release leased it already), then one statement claims and
        loads the row, then the run."""
        if leased_at is None:
            leased_at = time.monotonic()  # no later than Redis stamps the lease (self-fencing)
            admission = self._admit(config, execution_id)
            if admission.needs_rebuild:
                return None
            if not admission.admitted:
                self._one_statement(lambda conn: executions.mark_queued(conn, execution_id))
                return None
        token = new_execution_token()  # a new one per attempt: valid while this attempt runs
        try:
            claimed = self._claim(execution_id, config, token)
        except BaseException:
            self._release(config.name, execution_id, config.max_parallel)
            raise
        if claimed is None:  # not pending (cancelled, finished, a duplicate message) or no row
            self._release_unless_waiting(execution_id, config)
            return None
        job = Job.of(execution_id, config, claimed, token)
        metrics.DISPATCH.labels(config.name).observe(
            max(time.time() - claimed.created_at.timestamp(), 0.0)
        )
        try:
            return self._run(job, leased_at)  # it releases the slot right after its terminal write
        except BaseException:
            self._release(config.name, execution_id, config.max_parallel)
            raise

    def _claim(self, execution_id: str, config: AgentConfig, token: str) -> Claimed | None:
        """CAS pending -> running with the execution token's hash; None when the row was not
        ours to claim."""
        return self._claims(Claim(execution_id, config.name, self.worker_id, hash_key(token)))

    def _release_unless_waiting(self, execution_id: str, config: AgentConfig) -> None:
        """After a lost claim: give the slot back unless the row still waits for this agent."""
        row = self._one_statement(lambda conn: executions.state(conn, execution_id))
        if row is None:
            log.warning("execution %s not found; message dropped", execution_id)
        if row is None or ExecutionStatus(row.status).terminal or row.agent_name != config.name:
            self._release(config.name, execution_id, config.max_parallel)

    def _agent(self, name: str) -> AgentConfig | None:
        """The agent's settings, cached for AGENT_CACHE_SECONDS (None if there is no such)."""
        now = time.monotonic()
        cached = self._agents.get(name)
        if cached is None or now - cached[0] > AGENT_CACHE_SECONDS:
            row = self._one_statement(lambda conn: agents.run_config(conn, name))
            config = None if row is None else AgentConfig.from_row(row)
            cached = self._agents[name] = (now, config)
        return cached[1]

    def _one_statement(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work` (one statement, autocommitted) on this thread's connection; once more on
        a fresh connection if that one had gone stale (PostgreSQL restarted since)."""
        for tries_left in (1, 0):
            with self.db.connection() as conn:
                try:
                    return work(conn)
                except psycopg.OperationalError:
                    if not tries_left or not conn.broken:
                        raise
                    log.warning("database connection was stale; retrying once")
        raise AssertionError("unreachable")

    def _admit(self, config: AgentConfig, execution_id: str) -> Admission:
        """Acquire or park; after a Redis reset, rebuild from PostgreSQL and try once more."""
        for retry in (True, False):
            admission = self.services.slots.acquire(
                config.name,
                execution_id,
                config.max_parallel,
                config.timeout_seconds,
                id_time_us(execution_id),
            )
            if not (retry and admission.needs_rebuild and ensure_epoch(self.services)):
                return admission
        return admission

    def _release(self, agent: str, execution_id: str, max_parallel: int) -> None:
        """Release the slot (no run ended: no terminal event) and publish the waiters that fit."""
        heads = self.services.slots.release(agent, execution_id, max_parallel)
        dispatch.promote(self.services, heads, agent)

    def _release_after_run(
        self, job: Job, events: EventWriter, final: Written | None
    ) -> Promoted | None:
        """Release the slot with the run's terminal event in the same Redis round trip. While
        this thread may go on (see `handle`), the release leases the first promoted waiter,
        returned for this thread to run; the others are published."""
        agent = job.agent
        go_on = not self.stopping.is_set() and time.monotonic() < getattr(self._inline, "until", 0)
        batch = ScriptBatch(self.services.redis)
        self.services.slots.release(
            agent.name,
            job.execution_id,
            agent.max_parallel,
            batch,
            grant_timeout=agent.timeout_seconds if go_on else None,
        )
        if final is None:
            events.close(via=batch)
        else:
            events.close(
                final_status=final.status, via=batch, error=final.error, response=final.response
            )
        leased_at = time.monotonic()  # no later than Redis stamps a granted lease
        try:
            heads = decode_heads(batch.execute()[0])
        except redis.RedisError:  # the reaper promotes; PostgreSQL has the outcome
            log.warning("could not release %s", job.execution_id, exc_info=True)
            return None
        if not go_on or not heads:
            dispatch.promote(self.services, heads, agent.name)
            return None
        dispatch.promote(self.services, heads[1:], agent.name)
        return Promoted(heads[0], agent.name, leased_at)

    def _run(self, job: Job, leased_at: float) -> Promoted | None:
        """Run the agent, store the outcome while the lease is held, then release."""
        events = EventWriter(self.services.redis, job.execution_id)
        events.status(ExecutionStatus.running.value, attempt=job.attempt)
        secrets = [*job.agent.env.values(), job.token]  # the token never reaches the transcript
        capture = Capture(parser_for(job.agent.output), events, Redactor(secrets))
        watch = Watch(
            self.services,
            job.agent.name,
            job.execution_id,
            job.agent.max_parallel,
            job.timeout_seconds,
            job.attempt,
            leased_at,
        )
        outcome = self._execute(job, watch, capture)
        try:
            final = self._record(job, outcome, watch, capture)
        finally:
            self.heartbeats.remove(watch)  # the lease was held until the outcome was stored
        if final is None:
            log.warning(
                "execution %s attempt %s: row moved on; result discarded",
                job.execution_id,
                job.attempt,
            )
        promoted = self._release_after_run(job, events, final)
        if final is not None and job.chat_session_id:  # the next turn may go now
            dispatch.release_held(self.services, job.execution_id)
        return promoted

    def _execute(self, job: Job, watch: Watch, capture: Capture) -> RunOutcome | str:
        """Start the agent and wait for it, watched (lease, stop, fence, guardian)."""

        def on_start(pid: int) -> None:
            watch.started(pid)
            self.groups.started(pid)

        self.stops.register(job.execution_id, lambda: watch.kill("cancel"))
        self.heartbeats.add(watch)
        try:
            api_url = self.services.settings.api_url
            with mcp_config_file(job, api_url) as mcp_config:
                return unstartable(job) or run_agent(
                    _argv(job, mcp_config),
                    stdin_text=job.message,
                    on_line=capture.line,
                    timeout_seconds=job.timeout_seconds,
                    stop=watch.stop,
                    workdir=job.agent.workdir,
                    env=_agx_env(job, api_url),
                    max_total_bytes=MAX_STORED_BYTES,
                    on_flush=capture.events.tick,
                    on_start=on_start,
                    die_with_parent=not self.groups.guarded(),
                )
        except OSError as exc:
            return _start_error(exc, job)
        finally:
            self.stops.unregister(job.execution_id)
            if (pid := watch.exited()) is not None:
                self.groups.ended(pid)  # the runner killed the whole group on its way out

    def _record(
        self, job: Job, outcome: RunOutcome | str, watch: Watch, capture: Capture
    ) -> Written | None:
        """Judge the run and store its outcome (None: the row had moved on)."""
        status, fields = judge(job, outcome, capture.parser.result(), watch.reason)
        if watch.reason == "unrenewed" and status is ExecutionStatus.failed:
            fields["error"] = (
                f"could not renew its slot lease for {watch.unrenewed_seconds:.0f} s; "
                "stopped to keep the agent's limit"
            )
        if fields.get("error"):
            fields["error"] = capture.scrub(fields["error"])  # a stderr tail may print the env
        run = Finish(job.execution_id, job.attempt, status, fields, capture.stored(outcome))
        final = self._write_terminal(run, watch, capture.events)
        if final is not None:
            metrics.record_run(job.agent.name, job.triggered_by, final.status, fields)
            extra = logs.fields(job.execution_id, job.agent.name, status=final.status)
            log.info("execution ended (attempt %s)", job.attempt, extra=extra)
        return final

    def _write_terminal(self, run: Finish, watch: Watch, events: EventWriter) -> Written | None:
        """Make the terminal write (with those of runs other threads end meanwhile), retried
        while the lease is held and PostgreSQL is away."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                return self._finishes(run)
            except BaseException as exc:
                # Lingering lines must reach the stream first: if this worker gives up, the
                # reaper judges the run from it (a result line there means it completed).
                events.flush()
                if not isinstance(exc, psycopg.OperationalError) or not watch.holds_lease():
                    raise
            log.warning("terminal write of %s failed; retrying in %.1f s", run.execution_id, delay)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _together(
        self, statement: Callable[[psycopg.Connection[Any], list[T]], Sequence[R]], items: list[T]
    ) -> list[R | BaseException]:
        """A combiner's work: `statement` for all its runs' items at once. If it fails for
        another reason than the database being away, it is made for each item alone, so that
        a run's own failure fails no other's."""
        try:
            return list(self._one_statement(lambda conn: statement(conn, items)))
        except psycopg.OperationalError:
            raise  # each run's thread decides whether to try again
        except Exception:
            if len(items) == 1:
                raise
        outcomes: list[R | BaseException] = []
        for item in items:
            try:
                outcomes += self._together(statement, [item])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes


def unstartable(job: Job) -> str | None:
    """Why the agent cannot be started at all (text a process cannot be given), else None."""
    agent = job.agent
    try:
        for text in (*agent.command, *agent.env, *agent.env.values(), agent.workdir or ""):
            text.encode()
    except UnicodeEncodeError:
        return "could not start agent: its command, env or workdir holds a lone surrogate"
    return None


def _start_error(exc: OSError, job: Job) -> str:
    """The reason a start failed, naming the setting at fault (no server paths)."""
    if exc.filename is not None and exc.filename == job.agent.workdir:
        what = "workdir"
    elif isinstance(exc, FileNotFoundError | PermissionError):
        what = "command[0]"
    else:
        what = "agent"
    return f"could not start agent: {what}: {exc.strerror or type(exc).__name__}"


def _argv(job: Job, mcp_config: str | None = None) -> list[str]:
    argv = list(job.agent.command)
    if job.agent.output == AgentOutput.claude_stream_json.value:
        if job.model:
            argv += ["--model", job.model]
        if job.resume_session_id:
            argv += ["--resume", job.resume_session_id]
        elif job.chat_session_id:  # the first turn of a chat: its session id is chosen for it
            argv += ["--session-id", job.chat_session_id]
        if mcp_config is not None:
            argv += ["--mcp-config", mcp_config]
    return argv


@contextlib.contextmanager
def mcp_config_file(job: Job, api_url: str) -> Iterator[str | None]:
    """For a Claude-shaped agent with `mcp: true`: the path of its --mcp-config naming agx's
    /mcp with the execution token, in a file only this user can read, removed after the run
    (a file, not an argument: a process's arguments are visible to every user of the host;
    and Claude does not reliably expand ${VAR} in headers). None for other agents."""
    if not job.agent.mcp or job.agent.output != AgentOutput.claude_stream_json.value:
        yield None
        return
    server = {
        "type": "http",
        "url": f"{api_url}/mcp",
        "headers": {"Authorization": f"Bearer {job.token}"},
    }
    fd, path = tempfile.mkstemp(prefix="agx-mcp-", suffix=".json")  # mode 0600
    try:
        with os.fdopen(fd, "w") as config:
            json.dump({"mcpServers": {"agx": server}}, config)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _agx_env(job: Job, api_url: str) -> dict[str, str]:
    """The agent's env plus how to call agx back: AGX_API_URL (the agent's own env may set
    another, e.g. from inside a container), AGX_EXECUTION_ID and AGX_EXECUTION_TOKEN."""
    return {
        "AGX_API_URL": api_url,
        **job.agent.env,
        "AGX_EXECUTION_ID": job.execution_id,
        "AGX_EXECUTION_TOKEN": job.token,
    }


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
    if reason in ("lease", "unrenewed", "drain") and parsed.has_result and not parsed.is_error:
        return None  # the agent's work was done (its result is in) before the kill
    if reason == "drain":
        return DRAIN_ERROR
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
