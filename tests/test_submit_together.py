"""Submissions made at the same moment by one process's threads are stored together (one
statement and one Redis script per agent, `shared.combine.Combiner`), and each still gets
exactly what it would have got alone: its row, its FIFO place, or its own refusal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from producer import submit_execution
from producer.submit import Publication
from shared.combine import Combiner
from shared.errors import AlreadyFired, InvalidField, NotFound
from shared.models import Execution
from shared.states import Trigger
from shared.store import executions
from tests.helpers import T0, make_schedule

# -- the combiner -----------------------------------------------------------------------------


class Gate:
    """Work that holds its first batch until opened, recording every batch it gets."""

    def __init__(self, answer: Callable[[Any], Any] = lambda item: item * 10):
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.answer = answer

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(items)
        if len(self.batches) == 1:
            self.entered.set()
            assert self.opened.wait(10)
        return [self.answer(item) for item in items]


def _call_all(combine: Combiner[Any, Any], items: list[Any], gate: Gate) -> dict[Any, Any]:
    """Call `combine` for each item from threads of its own: the first alone, the rest while
    its batch is held; returns each item's result or exception."""
    got: dict[Any, Any] = {}

    def call(item: Any) -> None:
        try:
            got[item] = combine(item)
        except Exception as exc:
            got[item] = exc

    first = threading.Thread(target=call, args=(items[0],))
    first.start()
    assert gate.entered.wait(10)
    rest = [threading.Thread(target=call, args=(item,)) for item in items[1:]]
    for thread in rest:
        thread.start()
    deadline = time.monotonic() + 10
    while len(combine._waiting) < len(rest) and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.opened.set()
    for thread in [first, *rest]:
        thread.join(10)
    return got


def test_a_lone_call_is_worked_on_at_once_and_alone():
    batches: list[list[int]] = []
    combine = Combiner(lambda items: (batches.append(items), [i + 1 for i in items])[1])
    assert [combine(1), combine(2)] == [2, 3]
    assert batches == [[1], [2]]


def test_callers_arriving_during_a_batch_are_worked_on_together_in_the_next():
    gate = Gate()
    got = _call_all(Combiner(gate), list(range(1, 8)), gate)
    assert got == {i: i * 10 for i in range(1, 8)}
    assert gate.batches[0] == [1] and sorted(gate.batches[1]) == list(range(2, 8))


def test_at_most_most_items_a_batch_and_every_caller_answered():
    gate = Gate()
    got = _call_all(Combiner(gate, most=3), list(range(1, 9)), gate)
    assert got == {i: i * 10 for i in range(1, 9)}
    assert [len(b) for b in gate.batches] == [1, 3, 3, 1]


def test_each_caller_gets_its_own_refusal_and_a_failed_batch_fails_only_its_callers():
    gate = Gate(lambda item: ValueError(f"odd {item}") if item % 2 else item)
    got = _call_all(Combiner(gate), [2, 3, 4, 5], gate)
    assert got[2] == 2 and got[4] == 4
    assert str(got[3]) == "odd 3" and str(got[5]) == "odd 5"

    def broken(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("down")
        return items

    combine = Combiner(broken)
    with pytest.raises(RuntimeError, match="down"):
        combine(13)
    assert combine(14) == 14, "the combiner goes on after a failed batch"


# -- submissions ------------------------------------------------------------------------------


@pytest.fixture
def held_first(monkeypatch) -> Gate:
    """The first lock-free INSERT waits until the gate opens (so that the submissions made
    meanwhile queue up behind it); every INSERT is the real one, recorded."""
    gate = Gate()
    real = executions.insert_if_room

    def insert_if_room(conn: Any, rows: Any, *args: Any) -> Any:
        gate([row["message"] for row in rows])
        return real(conn, rows, *args)

    monkeypatch.setattr(executions, "insert_if_room", insert_if_room)
    return gate


def _submit_all(services: Any, gate: Gate, calls: list[dict[str, Any]]) -> list[Any]:
    """Submit each call's keywords from a thread of its own, the first alone and the rest while
    its INSERT is held; returns each one's Submitted or exception, in order."""
    got: list[Any] = [None] * len(calls)

    def submit(k: int) -> None:
        try:
            got[k] = submit_execution(services, **calls[k])
        except Exception as exc:
            got[k] = exc

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(len(calls))]
    threads[0].start()
    assert gate.entered.wait(10)
    for thread in threads[1:]:
        thread.start()
    combine = services.submissions
    deadline = time.monotonic() + 10
    while len(combine._waiting) < len(calls) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.opened.set()
    for thread in threads:
        thread.join(30)
    return got


def _rows(services: Any) -> dict[str, Execution]:
    with services.Session() as session:
        return {row.id: row for row in session.query(Execution)}


def test_submissions_made_together_are_stored_in_one_statement_each_with_its_place(
    services, make_agent, held_first
):
    make_agent("demo", max_parallel_tasks=2, default_model="house-model", queue_limit=1000)
    calls = [dict(agent_name="demo", message=f"m{k}") for k in range(8)]
    calls[3]["model"] = "own-model"
    got = _submit_all(services, held_first, calls)
    assert held_first.batches[0] == ["m0"] and sorted(held_first.batches[1]) == [
        f"m{k}" for k in range(1, 8)
    ], "the seven that came during the first INSERT were stored by one statement"
    assert len(held_first.batches) == 2
    rows = _rows(services)
    assert sorted(rows[s.execution.id].message for s in got) == sorted(c["message"] for c in calls)
    assert rows[got[3].execution.id].model == "own-model" == got[3].execution.model
    assert {rows[s.execution.id].model for k, s in enumerate(got) if k != 3} == {"house-model"}
    order = sorted(got, key=lambda s: s.execution.created_at)
    assert [s.publication for s in order[:2]] == [Publication.sent] * 2
    assert [s.queue_position for s in order[2:]] == [1, 2, 3, 4, 5, 6], "FIFO by submission time"
    assert all(s.publication is Publication.parked for s in order[2:])
    assert services.slots.in_flight("demo") == 8
    queued = [rows[s.execution.id].queued_at for s in order]
    assert queued[:2] == [None, None] and all(q is not None for q in queued[2:])


def test_a_refusal_in_a_batch_refuses_only_its_own_submission(services, make_agent, held_first):
    make_agent("demo", timeout_seconds=60, queue_limit=1000)
    schedule_id = make_schedule(services)
    due = dict(triggered_by=Trigger.schedule, schedule_id=schedule_id, scheduled_for=T0)
    calls = [
        dict(agent_name="demo", message="first"),
        dict(agent_name="demo", message="due", **due),
        dict(agent_name="demo", message="due again", **due),
        dict(agent_name="ghost", message="no such agent"),
        dict(agent_name="demo", message="too long", timeout_seconds=61),
        dict(agent_name="demo", message="fine"),
    ]
    got = _submit_all(services, held_first, calls)
    assert isinstance(got[3], NotFound) and isinstance(got[4], InvalidField)
    assert got[4].field == "timeout_seconds"
    fired = [g for g in got[1:3] if not isinstance(g, Exception)]
    assert len(fired) == 1 and sum(isinstance(g, AlreadyFired) for g in got[1:3]) == 1
    stored = sorted(row.message for row in _rows(services).values())
    assert stored == sorted(["first", fired[0].execution.message, "fine"])
    assert services.slots.in_flight("demo") == 3


def test_near_the_queue_limit_submissions_made_together_are_counted_one_by_one(
    services, make_agent, held_first
):
    make_agent("tight", max_parallel_tasks=1, queue_limit=3)
    got = _submit_all(
        services, held_first, [dict(agent_name="tight", message=f"m{k}") for k in range(8)]
    )
    assert sum(not isinstance(g, Exception) for g in got) == 4, "limit 1 + 3, exactly"
    assert len(_rows(services)) == 4
