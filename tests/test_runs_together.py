"""Claims and terminal writes made together: the runs a worker process's threads claim, or
end, at the same moment are claimed, or written, in one statement
(`executions.claim_together`, `executions.finish_together`), and each run still gets exactly
the outcome its own statement would have had: its CAS, a stop accepted before it, its
transcript, or its own failure; an execution claimed twice at once runs once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from producer import submit_execution
from shared.models import Execution, Transcript
from shared.services import Services
from shared.states import STOPPED_ERROR, ExecutionStatus
from shared.store import executions
from shared.store.executions import Claim, Finish
from tests.conftest import statuses
from workers.executor import Executor

DONE = ExecutionStatus.completed


def _claimed(services: Services, agent: str, count: int) -> list[tuple[str, int]]:
    """`count` executions of the agent, claimed: (id, attempt) each."""
    out = []
    for i in range(count):
        eid = submit_execution(services, agent, f"run {i}").execution.id
        with services.Session.begin() as session:
            claimed = executions.claim_returning(session, eid, agent, "w", f"{i:064d}")
        out.append((eid, claimed.attempt))
    return out


def test_each_run_written_together_gets_its_own_outcome(services, make_agent):
    """Four runs in one statement: one wins, one's attempt is stale, one was stopped first
    (cancelled, whatever it produced), one has no transcript. Only winners store transcripts;
    every written run's execution token is gone with it."""
    make_agent("demo", max_parallel_tasks=4)
    (won, a1), (stale, a2), (stopped, a3), (bare, a4) = _claimed(services, "demo", 4)
    with services.Session.begin() as session:
        session.execute(
            text("UPDATE executions SET cancel_requested_at = now() WHERE id = :id"),
            {"id": stopped},
        )
    runs = [
        Finish(won, a1, DONE, {"response": "ok", "cost": 0.5, "num_turns": 2}, ("w", 1, False)),
        Finish(stale, a2 + 1, ExecutionStatus.failed, {"error": "late"}, ("s", 1, False)),
        Finish(stopped, a3, DONE, {"response": "anyway"}, ("c", 2, True)),
        Finish(bare, a4, ExecutionStatus.failed, {"error": "boom"}),
    ]
    with services.connections.connection() as conn:
        written = executions.finish_together(conn, runs)
    assert [None if w is None else tuple(w) for w in written] == [
        (won, "completed", None, "ok"),
        None,
        (stopped, "cancelled", STOPPED_ERROR, "anyway"),
        (bare, "failed", "boom", None),
    ]
    with services.Session() as session:
        rows = {eid: session.get(Execution, eid) for eid in (won, stale, stopped, bare)}
        kept = {t.execution_id: t for t in session.query(Transcript)}
    assert rows[won].cost == pytest.approx(0.5) and rows[won].num_turns == 2
    assert rows[stale].status == "running", "a stale attempt writes nothing"
    assert {eid: (t.content, t.line_count, t.truncated) for eid, t in kept.items()} == {
        won: ("w", 1, False),
        stopped: ("c", 2, True),
    }
    assert [rows[eid].token_hash for eid in (won, stopped, bare)] == [None] * 3
    assert rows[stale].token_hash is not None, "the running attempt's token still works"
    assert all(rows[eid].completed_at is not None for eid in (won, stopped, bare))


def _starts(record: Path, message: str) -> int:
    """How many times the demo agent started on this message."""
    events = [json.loads(line) for line in record.read_text().splitlines()]
    return sum(e["event"] == "start" and e["message"] == message for e in events)


def test_each_run_claimed_together_gets_its_own_outcome(services, make_agent):
    """Five claims in one call: one wins; one of a running execution, one naming another
    agent and one of no execution lose; the same execution claimed a second time loses to
    the first."""
    make_agent("demo", max_parallel_tasks=5)
    make_agent("other")
    won, running, elsewhere = (
        submit_execution(services, "demo", f"claim {i}").execution.id for i in range(3)
    )
    with services.connections.connection() as conn:
        executions.claim_returning(conn, running, "demo", "earlier", None)
        claimed = executions.claim_together(
            conn,
            [
                Claim(won, "demo", "w1", "a" * 64),
                Claim(running, "demo", "w2", "b" * 64),
                Claim(elsewhere, "other", "w3", "c" * 64),
                Claim("0" * 26, "demo", "w4", "d" * 64),
                Claim(won, "demo", "w5", "e" * 64),
            ],
        )
    first, *lost = claimed
    assert first is not None and (first.attempt, first.message) == (1, "claim 0")
    assert lost == [None] * 4
    with services.Session() as session:
        rows = {eid: session.get(Execution, eid) for eid in (won, running, elsewhere)}
    assert (rows[won].status, rows[won].worker_id, rows[won].token_hash) == (
        "running",
        "w1",
        "a" * 64,
    )
    assert (rows[running].attempt, rows[running].worker_id) == (1, "earlier")
    assert rows[elsewhere].status == "pending"


def test_runs_a_worker_claims_at_once_are_claimed_together_and_a_duplicate_runs_once(
    settings, services, make_agent, monkeypatch, tmp_path
):
    """While one thread's claim is under way, three more messages come: two executions and a
    second delivery of one of them. The three claims go in one call; the duplicate loses to
    the first delivery, so that execution runs once; all three run to completion."""
    make_agent("demo", max_parallel_tasks=4)
    ids = [submit_execution(services, "demo", f"claimed {i}").execution.id for i in range(3)]
    raised, held = _run_held(settings, monkeypatch, "claim_together", [*ids, ids[1]])
    assert raised == dict.fromkeys(ids)
    assert held.calls[0] == [ids[0]] and sorted(held.calls[1]) == sorted([ids[1], ids[1], ids[2]])
    assert statuses(services, ids) == dict.fromkeys(ids, "completed")
    assert [_starts(tmp_path / "demo.record", f"claimed {i}") for i in range(3)] == [1, 1, 1]


class Held:
    """Wraps a statement of the store (`claim_together` or `finish_together`): its first call
    waits until `others` more runs wait for the next one; records the runs of every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, statement: str, others: int):
        self.real = getattr(executions, statement)
        self.combiner = {"claim_together": "_claims", "finish_together": "_finishes"}[statement]
        self.executor: Executor | None = None  #: the executor whose combiner to watch
        self.others = others
        self.calls: list[list[str]] = []
        monkeypatch.setattr(executions, statement, self)

    def __call__(self, conn: Any, runs: list[Any]) -> Any:
        self.calls.append([run.execution_id for run in runs])
        if len(self.calls) == 1:
            assert self.executor is not None
            waiting = getattr(self.executor, self.combiner)._waiting
            deadline = time.monotonic() + 20
            while len(waiting) < self.others:
                assert time.monotonic() < deadline, "the other runs never came"
                time.sleep(0.01)
        return self.real(conn, runs)


def _run_held(
    settings: Any, monkeypatch: pytest.MonkeyPatch, statement: str, ids: list[str]
) -> tuple[dict[str, BaseException | None], Held]:
    """Handle each message (an execution id) on a thread of its own, in one worker process
    whose `statement` holds its first call until every other message's run waits for it; the
    first starts alone. What each raised (by execution), and the statement's calls."""
    worker = Services(settings, pool_size=len(ids), pre_ping=False, autocommit=True)
    held = Held(monkeypatch, statement, others=len(ids) - 1)
    executor = held.executor = Executor(worker)
    raised: dict[str, BaseException | None] = {}

    def handle(eid: str) -> None:
        try:
            executor.handle(eid, "demo")
            raised.setdefault(eid, None)
        except BaseException as exc:
            raised[eid] = exc

    threads = [threading.Thread(target=handle, args=(eid,)) for eid in ids]
    try:
        threads[0].start()
        deadline = time.monotonic() + 20
        while not held.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        worker.close()
    return raised, held


def test_runs_a_worker_ends_at_once_are_written_in_one_statement(
    settings, services, make_agent, monkeypatch
):
    """Four runs on four threads of one worker: while the first one's write is under way the
    other three wait, and then go in one statement; all four are stored in full."""
    make_agent("demo", max_parallel_tasks=4)
    ids = [submit_execution(services, "demo", f"together {i}").execution.id for i in range(4)]
    raised, held = _run_held(settings, monkeypatch, "finish_together", ids)
    assert raised == dict.fromkeys(ids)
    assert held.calls[0] == [ids[0]] and sorted(held.calls[1]) == sorted(ids[1:])
    assert len(held.calls) == 2
    with services.Session() as session:
        for eid in ids:
            row = session.get(Execution, eid)
            assert (row.status, row.response) == ("completed", f"demo: {row.message}")
            assert "demo: together" in session.get(Transcript, eid).content


def test_a_run_whose_write_fails_fails_no_other_run_written_with_it(
    settings, services, make_agent, monkeypatch
):
    """One run's transcript is refused (a trigger stands in for any error of its own): its
    thread raises and its row stays running, for the reaper to settle from its stream; the
    runs written in the same statement are stored as if each had been written alone."""
    make_agent("demo", max_parallel_tasks=4)
    messages = ["fine 0", "fine 1", "poison 2", "fine 3"]
    ids = [submit_execution(services, "demo", m).execution.id for m in messages]
    with services.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN IF NEW.content LIKE '%poison%' THEN"
                " RAISE EXCEPTION 'transcript refused'; END IF; RETURN NEW; END $$;"
                " CREATE TRIGGER refuse_poison BEFORE INSERT ON transcripts"
                " FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )
    try:
        raised, held = _run_held(settings, monkeypatch, "finish_together", ids)
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_poison ON transcripts"))
            conn.execute(text("DROP FUNCTION refuse_poison()"))
    assert isinstance(raised.pop(ids[2]), psycopg.errors.RaiseException)
    assert raised == dict.fromkeys([ids[0], ids[1], ids[3]])
    assert statuses(services, ids) == {
        ids[0]: "completed",
        ids[1]: "completed",
        ids[2]: "running",
        ids[3]: "completed",
    }
    first, together, *alone = held.calls
    assert first == [ids[0]] and sorted(together) == sorted(ids[1:]), "written together first"
    assert sorted(alone) == sorted([eid] for eid in ids[1:]), "then each alone"
