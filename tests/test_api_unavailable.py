"""Failures a retry may cure answer 503 with Retry-After, never 500."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from agx.embedded import free_port
from producer import submit_execution
from shared.services import Services
from tests.conftest import app_client


def test_an_unreachable_database_answers_503_with_retry_after(settings, admin_key):
    url = make_url(settings.database_url).set(port=free_port(), host="127.0.0.1")
    away = Services(dataclasses.replace(settings, database_url=url.render_as_string(False)))
    resp = app_client(away, admin_key).get("/api/agents")
    assert resp.status_code == 503, resp.json
    assert (
        resp.json["error"]["code"] == "unavailable" and "database" in resp.json["error"]["message"]
    )
    assert resp.headers["Retry-After"] == "1"
    away.close()


def test_a_list_still_answers_while_redis_is_away_only_without_queue_positions(
    settings, services, admin_key, make_agent, private_redis
):
    make_agent("one", max_parallel_tasks=1)
    submit_execution(services, "one", "first")
    waiting = submit_execution(services, "one", "second").execution.id
    away = Services(dataclasses.replace(settings, redis_url=private_redis.url))
    private_redis.stop()
    resp = app_client(away, admin_key).get("/api/executions?agent=one")
    assert resp.status_code == 200, resp.json
    assert waiting in [item["id"] for item in resp.json["items"]]
    away.close()


def _real_deadlock(dsn: str) -> psycopg.errors.DeadlockDetected:
    """Have PostgreSQL detect a genuine deadlock between two transactions (locking the rows of
    agents `a` and `b` in opposite orders); return its error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def tx(first: int, second: int) -> None:
        with psycopg.connect(dsn) as conn:
            try:
                conn.execute("SELECT 1 FROM agents WHERE name = %s FOR UPDATE", (first,))
                barrier.wait()
                conn.execute("SELECT 1 FROM agents WHERE name = %s FOR UPDATE", (second,))
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=tx, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = [e for e in errors if isinstance(e, psycopg.errors.DeadlockDetected)]
    assert found, errors
    return found[0]


@pytest.fixture
def deadlocking_client(services, admin_key, make_agent):
    make_agent("a")
    make_agent("b")
    error = _real_deadlock(services.engine.url.render_as_string(False).replace("+psycopg", ""))
    client = app_client(services, admin_key)

    @client.application.get("/test-deadlock")
    def deadlocked() -> Any:
        raise error

    return client


def test_a_deadlock_answers_503_busy_with_retry_after(deadlocking_client):
    resp = deadlocking_client.get("/test-deadlock")
    assert resp.status_code == 503
    assert resp.json["error"]["code"] == "busy" and resp.headers["Retry-After"] == "1"
