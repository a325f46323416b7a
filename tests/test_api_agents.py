"""REST: agents CRUD, auth and key scoping, bad input as 4xx naming the field."""

from __future__ import annotations

import pytest

from shared.models import Agent, Execution
from shared.store.keys import create_key

GOOD = {"name": "coder", "command": ["claude", "-p", "--output-format", "stream-json"]}


def _count(services, model):
    with services.Session() as session:
        return session.query(model).count()


def test_an_agent_can_be_created_read_patched_listed_and_deleted(client):
    created = client.post("/api/agents", json={**GOOD, "max_parallel_tasks": 5})
    assert created.status_code == 201, created.json
    assert created.json["max_parallel_tasks"] == 5 and created.json["timeout_seconds"] == 900
    assert created.json["queue_limit"] == 100 and created.json["created_at"].endswith("Z")
    assert client.post("/api/agents", json=GOOD).status_code == 409
    patched = client.patch("/api/agents/coder", json={"timeout_seconds": 60})
    assert patched.status_code == 200 and patched.json["timeout_seconds"] == 60
    assert patched.json["command"] == GOOD["command"]
    assert [a["name"] for a in client.get("/api/agents").json["items"]] == ["coder"]
    assert client.delete("/api/agents/coder").status_code == 204
    assert client.get("/api/agents/coder").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "name": "Bad Name!"}, "name"),
        ({**GOOD, "command": "claude -p; rm -rf /"}, "command"),
        ({**GOOD, "command": []}, "command"),
        ({**GOOD, "command": ["ok", "bad\x00arg"]}, "command"),
        ({**GOOD, "max_parallel_tasks": 0}, "max_parallel_tasks"),
        ({**GOOD, "timeout_seconds": "soon"}, "timeout_seconds"),
        ({**GOOD, "queue_limit": -1}, "queue_limit"),
        ({**GOOD, "output": "xml"}, "output"),
        ({**GOOD, "env": {"BAD NAME": "x"}}, "env"),
        ({**GOOD, "surprise": 1}, "surprise"),
        ({"command": ["x"]}, "name"),
    ],
)
def test_a_bad_agent_definition_is_refused_naming_the_field_and_stores_nothing(
    client, services, body, field
):
    resp = client.post("/api/agents", json=body)
    assert resp.status_code == 422, resp.json
    assert resp.json["error"]["field"].split(".")[0] == field
    assert field in resp.json["error"]["message"]
    assert _count(services, Agent) == 0


def test_non_json_and_non_object_bodies_are_4xx_not_500(client, services):
    assert (
        client.post("/api/agents", data="{nope", content_type="application/json").status_code == 422
    )
    assert client.post("/api/agents", json=[1, 2]).status_code == 422
    assert client.patch("/api/agents/none", json={"timeout_seconds": 5}).status_code == 404
    assert _count(services, Agent) == 0


def test_a_patch_cannot_null_a_required_field(client, make_agent):
    make_agent("demo")
    resp = client.patch("/api/agents/demo", json={"command": None})
    assert resp.status_code == 422 and resp.json["error"]["field"] == "command"


def test_requests_without_a_valid_key_are_401(client, services):
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
    ):
        resp = client.get("/api/agents", headers=headers)
        assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"
    resp = client.post(
        "/api/agents/x/task", json={"message": "hi"}, headers={"Authorization": "Bearer nope"}
    )
    assert resp.status_code == 401
    assert _count(services, Execution) == 0


def test_a_key_scoped_to_an_agent_sees_only_that_agent(client, services, make_agent):
    make_agent("mine")
    make_agent("theirs")
    with services.Session.begin() as session:
        key = create_key(session, "scoped", ["mine"])
    auth = {"Authorization": f"Bearer {key}"}
    assert [a["name"] for a in client.get("/api/agents", headers=auth).json["items"]] == ["mine"]
    assert client.get("/api/agents/theirs", headers=auth).status_code == 404
    assert (
        client.post("/api/agents/theirs/task", json={"message": "x"}, headers=auth).status_code
        == 404
    )
    assert client.post("/api/agents", json=GOOD, headers=auth).status_code == 403
    assert (
        client.post("/api/agents/mine/task", json={"message": "x"}, headers=auth).status_code == 202
    )
    client.post("/api/agents/theirs/task", json={"message": "y"})
    listed = client.get("/api/executions", headers=auth).json["items"]
    assert [e["agent_name"] for e in listed] == ["mine"]


def test_agents_apply_upserts_idempotently_and_says_what_changed(services, settings, tmp_path):
    from click.testing import CliRunner

    from agx.cli import main
    from tests.conftest import worker_env

    path = tmp_path / "agents.yaml"
    path.write_text(
        "agents:\n  - name: a1\n    command: [echo, hi]\n    output: text\n"
        "  - name: a2\n    command: [cat]\n    output: text\n"
    )
    runner = CliRunner(env=worker_env(settings))
    first = runner.invoke(main, ["agents", "apply", str(path)])
    assert first.exit_code == 0, first.output
    assert "created   a1" in first.output and "created   a2" in first.output
    again = runner.invoke(main, ["agents", "apply", str(path)])
    assert "unchanged a1" in again.output and "unchanged a2" in again.output
    path.write_text(path.read_text().replace("[cat]", "[cat, -]"))
    third = runner.invoke(main, ["agents", "apply", str(path)])
    assert "unchanged a1" in third.output and "updated   a2" in third.output
    path.write_text("agents:\n  - name: BAD\n    command: [x]\n")
    bad = runner.invoke(main, ["agents", "apply", str(path)])
    assert bad.exit_code != 0 and "agents[0].name" in bad.output
