"""The activity summary (GET /api/agents/{name}/activity): figures from PostgreSQL against
ones computed by hand on a seeded set."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from shared.models import Execution, new_id, utcnow
from shared.store import activity
from tests.conftest import app_client
from tests.helpers import T0

# (status, trigger, cost, duration_ms, age) of agent a's executions; b's must not count.
SEEDED = (
    ("completed", "manual", "0.10", 1000, timedelta(hours=1)),
    ("completed", "mcp", "0.30", 3000, timedelta(hours=2)),
    ("failed", "manual", None, 500, timedelta(hours=3)),
    ("cancelled", "schedule", None, None, timedelta(hours=4)),
    ("running", "manual", None, None, timedelta(minutes=10)),
    ("pending", "chat", None, None, timedelta(minutes=5)),
    ("completed", "schedule", "1.00", 10000, timedelta(days=2)),  # 7 d only
    ("failed", "paid", "0.05", 2000, timedelta(days=6)),  # 7 d only
    ("completed", "manual", "5", 99999, timedelta(days=8)),  # in neither window
)

# By hand. 24 h: durations 500, 1000, 3000: p95 = 1000 + 0.9 * 2000 (linear interpolation at
# 0.95 * 2 = 1.9). 7 d: 500, 1000, 2000, 3000, 10000: p95 = 3000 + 0.8 * 7000 (at 3.8).
EXPECTED = {
    "24h": {
        "total": 6,
        "by_status": {"pending": 1, "running": 1, "completed": 2, "failed": 1, "cancelled": 1},
        "by_trigger": {"manual": 3, "schedule": 1, "mcp": 1, "chat": 1, "paid": 0},
        "success_rate": 2 / 3,
        "total_cost_usd": 0.40,
        "average_cost_usd": 0.20,
        "average_duration_ms": 1500.0,
        "p95_duration_ms": 2800.0,
    },
    "7d": {
        "total": 8,
        "by_status": {"pending": 1, "running": 1, "completed": 3, "failed": 2, "cancelled": 1},
        "by_trigger": {"manual": 3, "schedule": 2, "mcp": 1, "chat": 1, "paid": 1},
        "success_rate": 3 / 5,
        "total_cost_usd": 1.45,
        "average_cost_usd": 0.3625,
        "average_duration_ms": 3300.0,
        "p95_duration_ms": 8600.0,
    },
}


def seed(services, make_agent, now: datetime) -> str:
    """Store the seeded set as of `now`; returns the id of a's newest execution."""
    make_agent("a")
    make_agent("b")
    rows = [
        Execution(
            id=new_id(),
            agent_name="a",
            status=status,
            triggered_by=trigger,
            message="seeded",
            cost=None if cost is None else Decimal(cost),
            duration_ms=duration,
            created_at=now - age,
            completed_at=None if status in ("pending", "running") else now - age,
        )
        for status, trigger, cost, duration, age in SEEDED
    ]
    rows.append(
        Execution(
            id=new_id(),
            agent_name="b",
            status="completed",
            message="b",
            cost=Decimal(9),
            duration_ms=1,
            created_at=now - timedelta(hours=1),
        )
    )
    with services.Session.begin() as session:
        session.add_all(rows)
    return rows[5].id


def check(data: dict, newest: str) -> None:
    """The serialized summary against the figures computed by hand."""
    assert data["running_now"] == 1 and data["waiting_now"] == 1
    last = data["last_execution"]
    assert (last["id"], last["status"], last["triggered_by"]) == (newest, "pending", "chat")
    for label, expected in EXPECTED.items():
        window = data["windows"][label]
        for name, value in expected.items():
            if isinstance(value, float):
                assert window[name] == pytest.approx(value), (label, name)
            else:
                assert window[name] == value, (label, name)


def test_the_summary_matches_figures_computed_by_hand(services, make_agent):
    from api.serialize import activity_dict

    newest = seed(services, make_agent, T0)
    with services.Session() as session:
        summary = activity.summary(session, "a", now=T0)
    assert summary.windows["24h"].since == T0 - timedelta(hours=24)
    check(activity_dict(summary), newest)


def test_the_rest_route_answers_the_summary_to_keys_that_may_see_the_agent(
    services, make_agent, client
):
    from shared.store.keys import create_key

    newest = seed(services, make_agent, utcnow())
    answer = client.get("/api/agents/a/activity")
    assert answer.status_code == 200, answer.json
    check(answer.json, newest)
    assert client.get("/api/agents/nobody/activity").status_code == 404
    with services.Session.begin() as session:
        scoped = create_key(session, "only-b", ["b"])
    assert app_client(services, scoped).get("/api/agents/a/activity").status_code == 404
    assert app_client(services, scoped).get("/api/agents/b/activity").status_code == 200


def test_an_agent_without_executions_has_an_empty_summary(services, make_agent, client):
    make_agent("idle")
    data = client.get("/api/agents/idle/activity").json
    assert data["last_execution"] is None and data["running_now"] == 0
    day = data["windows"]["24h"]
    assert day["total"] == 0 and day["success_rate"] is None and day["p95_duration_ms"] is None
    assert set(day["by_status"].values()) == {0} and day["total_cost_usd"] is None
