"""Races between clients: every one ends as a success or a clear 4xx, and a 202 is never lost."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from shared.models import Agent, Execution
from tests.conftest import app_client

ROUNDS = 30
SUBMITTERS = 8


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at once (released together by a barrier); their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_an_accepted_task_is_never_deleted_with_its_agent(services, admin_key):
    clients = [app_client(services, admin_key) for _ in range(SUBMITTERS + 1)]
    accepted: list[str] = []
    for round_ in range(ROUNDS):
        name = f"racy{round_}"
        assert clients[0].post("/api/agents", json={"name": name, "command": ["x"]}).status_code
        submit = [
            partial(c.post, f"/api/agents/{name}/task", json={"message": "hi"}) for c in clients[1:]
        ]
        results = _race([partial(clients[0].delete, f"/api/agents/{name}"), *submit])
        deleted = results[0].status_code
        assert deleted in (204, 409), results[0].json
        for resp in results[1:]:
            assert resp.status_code in (202, 404), resp.json
            if resp.status_code == 202:
                accepted.append(resp.json["execution_id"])
        if deleted == 204:
            assert all(r.status_code == 404 for r in results[1:])
    with services.Session() as session:
        stored = {e for (e,) in session.query(Execution.id).filter(Execution.id.in_(accepted))}
    assert stored == set(accepted)


def test_concurrent_creates_of_one_agent_give_one_201_and_409s(services, admin_key):
    clients = [app_client(services, admin_key) for _ in range(8)]
    for round_ in range(10):
        body = {"name": f"twin{round_}", "command": ["x"]}
        results = _race([partial(c.post, "/api/agents", json=body) for c in clients])
        codes = sorted(r.status_code for r in results)
        assert codes == [201] + [409] * 7, [r.json for r in results]


def test_schedule_creation_racing_agent_deletion_ends_in_201_or_404(services, admin_key):
    clients = [app_client(services, admin_key) for _ in range(5)]
    for round_ in range(15):
        name = f"sched{round_}"
        clients[0].post("/api/agents", json={"name": name, "command": ["x"]})
        body = {"cron": "0 * * * *", "message": "tick"}
        create = [partial(c.post, f"/api/agents/{name}/schedules", json=body) for c in clients[1:]]
        results = _race([partial(clients[0].delete, f"/api/agents/{name}"), *create])
        assert results[0].status_code == 204
        assert all(r.status_code in (201, 404) for r in results[1:]), [r.json for r in results]


def test_a_patch_racing_a_delete_ends_in_200_or_404(services, admin_key):
    clients = [app_client(services, admin_key) for _ in range(5)]
    for round_ in range(15):
        name = f"patchy{round_}"
        clients[0].post("/api/agents", json={"name": name, "command": ["x"]})
        body = {"timeout_seconds": 60}
        patch = [partial(c.patch, f"/api/agents/{name}", json=body) for c in clients[1:]]
        results = _race([partial(clients[0].delete, f"/api/agents/{name}"), *patch])
        assert results[0].status_code == 204
        assert all(r.status_code in (200, 404) for r in results[1:]), [r.json for r in results]
    with services.Session() as session:
        assert session.query(Agent).count() == 0
