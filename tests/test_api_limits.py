"""Values that must not overflow a column, and what a scoped key is shown of others' work."""

from __future__ import annotations

import base64

import pytest
from click.testing import CliRunner

from shared.apikeys import hash_key
from shared.models import Agent, ApiKey, Execution
from shared.store.keys import create_key
from tests.conftest import app_client, worker_env

GOOD = {"name": "pricey", "command": ["x"]}


@pytest.mark.parametrize("price", [1e13, "1e12", 10**15, "NaN", "Infinity", -1])
def test_a_price_that_does_not_fit_is_422_on_create_and_patch(client, services, price):
    created = client.post("/api/agents", json={**GOOD, "price": price})
    assert created.status_code == 422 and created.json["error"]["field"] == "price", created.json
    assert client.post("/api/agents", json={**GOOD, "price": "999999999999.5"}).status_code == 201
    patched = client.patch("/api/agents/pricey", json={"price": price})
    assert patched.status_code == 422 and patched.json["error"]["field"] == "price"
    with services.Session() as session:
        assert str(session.get(Agent, "pricey").price) == "999999999999.500000"


def test_a_key_with_a_very_long_name_still_submits(client, services, make_agent):
    make_agent("demo")
    key = "agx_long-named-key-made-before-names-were-bounded"
    with services.Session.begin() as session:  # stored before names were bounded
        session.add(ApiKey(name="k" * 198, key_hash=hash_key(key), role="agent", agents=["demo"]))
    resp = app_client(services, key).post("/api/agents/demo/task", json={"message": "hi"})
    assert resp.status_code == 202, resp.json
    with services.Session() as session:
        assert len(session.get(Execution, resp.json["execution_id"]).source) == 200


def test_the_cli_bounds_key_names_where_they_are_created(settings, services):
    from agx.cli import main

    runner = CliRunner(env=worker_env(settings))
    refused = runner.invoke(main, ["keys", "create", "k" * 65])
    assert refused.exit_code != 0 and "1-64" in refused.output
    assert runner.invoke(main, ["keys", "create", "ci-bot@team"]).exit_code == 0


def test_a_scoped_key_does_not_see_other_keys_names_or_worker_ids(client, services, make_agent):
    make_agent("shared")
    with services.Session.begin() as session:
        key = create_key(session, "mine", ["shared"])
    scoped = app_client(services, key)
    theirs = client.post("/api/agents/shared/task", json={"message": "admin's"}).json
    ours = scoped.post("/api/agents/shared/task", json={"message": "mine"}).json
    with services.Session.begin() as session:
        session.get(Execution, theirs["execution_id"]).worker_id = "host-7:1234:99"
    shown = {e["id"]: e for e in scoped.get("/api/executions").json["items"]}
    assert shown[theirs["execution_id"]]["source"] == "key"
    assert shown[ours["execution_id"]]["source"] == "key:mine"
    assert shown[theirs["execution_id"]]["worker_id"] is None
    admin_view = client.get(f"/api/agents/shared/executions/{theirs['execution_id']}").json
    assert (
        admin_view["source"].startswith("key:admin") and admin_view["worker_id"] == "host-7:1234:99"
    )


def test_links_name_only_routes_that_exist(client, make_agent):
    make_agent("demo")
    links = client.post("/api/agents/demo/task", json={"message": "hi"}).json["links"]
    for name, path in links.items():
        if name in ("events", "websocket"):
            continue
        method = client.post if name == "stop" else client.get
        assert method(path).status_code < 400, (name, path)


def test_a_cursor_holding_a_nul_or_foreign_id_is_422(client):
    for raw in ("2026-01-01T00:00:00+00:00|a\x00b", "2026-01-01T00:00:00+00:00|'; --"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        resp = client.get("/api/executions", query_string={"cursor": cursor})
        assert resp.status_code == 422 and resp.json["error"]["field"] == "cursor"


def test_a_scoped_key_gets_403_on_admin_calls_whatever_the_body(client, services, make_agent):
    make_agent("alpha")
    with services.Session.begin() as session:
        key = create_key(session, "scoped", ["alpha"])
    scoped = app_client(services, key)
    assert scoped.post("/api/agents", json={"name": 5}).status_code == 403
    assert scoped.patch("/api/agents/alpha", json={"bogus": 1}).status_code == 403
