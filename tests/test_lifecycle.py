"""Invariants 2 and 5 at their source: compare-and-set writes, and waiters that hold no thread."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from producer import submit_execution
from shared.models import Execution
from shared.services import Services
from shared.states import ExecutionStatus
from shared.store import executions
from tests.conftest import queued_messages, statuses, wait_for
from workers.executor import Executor


def test_a_terminal_status_never_changes_and_a_stale_attempt_writes_nothing(services, make_agent):
    make_agent("demo")
    eid = submit_execution(services, "demo", "cas").execution.id
    with services.Session.begin() as session:
        attempt = executions.claim_returning(session, eid, "demo", "w1").attempt
    assert attempt == 1
    with services.Session.begin() as session:
        assert executions.claim_returning(session, eid, "demo", "w2") is None, "one claim wins"
    with services.Session.begin() as session:
        assert executions.finish(session, eid, attempt + 1, ExecutionStatus.failed, {}) is None
    with services.Session.begin() as session:
        written = executions.finish(
            session, eid, attempt, ExecutionStatus.completed, {"response": "ok"}
        )
    assert tuple(written)[1:3] == ("completed", None)
    for status in (ExecutionStatus.failed, ExecutionStatus.cancelled):
        with services.Session.begin() as session:
            assert executions.finish(session, eid, attempt, status, {"error": "late"}) is None
    with services.Session() as session:
        row = session.get(Execution, eid)
    assert row.status == "completed" and row.response == "ok" and row.error is None


def test_a_stop_accepted_before_the_terminal_write_wins_over_completed(
    client, services, make_agent
):
    make_agent("demo")
    eid = submit_execution(services, "demo", "race").execution.id
    with services.Session.begin() as session:
        attempt = executions.claim_returning(session, eid, "demo", "w1").attempt
    assert client.post(f"/api/agents/demo/executions/{eid}/stop").status_code == 202
    with services.Session.begin() as session:
        written = executions.finish(
            session, eid, attempt, ExecutionStatus.completed, {"response": "done anyway"}
        )
    assert tuple(written)[1:3] == ("cancelled", "stopped by request")


def test_waiting_executions_hold_no_worker_thread(services, make_agent, processes):
    """One process with two threads: ten waiters on a busy agent do not starve another agent."""
    make_agent("busy", max_parallel_tasks=1)
    make_agent("other")
    processes.workers(processes=1, threads=2)
    long = submit_execution(services, "busy", "hog sleep=20").execution.id
    wait_for(lambda: statuses(services, [long])[long] == "running", 30, message="hog running")
    waiters = [submit_execution(services, "busy", f"wait {i}").execution.id for i in range(10)]
    other = submit_execution(services, "other", "quick").execution.id
    wait_for(
        lambda: statuses(services, [other])[other] == "completed",
        15,
        message="the other agent runs while ten executions wait",
    )
    assert set(statuses(services, waiters).values()) == {"pending"}
    assert services.slots.position("busy", waiters[-1]) == 10


def test_a_worker_survives_postgresql_dropping_its_pooled_connection(
    settings, services, make_agent
):
    """A worker's connection that PostgreSQL closed (an idle timeout) costs one retry on a
    fresh connection, not the execution; and after a restart, which closes every connection at
    once, the retry does not land on another dead one."""
    make_agent("demo")
    worker = Services(settings, pool_size=1, pre_ping=False, autocommit=True)
    executor = Executor(worker)
    try:
        first = submit_execution(services, "demo", "first").execution.id
        executor.handle(first, "demo")
        with executor.db.connection() as conn:  # the one this thread has been using
            pid = conn.info.backend_pid
        _terminate(services, [pid])
        second = submit_execution(services, "demo", "second").execution.id
        executor.handle(second, "demo")
        with executor.db.connection() as conn, executor.db.connection() as other:
            pids = [conn.info.backend_pid, other.info.backend_pid]  # two idle ones now
        assert pid not in pids
        _terminate(services, pids)  # as a restart would
        third = submit_execution(services, "demo", "third").execution.id
        executor.handle(third, "demo")
        done = [first, second, third]
        assert statuses(services, done) == dict.fromkeys(done, "completed")
    finally:
        worker.close()


def _terminate(services: Services, pids: list[int]) -> None:
    """Have PostgreSQL close these backends' connections."""
    with services.engine.connect() as admin:
        for pid in pids:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_an_api_process_pings_a_connection_that_sat_idle_and_replaces_a_dropped_one(
    settings, services, make_agent, monkeypatch
):
    """API and producer connections (the direct ones for submissions, the pool's for sessions)
    are checked before use only when they sat idle for more than PING_AFTER_IDLE_SECONDS: one
    PostgreSQL dropped while idle is replaced unseen."""
    import shared.db
    from shared.store import agents

    make_agent("demo")
    monkeypatch.setattr(shared.db, "PING_AFTER_IDLE_SECONDS", 0.2)
    api = Services(settings, pool_size=1)  # pre_ping, as the API and producers use
    try:
        first = submit_execution(api, "demo", "first").execution.id
        with api.connections.connection() as conn:  # the one the submission used
            pid = conn.info.backend_pid
        with api.Session() as session:  # the engine pool's only connection
            pooled = session.connection().connection.driver_connection.info.backend_pid
        _terminate(services, [pid, pooled])
        time.sleep(0.3)
        second = submit_execution(api, "demo", "second").execution.id
        assert statuses(services, [first, second]) == {first: "pending", second: "pending"}
        with api.Session() as session:
            assert agents.in_flight(session, "demo") == 2
        with api.connections.connection() as conn:  # no idle time: handed out as it is
            assert conn.info.backend_pid != pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        api.close()


def test_lines_reach_the_stream_even_when_the_terminal_write_fails(
    settings, services, make_agent, redis_client
):
    """The reaper rebuilds a lost run's transcript from the event stream: a failed terminal
    write must not leave lines lingering in the worker."""
    import psycopg

    from shared.events import read_stream

    make_agent("demo")
    eid = submit_execution(services, "demo", "doomed lines=5").execution.id
    with services.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_transcript() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'transcripts refused'; END $$;"
                " CREATE TRIGGER refuse_transcript BEFORE INSERT ON transcripts"
                " FOR EACH ROW EXECUTE FUNCTION refuse_transcript()"
            )
        )
    worker = Services(settings, pool_size=1, pre_ping=False, autocommit=True)
    try:
        with pytest.raises(psycopg.errors.RaiseException):
            Executor(worker).handle(eid, "demo")
    finally:
        worker.close()
        with services.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_transcript ON transcripts"))
            conn.execute(text("DROP FUNCTION refuse_transcript()"))
    assert statuses(services, [eid])[eid] == "running", "the reaper's to settle"
    events = read_stream(redis_client, eid, 0)
    assert events[0]["status"] == "running"
    assert sum(e["type"] == "line" for e in events) >= 5


def test_a_release_runs_the_next_waiter_on_its_own_thread_but_not_while_shutting_down(
    settings, services, make_agent
):
    """A promoted waiter runs on the thread that freed its slot: no broker round trip. A
    worker that is shutting down publishes it instead, for another worker."""
    make_agent("solo", max_parallel_tasks=1)
    ids = [submit_execution(services, "solo", f"run {i}").execution.id for i in range(3)]
    assert queued_messages(settings) == 1  # only the first fit a slot; the others wait
    worker = Services(settings, pool_size=2, pre_ping=False, autocommit=True)
    executor = Executor(worker)
    try:
        executor.handle(ids[0], "solo")
        assert set(statuses(services, ids).values()) == {"completed"}
        assert queued_messages(settings) == 1, "the waiters were run here, not published"
        more = [submit_execution(services, "solo", f"later {i}").execution.id for i in range(2)]
        executor.stopping.set()
        executor.handle(more[0], "solo")
        assert statuses(services, more) == {more[0]: "completed", more[1]: "pending"}
        assert queued_messages(settings) == 3, "the next waiter was published"
    finally:
        worker.close()
