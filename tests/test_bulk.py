"""Bulk submit: all or none (a bad item, the queue limit), ids in order, FIFO order kept, runs
gated like single submissions; `agx task --file` and the client's submit_many use it."""

from __future__ import annotations

import json
import subprocess
import sys

from shared.models import Execution
from tests.conftest import wait_for, worker_env
from tests.helpers import finished


def _count(services) -> int:
    with services.Session() as session:
        return session.query(Execution).count()


def test_a_batch_is_stored_in_order_and_queued_in_order(client, services, make_agent):
    make_agent("demo", max_parallel_tasks=2, queue_limit=10)
    tasks = [{"message": f"task {i}"} for i in range(6)]
    resp = client.post("/api/agents/demo/tasks", json={"tasks": tasks})
    assert resp.status_code == 202
    items = resp.json["items"]
    ids = [item["execution_id"] for item in items]
    with services.Session() as session:
        rows = {r.id: r for r in session.query(Execution)}
    assert [rows[i].message for i in ids] == [t["message"] for t in tasks]
    assert [item["queue_position"] for item in items] == [None, None, 1, 2, 3, 4]
    places = [services.slots.position("demo", i) for i in ids]
    assert places == sorted(places) and len(set(places)) == 6, "the FIFO keeps the order"
    assert all(rows[i].source.startswith("key:") for i in ids)


def test_one_bad_task_refuses_the_whole_batch_naming_it(client, services, make_agent):
    make_agent("demo")
    tasks = [{"message": "fine"}, {"message": "also fine"}, {"message": "bad \u0000 nul"}]
    resp = client.post("/api/agents/demo/tasks", json={"tasks": tasks})
    assert resp.status_code == 422 and resp.json["error"]["field"].startswith("tasks.2")
    resp = client.post("/api/agents/demo/tasks", json={"tasks": [{"message": "x", "model": "a b"}]})
    assert resp.status_code == 422 and resp.json["error"]["field"] == "tasks.0.model"
    assert client.post("/api/agents/demo/tasks", json={"tasks": []}).status_code == 422
    too_many = {"tasks": [{"message": "m"}] * 1001}
    assert client.post("/api/agents/demo/tasks", json=too_many).status_code == 422
    assert _count(services) == 0, "nothing stored"


def test_a_batch_over_the_queue_limit_is_refused_whole_saying_how_many_fit(
    client, services, make_agent
):
    make_agent("demo", max_parallel_tasks=1, queue_limit=3)
    client.post("/api/agents/demo/task", json={"message": "first"})
    resp = client.post("/api/agents/demo/tasks", json={"tasks": [{"message": "m"}] * 4})
    assert resp.status_code == 429
    assert "room for 3 more" in resp.json["error"]["message"]
    assert _count(services) == 1, "none of the batch was stored"
    ok = client.post("/api/agents/demo/tasks", json={"tasks": [{"message": "m"}] * 3})
    assert ok.status_code == 202 and _count(services) == 4


def test_a_batch_runs_gated_and_in_order_from_the_cli(
    api_url, admin_key, services, settings, make_agent, processes, tmp_path
):
    make_agent("demo", max_parallel_tasks=1)
    processes.workers()
    lines = tmp_path / "messages.txt"
    lines.write_text("".join(f"job{i}\n" for i in range(5)) + "\n")
    env = {**worker_env(settings), "AGX_URL": api_url, "AGX_API_KEY": admin_key}
    done = subprocess.run(
        [sys.executable, "-m", "agx", "task", "demo", "--file", str(lines)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 5
    for eid in ids:
        assert wait_for(lambda e=eid: finished(services, e), 30).status == "completed"
    starts = [
        json.loads(line)
        for line in (tmp_path / "demo.record").read_text().splitlines()
        if '"start"' in line
    ]
    assert [s["message"] for s in starts] == [f"job{i}" for i in range(5)], "FIFO order"
    events = [json.loads(line) for line in (tmp_path / "demo.record").read_text().splitlines()]
    running = most = 0
    for event in events:
        running += {"start": 1, "end": -1}.get(event["event"], 0)
        most = max(most, running)
    assert most == 1, "one at a time, like single submissions"
