"""POST /api/agents/{name}/task's fast path (api/fast.py): it answers a cached key's valid
submission as Flask's view would, and hands Flask every other request, so each refusal before
the submission is Flask's own and nothing is stored twice or by a refused request."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from agx.embedded import free_port
from api.context import key_cache
from shared.apikeys import hash_key, new_execution_token
from shared.models import ApiKey, Execution
from shared.services import Services
from shared.store.keys import authenticate, create_key
from tests.conftest import app_client, wait_for

ROUTE = "/api/agents/<name>/task"


class Watched:
    """A test client whose app records each request that reached Flask (past the fast path)."""

    def __init__(self, services: Services, key: str):
        self.client = app_client(services, key)
        self.flask_saw: list[str] = []
        fast = self.client.application.wsgi_app
        inner = fast.flask

        def flask(environ: dict[str, Any], start_response: Any) -> Any:
            self.flask_saw.append(environ["PATH_INFO"])
            return inner(environ, start_response)

        fast.flask = flask

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, **kw)

    def fast(self, path: str, **kw: Any) -> Any:
        """POST, asserting the fast path answered it."""
        seen = len(self.flask_saw)
        resp = self.client.post(path, **kw)
        assert len(self.flask_saw) == seen, f"Flask answered {path}: {resp.status_code}"
        return resp

    def flask(self, path: str, **kw: Any) -> Any:
        """POST, asserting Flask answered it."""
        seen = len(self.flask_saw)
        resp = self.client.post(path, **kw)
        assert len(self.flask_saw) == seen + 1, f"the fast path answered {path}"
        return resp


@pytest.fixture
def api(services, admin_key, make_agent) -> Watched:
    make_agent("demo", max_parallel_tasks=1, queue_limit=50)
    watched = Watched(services, admin_key)
    first = watched.flask("/api/agents/demo/task", json={"message": "authenticates the key"})
    assert first.status_code == 202, first.json
    return watched


def _rows(services: Services) -> list[Execution]:
    with services.Session() as session:
        return session.query(Execution).order_by(Execution.created_at).all()


def _accepted(execution_id: str, position: int | None) -> dict[str, Any]:
    """The 202 answer to a submission to `demo`, spelled out."""
    base = f"/api/agents/demo/executions/{execution_id}"
    return {
        "execution_id": execution_id,
        "status": "pending",
        "queue_position": position,
        "links": {
            "self": base,
            "stop": base + "/stop",
            "events": f"/api/executions/{execution_id}/events",
            "websocket": f"/ws/executions/{execution_id}",
        },
    }


def test_a_cached_key_submits_without_flask_and_stores_what_flask_would(api, services, admin_key):
    fast = api.fast("/api/agents/demo/task", json={"message": "second", "model": "m-1"})
    assert fast.status_code == 202 and fast.content_type == "application/json"
    assert fast.json == _accepted(fast.json["execution_id"], 1)
    assert fast.data.endswith(b"\n") and b": " not in fast.data, "compact, as jsonify"
    via_flask = api.flask("/api/agents/demo/task?via=flask", json={"message": "third"})
    assert via_flask.json == _accepted(via_flask.json["execution_id"], 2)
    rows = _rows(services)
    assert [r.message for r in rows] == ["authenticates the key", "second", "third"]
    second, third = rows[1], rows[2]
    assert (second.id, second.model, second.status) == (fast.json["execution_id"], "m-1", "pending")
    with services.Session() as session:
        who = authenticate(session, admin_key)
    for row in (second, third):
        assert (row.triggered_by, row.api_key_id) == ("manual", who.key_id)
        assert row.source == f"key:{who.name}"


@pytest.mark.parametrize(
    ("kw", "status", "field"),
    [
        ({"json": {"message": "hi", "extra": True}}, 422, "extra"),
        ({"json": {"message": ""}}, 422, "message"),
        ({"json": {"message": "a\x00b"}}, 422, "message"),
        ({"json": {"message": "\ud800"}}, 422, "message"),
        ({"json": {"message": "hi", "timeout_seconds": True}}, 422, "timeout_seconds"),
        ({"json": ["hi"]}, 422, "body"),
        ({"json": {"message": {"nested": [[[]]]}}}, 422, "message"),
        ({"data": b'{"message": "hi"', "content_type": "application/json"}, 422, "body"),
        ({"data": b'{"message": NaN}', "content_type": "application/json"}, 422, "body"),
        ({"data": b'{"message": "hi"}', "content_type": "text/plain"}, 415, None),
        ({"data": b"message=hi", "content_type": "application/x-www-form-urlencoded"}, 415, None),
        ({"data": b"", "content_type": "application/json"}, 422, "message"),
    ],
)
def test_a_refused_body_is_answered_by_flask_and_stores_nothing(api, services, kw, status, field):
    before = len(_rows(services))
    resp = api.flask("/api/agents/demo/task", **kw)
    assert resp.status_code == status, resp.json
    assert field is None or resp.json["error"]["field"] == field
    assert len(_rows(services)) == before


def test_requests_the_fast_path_does_not_serve_go_to_flask(api, services, make_agent):
    make_agent("hidden")
    api.flask("/api/agents/demo/task?x=1", json={"message": "a query string"})
    api.flask("/api/agents/demo/tasks", json={"tasks": [{"message": "bulk"}]})
    api.flask("/api/agents/demo/task/", json={"message": "another path"})
    assert api.flask("/api/agents/café/task", json={"message": "no such name"}).status_code == 404
    api.client.get("/api/agents/demo/task")  # another method: 405 from Flask
    with services.Session.begin() as session:
        scoped = create_key(session, "scoped", agents=["demo"])
    only_demo = Watched(services, scoped)
    assert only_demo.flask("/api/agents/demo/task", json={"message": "x"}).status_code == 202
    assert only_demo.fast("/api/agents/demo/task", json={"message": "x"}).status_code == 202
    hidden = only_demo.flask("/api/agents/hidden/task", json={"message": "x"})
    assert hidden.status_code == 404, "a scoped key learns nothing of other agents"
    token = Watched(services, new_execution_token())
    assert token.flask("/api/agents/demo/task", json={"message": "x"}).status_code == 401
    anonymous = api.client.post(
        "/api/agents/demo/task", json={"message": "x"}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    assert len(_rows(services)) == 5  # the fixture's, the query string's, the bulk one, 2 scoped


def test_wait_is_served_by_flask(services, admin_key, make_agent):
    make_agent("demo")
    services.settings = dataclasses.replace(services.settings, wait_max_seconds=0.2)
    api = Watched(services, admin_key)
    assert api.flask("/api/agents/demo/task", json={"message": "caches the key"}).status_code == 202
    resp = api.flask("/api/agents/demo/task", json={"message": "w", "wait": True})
    assert resp.status_code == 202 and resp.json["status"] == "pending", "no worker ran it"


def test_the_submissions_refusals_are_answered_as_flask_answers_them(api, services, make_agent):
    make_agent("tight", max_parallel_tasks=1, queue_limit=0, timeout_seconds=60)
    assert api.fast("/api/agents/tight/task", json={"message": "fits"}).status_code == 202
    cases = [
        ("/api/agents/tight/task", {"message": "full"}, 429),
        ("/api/agents/ghost/task", {"message": "nobody"}, 404),
        ("/api/agents/demo/task", {"message": "long", "timeout_seconds": 61 * 60}, 422),
        ("/api/agents/demo/task", {"message": "hi", "model": "a b"}, 422),
    ]
    before = len(_rows(services))
    for path, body, status in cases:
        fast = api.fast(path, json=body)
        flask = api.flask(path + "?via=flask", json=body)
        assert fast.status_code == flask.status_code == status
        assert fast.json == flask.json
        assert fast.headers.get("Retry-After") == flask.headers.get("Retry-After")
    assert len(_rows(services)) == before


def test_a_database_away_answers_503_with_retry_after(settings, services, admin_key):
    url = make_url(settings.database_url).set(port=free_port(), host="127.0.0.1")
    away = Services(dataclasses.replace(settings, database_url=url.render_as_string(False)))
    try:
        watched = Watched(away, admin_key)
        with services.Session() as session:  # as if it had authenticated a moment ago
            who = authenticate(session, admin_key)
        key_cache(watched.client.application).put(admin_key, who, time.monotonic())
        resp = watched.fast("/api/agents/demo/task", json={"message": "hi"})
        assert resp.status_code == 503 and resp.json["error"]["code"] == "unavailable"
        assert resp.headers["Retry-After"] == "1"
    finally:
        away.close()


def test_a_deleted_key_stops_submitting_within_the_cache_bound(services, make_agent):
    services.settings = dataclasses.replace(services.settings, key_cache_seconds=1.0)
    make_agent("demo")
    with services.Session.begin() as session:
        key = create_key(session, "doomed")
    api = Watched(services, key)
    assert api.flask("/api/agents/demo/task", json={"message": "1"}).status_code == 202
    assert api.fast("/api/agents/demo/task", json={"message": "2"}).status_code == 202
    with services.Session.begin() as session:
        session.query(ApiKey).filter(ApiKey.key_hash == hash_key(key)).delete()
    deleted_at = time.monotonic()

    def refused() -> bool:
        return api.post("/api/agents/demo/task", json={"message": "3"}).status_code == 401

    wait_for(refused, 5, 0.05, "the 401")
    assert time.monotonic() - deleted_at <= 1.5


def test_fast_answers_are_counted_by_route_and_status(api, make_agent):
    def counted(status: str) -> float:
        text = api.client.get("/metrics").get_data(as_text=True)
        pattern = (
            r'agx_http_requests_total\{method="POST",route="' + re.escape(ROUTE) + r'",'
            r'status="' + status + r'"\} (\S+)'
        )
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    accepted, missing = counted("202"), counted("404")
    for i in range(3):
        api.fast("/api/agents/demo/task", json={"message": f"m{i}"})
    api.fast("/api/agents/ghost/task", json={"message": "nobody"})
    assert counted("202") == accepted + 3 and counted("404") == missing + 1


def test_a_real_api_stores_concurrent_submissions_once_each(
    api_url, services, admin_key, make_agent
):
    """Through gunicorn (agx api), 8 keep-alive clients submitting at once: every submission
    answered 202 once and stored once, with its own id; a refusal is still Flask's JSON."""
    make_agent("demo", queue_limit=1000)
    parts = urlsplit(api_url)
    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
    answers: dict[str, Any] = {}

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        for i in range(25):
            message = f"client {k} task {i}"
            conn.request("POST", "/api/agents/demo/task", json.dumps({"message": message}), headers)
            resp = conn.getresponse()
            answers[message] = (resp.status, json.loads(resp.read()))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 200 and {status for status, _ in answers.values()} == {202}
    stored = {row.id: row.message for row in _rows(services)}
    assert len(stored) == 200
    assert {body["execution_id"]: m for m, (_, body) in answers.items()} == stored
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request("POST", "/api/agents/demo/task", json.dumps({"message": "a\x00b"}), headers)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 422 and body["error"]["field"] == "message"
    assert len(_rows(services)) == 200
