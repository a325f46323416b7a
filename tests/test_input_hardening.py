"""Hostile input is a 4xx JSON error naming the field, never a 500, and changes nothing stored."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from api.validation import MAX_DEPTH
from shared.models import Agent, Execution
from shared.services import Services
from shared.store.keys import create_key
from tests.conftest import app_client


@pytest.fixture
def alpha(make_agent: Callable[..., Agent], services: Services) -> str:
    """An agent named alpha with one finished execution, so ids in paths can be real."""
    make_agent("alpha", description="the original")
    with services.Session.begin() as session:
        session.add(Execution(id="e1", agent_name="alpha", message="hi", status="completed"))
    return "alpha"


def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json, resp.get_data(as_text=True)
    return resp.get_json()["error"]


def _agent(services: Services, name: str) -> dict[str, Any]:
    with services.Session() as session:
        agent = session.get(Agent, name)
        assert agent is not None
        return {"description": agent.description, "workdir": agent.workdir, "env": agent.env}


NUL_PATHS = [
    ("GET", "/api/agents/a%00b"),
    ("PATCH", "/api/agents/a%00b"),
    ("DELETE", "/api/agents/a%00b"),
    ("POST", "/api/agents/a%00b/task"),
    ("GET", "/api/agents/alpha/executions/e%001"),
    ("POST", "/api/agents/alpha/executions/e%001/stop"),
    ("POST", "/api/agents/a%00b/executions/e1/stop"),
    ("GET", "/api/agents/a%00b/schedules"),
    ("GET", "/api/schedules/a%00b"),
    ("PATCH", "/api/schedules/a%00b"),
    ("DELETE", "/api/schedules/a%00b"),
    ("GET", "/api/schedules/a%00b/fires"),
    ("GET", "/api/executions/a%00b/events"),
    ("GET", "/ws/executions/a%00b"),
]


@pytest.mark.parametrize(("method", "path"), NUL_PATHS)
def test_a_nul_byte_in_a_path_is_not_found_with_or_without_a_key(
    services: Services, admin_key: str, alpha: str, method: str, path: str
) -> None:
    resp = app_client(services, admin_key).open(path, method=method, json={"message": "x"})
    assert _error(resp, 404)["code"] == "not_found"
    anonymous = app_client(services, "not-a-key").open(path, method=method, json={"message": "x"})
    assert _error(anonymous, 401 if path.startswith("/api/") else 404)  # authenticate first
    assert _agent(services, "alpha")["description"] == "the original"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("agent=a%00b", "agent"),
        ("q=a%00b", "q"),
        ("status=running&q=%00", "q"),
        ("cursor=%00", "cursor"),
    ],
)
def test_a_nul_byte_in_a_query_parameter_is_refused_naming_it(
    client: Any, alpha: str, query: str, field: str
) -> None:
    for path in ("/api/executions", "/api/agents/alpha/executions"):
        error = _error(client.get(f"{path}?{query}"), 422)
        assert error["field"] == field
        assert "NUL" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "a\x00b"}, "description"),
        ({"workdir": "/tmp/\x00"}, "workdir"),
        ({"env": {"TOKEN": "x\x00y"}}, "env.TOKEN"),
        ({"env": {"A\x00B": "x"}}, "env"),
        ({"command": ["ok", "bad\x00"]}, "command.1"),
        ({"default_model": "m\x00"}, "default_model"),
        ({"env": {"TOKEN": "\ud800"}}, "env.TOKEN"),
        ({"description": "lone \udfff low"}, "description"),
    ],
)
def test_nul_and_lone_surrogates_in_an_agent_body_are_refused_naming_the_field(
    client: Any, services: Services, alpha: str, body: dict[str, Any], field: str
) -> None:
    before = _agent(services, "alpha")
    raw = json.dumps(body)  # escapes NUL as \u0000 and a surrogate as \ud800, as a client would
    for method, path, data in (
        ("PATCH", "/api/agents/alpha", raw),
        ("POST", "/api/agents", json.dumps({"name": "beta", "command": ["x"], **body})),
    ):
        resp = client.open(path, method=method, data=data, content_type="application/json")
        error = _error(resp, 422)
        assert error["field"] == field, error
    assert _agent(services, "alpha") == before
    with services.Session() as session:
        assert session.get(Agent, "beta") is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "* * * * *", "message": "hi", "name": "n\x00"}, "name"),
        ({"cron": "* * * * *", "from_execution_id": "e\x001"}, "from_execution_id"),
        ({"cron": "* * * * *", "message": "hi\x00"}, "message"),
        ({"cron": "* * * * *", "message": "hi", "timezone": "UTC\x00"}, "timezone"),
    ],
)
def test_nul_in_a_schedule_body_is_refused_naming_the_field(
    client: Any, alpha: str, body: dict[str, Any], field: str
) -> None:
    resp = client.post("/api/agents/alpha/schedules", json=body)
    assert _error(resp, 422)["field"] == field
    assert client.get("/api/agents/alpha/schedules").get_json()["items"] == []


def test_nul_in_a_task_message_is_refused_and_nothing_is_submitted(
    client: Any, services: Services, alpha: str
) -> None:
    resp = client.post("/api/agents/alpha/task", json={"message": "hi", "model": "m\x00"})
    assert _error(resp, 422)["field"] == "model"
    with services.Session() as session:
        assert session.query(Execution).count() == 1


def _nested(depth: int) -> str:
    return '{"description": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/agents"),
        ("PATCH", "/api/agents/alpha"),
        ("POST", "/api/agents/alpha/task"),
        ("POST", "/api/agents/alpha/schedules"),
        ("POST", "/api/session"),
    ],
)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deeply_nested_json_is_refused_on_every_json_endpoint(
    services: Services, admin_key: str, alpha: str, method: str, path: str, depth: int
) -> None:
    key = "" if path == "/api/session" else admin_key
    resp = app_client(services, key).open(
        path, method=method, data=_nested(depth), content_type="application/json"
    )
    error = _error(resp, 422)
    assert error["field"] == "body"
    assert "nested too deeply" in error["message"]


def test_json_nested_within_the_limit_is_parsed_as_usual(client: Any, alpha: str) -> None:
    resp = client.patch(
        "/api/agents/alpha", data=_nested(MAX_DEPTH - 1), content_type="application/json"
    )
    assert _error(resp, 422)["field"] == "description"  # a list is not a string: past parsing


def test_a_body_over_the_limit_is_413_with_the_json_error(client: Any, alpha: str) -> None:
    big = json.dumps({"message": "x" * (1024 * 1024 + 10)})
    resp = client.post("/api/agents/alpha/task", data=big, content_type="application/json")
    assert _error(resp, 413)["code"] == "request_entity_too_large"


def test_a_chunked_body_over_the_limit_is_413_from_the_real_server(
    api_url: str, services: Services, alpha: str
) -> None:
    with services.Session.begin() as session:
        key = create_key(session, "chunky")
    url = urlsplit(api_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    payload = json.dumps({"message": "x" * (1024 * 1024 + 10)}).encode()
    chunks = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    conn.request(
        "POST",
        "/api/agents/alpha/task",
        body=chunks,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 413, body
    assert json.loads(body)["error"]["code"] == "request_entity_too_large"
    with services.Session() as session:
        assert session.query(Execution).count() == 1


TASK = "/api/agents/alpha/task"
SCHEDULES = "/api/agents/alpha/schedules"
DAILY = {"cron": "@daily", "message": "m"}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PATCH", "/api/agents/alpha", {"timeout_seconds": True}, "timeout_seconds"),
        ("PATCH", "/api/agents/alpha", {"queue_limit": False}, "queue_limit"),
        ("PATCH", "/api/agents/alpha", {"max_parallel_tasks": "3"}, "max_parallel_tasks"),
        ("PATCH", "/api/agents/alpha", {"max_parallel_tasks": 3.5}, "max_parallel_tasks"),
        ("POST", "/api/agents", {"name": "b", "command": ["x"], "queue_limit": "1"}, "queue_limit"),
        ("POST", TASK, {"message": "hi", "wait": "yes"}, "wait"),
        ("POST", TASK, {"message": "hi", "wait": 1}, "wait"),
        ("POST", TASK, {"message": "hi", "timeout_seconds": True}, "timeout_seconds"),
        ("POST", SCHEDULES, {**DAILY, "enabled": "true"}, "enabled"),
        ("POST", SCHEDULES, {**DAILY, "misfire_grace_seconds": "5"}, "misfire_grace_seconds"),
        ("POST", SCHEDULES, {**DAILY, "from_execution_id": 1}, "from_execution_id"),
    ],
)
def test_json_bodies_take_booleans_and_integers_strictly(
    client: Any, services: Services, alpha: str, method: str, path: str, body: Any, field: str
) -> None:
    before = _agent(services, "alpha")
    assert _error(client.open(path, method=method, json=body), 422)["field"] == field
    assert _agent(services, "alpha") == before
    with services.Session() as session:
        assert session.query(Execution).count() == 1


def test_price_still_takes_a_json_number_or_a_numeric_string(client: Any, alpha: str) -> None:
    assert client.patch("/api/agents/alpha", json={"price": 0.25}).get_json()["price"] == "0.25"
    assert client.patch("/api/agents/alpha", json={"price": "1.5"}).get_json()["price"] == "1.5"
    assert client.patch("/api/agents/alpha", json={"price": 2}).get_json()["price"] == "2"


def test_an_integral_json_number_is_an_integer_as_json_schema_says(client: Any, alpha: str) -> None:
    resp = client.patch("/api/agents/alpha", json={"max_parallel_tasks": 3.0, "price": 2.0})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["max_parallel_tasks"] == 3


def test_a_number_out_of_range_is_422_not_infinity(client: Any, alpha: str) -> None:
    resp = client.patch(
        "/api/agents/alpha", data='{"price": 1e400}', content_type="application/json"
    )
    assert _error(resp, 422)["field"] == "body"


def test_query_strings_stay_lax_since_they_are_strings(client: Any, alpha: str) -> None:
    resp = client.get("/api/agents/alpha/executions?limit=1")
    assert resp.status_code == 200
    assert len(resp.get_json()["items"]) == 1


def test_a_body_that_is_not_an_object_or_not_json_is_422(client: Any, alpha: str) -> None:
    for data in ("[1]", '"x"', "{", "NaN", '{"description": NaN}'):
        resp = client.patch("/api/agents/alpha", data=data, content_type="application/json")
        assert _error(resp, 422)["field"] in ("body", "description"), data


def test_no_dependency_leaves_the_recursion_limit_high_enough_to_crash_the_api(
    services: Services,
) -> None:
    """py_ecc (under x402[evm]) sets it to 100,000 on import: a nested body then overflowed
    the C stack (a segfault of the API process, not a 422)."""
    import sys

    from shared.payments import SAFE_RECURSION_LIMIT

    app_client(services, "")
    assert sys.getrecursionlimit() <= SAFE_RECURSION_LIMIT
