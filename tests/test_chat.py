"""Chat and Continue as Chat: sessions resumed for real, one turn at a time per conversation
(across worker processes, through crashes and stops), conversations kept to their agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from producer import ChatTurn, submit_execution
from producer.submit import Publication
from shared.models import Execution
from shared.states import Trigger
from shared.store.keys import create_key
from tests.conftest import app_client, statuses, wait_for
from tests.helpers import finished, gone


@pytest.fixture
def chat_agent(make_agent, tmp_path):
    """A demo agent keeping its sessions in the test's own folder."""

    def make(name: str = "demo", **fields):
        env = {
            "AGX_DEMO_RECORD": str(tmp_path / f"{name}.record"),
            "AGX_DEMO_SESSIONS": str(tmp_path / "sessions"),
        }
        return make_agent(name, env=env, **fields)

    return make


def _chat(client, agent: str, message: str, session_id: str | None = None) -> dict:
    body = {"message": message} | ({"session_id": session_id} if session_id else {})
    resp = client.post(f"/api/agents/{agent}/chat", json=body)
    assert resp.status_code == 202, resp.json
    return resp.json


def _done(services, execution_id: str, timeout: float = 30) -> Execution:
    return wait_for(lambda: finished(services, execution_id), timeout, message=execution_id)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_chat_starts_a_session_and_the_next_message_resumes_it(
    client, services, chat_agent, processes
):
    chat_agent()
    processes.workers()
    first = _chat(client, "demo", "my name is Ada")
    row = _done(services, first["execution_id"])
    assert row.status == "completed" and row.triggered_by == "chat"
    assert row.claude_session_id == first["session_id"]  # --session-id reached the agent
    assert row.response == "demo: my name is Ada"
    second = _chat(client, "demo", "who am I", first["session_id"])
    assert second["session_id"] == first["session_id"]
    row2 = _done(services, second["execution_id"])
    assert row2.status == "completed", row2.error
    assert row2.response == "demo: who am I (turn 2; earlier: my name is Ada)"  # --resume
    assert row2.parent_execution_id == first["execution_id"]
    other = _done(services, _chat(client, "demo", "who am I")["execution_id"])
    assert other.response == "demo: who am I"  # a new conversation knows nothing of Ada
    talk = client.get(f"/api/agents/demo/chat/{first['session_id']}")
    assert talk.status_code == 200
    turns = talk.json["turns"]
    assert [t["id"] for t in turns] == [first["execution_id"], second["execution_id"]]
    assert [t["message"] for t in turns] == ["my name is Ada", "who am I"]
    assert turns[1]["response"] == row2.response and turns[1]["cost"] > 0
    assert all(t["status"] == "completed" for t in turns)


def test_conversations_are_kept_to_their_agent_and_session_ids_are_checked(
    client, services, chat_agent, make_agent
):
    chat_agent("demo")
    chat_agent("other")
    make_agent("plain", output="text", command=[sys.executable, "-m", "agx.demo_agent"])
    started = _chat(client, "demo", "hello")
    sid = started["session_id"]
    # Another agent cannot resume (and so read) demo's session.
    resp = client.post("/api/agents/other/chat", json={"message": "hi", "session_id": sid})
    assert resp.status_code == 404
    assert client.get(f"/api/agents/other/chat/{sid}").status_code == 404
    unknown = client.post("/api/agents/demo/chat", json={"message": "x", "session_id": "nope"})
    assert unknown.status_code == 404
    for bad in ("-rf", "a b", "x" * 129, "../../etc", ""):
        resp = client.post("/api/agents/demo/chat", json={"message": "x", "session_id": bad})
        assert resp.status_code == 422 and resp.json["error"]["field"] == "session_id", bad
    assert client.get("/api/agents/demo/chat/-x").status_code == 422
    plain = client.post("/api/agents/plain/chat", json={"message": "hi"})
    assert (
        plain.status_code == 409 and "cannot keep a conversation" in plain.json["error"]["message"]
    )
    assert client.post("/api/agents/ghost/chat", json={"message": "hi"}).status_code == 404
    assert client.post("/api/agents/demo/chat", json={}).status_code == 422


def test_a_turn_sent_while_the_previous_runs_is_held_out_of_the_queue_until_it_ends(
    client, services, chat_agent
):
    """No workers: the first turn stays pending; the second holds no FIFO place."""
    chat_agent(max_parallel_tasks=3)
    first = _chat(client, "demo", "one")
    assert services.slots.position("demo", first["execution_id"]) is not None
    second = _chat(client, "demo", "two", first["session_id"])
    assert second["waiting_for"] == first["execution_id"] and second["queue_position"] is None
    assert not services.slots.knows("demo", second["execution_id"])
    # A stop of the first (pending) lets the second into the agent's queue at once.
    assert (
        client.post(f"/api/agents/demo/executions/{first['execution_id']}/stop").status_code == 200
    )
    assert services.slots.knows("demo", second["execution_id"])
    with services.Session() as session:
        row = session.get(Execution, second["execution_id"])
        assert row.held_for is None and row.parent_execution_id == first["execution_id"]


def test_the_reaper_releases_a_held_turn_whose_previous_turn_ended_unannounced(
    services, chat_agent
):
    """The fallback: a release that never happened (its worker died after the terminal
    write) is done by the reaper's re-dispatch; a turn whose predecessor runs stays held."""
    from workers import reaper

    chat_agent()
    turn = ChatTurn("s-1", resume=False)
    first = submit_execution(services, "demo", "one", triggered_by=Trigger.chat, chat=turn)
    again = ChatTurn("s-1", resume=True)
    second = submit_execution(services, "demo", "two", triggered_by=Trigger.chat, chat=again)
    assert second.publication is Publication.held
    services.settings = replace(services.settings, redispatch_after_seconds=0)
    reaper.redispatch(services)
    assert not services.slots.knows("demo", second.execution.id), "held while one is in flight"
    with services.Session.begin() as session:
        session.get(Execution, first.execution.id).status = "failed"
    assert second.execution.id in reaper.redispatch(services)
    assert services.slots.knows("demo", second.execution.id)


def test_turns_of_one_conversation_never_overlap_across_two_worker_processes(
    client, services, chat_agent, processes, tmp_path
):
    chat_agent(max_parallel_tasks=3)
    processes.workers(threads=2)
    processes.workers(threads=2)
    first = _chat(client, "demo", "t1 sleep=1")
    sid = first["session_id"]
    ids = [first["execution_id"]]
    ids += [_chat(client, "demo", f"t{n} sleep=0.5", sid)["execution_id"] for n in (2, 3, 4)]
    lone = _chat(client, "demo", "elsewhere sleep=1")["execution_id"]  # another conversation
    for eid in ids + [lone]:
        assert _done(services, eid, 60).status == "completed"
    spans: dict[str, list[float]] = {}
    for event in _records(tmp_path / "demo.record"):
        if event["event"] in ("start", "end"):
            spans.setdefault(event["message"].split()[0], []).append(event["t"])
    order = ["t1", "t2", "t3", "t4"]
    for before, after in zip(order, order[1:], strict=False):
        assert spans[before][1] <= spans[after][0], f"{after} started before {before} ended"
    # Free slots were there: the other conversation ran beside the first turn.
    assert spans["elsewhere"][0] < spans["t1"][1]
    with services.Session() as session:
        parents = [session.get(Execution, eid).parent_execution_id for eid in ids]
        workers = {session.get(Execution, eid).worker_id.split(":")[1] for eid in ids}
    assert parents == [None, *ids[:-1]]
    print(f"\nturns ran on worker processes {sorted(workers)}")


def test_a_crashed_turn_releases_the_next_one(client, services, chat_agent, processes, tmp_path):
    chat_agent(max_parallel_tasks=3)
    processes.workers(threads=2)
    first = _chat(client, "demo", "doomed sleep=60")
    second = _chat(client, "demo", "after the crash", first["session_id"])
    agent_pid = wait_for(
        lambda: (
            next(
                (e["pid"] for e in _records(tmp_path / "demo.record") if e["event"] == "start"),
                None,
            )
            if (tmp_path / "demo.record").exists()
            else None
        ),
        30,
        message="the first turn running",
    )
    assert statuses(services, [second["execution_id"]])[second["execution_id"]] == "pending"
    os.kill(psutil.Process(agent_pid).ppid(), signal.SIGKILL)  # kill -9 its worker
    wait_for(lambda: gone(agent_pid), 10, message="the agent dies with its worker")
    processes.start("reaper", "--interval", "0.5")
    processes.workers(threads=2)
    assert _done(services, first["execution_id"], 45).status == "failed"
    row = _done(services, second["execution_id"], 45)
    assert row.status == "completed", row.error
    assert row.response == "demo: after the crash (turn 2; earlier: doomed sleep=60)"


def test_continue_as_chat_resumes_a_finished_execution(
    client, services, chat_agent, processes, make_agent
):
    chat_agent()
    original = client.post("/api/agents/demo/task", json={"message": "remember 42"}).json
    oid = original["execution_id"]
    early = client.post(f"/api/agents/demo/executions/{oid}/continue", json={"message": "x"})
    assert early.status_code == 409 and "no session id yet" in early.json["error"]["message"]
    processes.workers()
    done = _done(services, oid)
    resp = client.post(f"/api/agents/demo/executions/{oid}/continue", json={"message": "recall"})
    assert resp.status_code == 202 and resp.json["session_id"] == done.claude_session_id
    row = _done(services, resp.json["execution_id"])
    assert row.status == "completed" and row.triggered_by == "chat"
    assert row.parent_execution_id == oid
    assert row.response == "demo: recall (turn 2; earlier: remember 42)"
    turns = client.get(f"/api/agents/demo/chat/{done.claude_session_id}").json["turns"]
    assert [t["id"] for t in turns] == [oid, row.id]  # the first turn included
    assert (
        client.post("/api/agents/demo/executions/nope/continue", json={"message": "x"}).status_code
        == 404
    )


def test_continue_refuses_keys_that_cannot_see_the_original_and_agents_that_cannot_resume(
    client, services, chat_agent, make_agent
):
    chat_agent("demo")
    chat_agent("mine")
    make_agent("plain", output="text", command=[sys.executable, "-m", "agx.demo_agent"])
    with services.Session.begin() as session:
        for name in ("demo", "plain"):
            session.add(
                Execution(
                    agent_name=name, message="m", status="completed", claude_session_id="s-77"
                )
            )
        rows = session.query(Execution).all()
        ids = {r.agent_name: r.id for r in rows}
        scoped = create_key(session, "scoped", ["mine"])
    other = app_client(services, scoped)
    body = {"message": "x"}
    resp = other.post(f"/api/agents/demo/executions/{ids['demo']}/continue", json=body)
    assert resp.status_code == 404
    # Not through its own agent's path either: the execution belongs to demo.
    resp = other.post(f"/api/agents/mine/executions/{ids['demo']}/continue", json=body)
    assert resp.status_code == 404
    assert other.get("/api/agents/demo/chat/s-77").status_code == 404
    plain = client.post(f"/api/agents/plain/executions/{ids['plain']}/continue", json=body)
    assert plain.status_code == 409


def test_agx_chat_streams_each_reply_and_keeps_the_conversation(
    api_url, admin_key, settings, chat_agent, processes
):
    chat_agent()
    processes.workers()
    env = {
        **os.environ,
        "AGX_URL": api_url,
        "AGX_API_KEY": admin_key,
        "AGX_HOME": str(settings.home),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agx", "chat", "demo"],
        input="I like tea\n\nwhat do I like\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "demo: I like tea"
    assert lines[1] == "demo: what do I like (turn 2; earlier: I like tea)"
    assert lines[-1].startswith("· conversation ")


def test_ctrl_c_in_agx_chat_stops_the_running_turn_and_the_conversation_goes_on(
    api_url, admin_key, settings, services, chat_agent, processes
):
    chat_agent()
    processes.workers()
    env = {**os.environ, "AGX_URL": api_url, "AGX_API_KEY": admin_key}
    env["AGX_HOME"] = str(settings.home)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agx", "chat", "demo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("slow sleep=30\n")
        proc.stdin.flush()

        def running() -> Execution | None:
            with services.Session() as session:
                return session.query(Execution).filter_by(status="running").one_or_none()

        slow = wait_for(running, 30, message="the first turn running")
        proc.send_signal(signal.SIGINT)
        assert _done(services, slow.id, 15).status == "cancelled"
        out, err = proc.communicate("quick one\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "· stopped" in err
    assert "demo: quick one (turn 2; earlier: slow sleep=30)" in out.splitlines()
