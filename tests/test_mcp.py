"""MCP at /mcp through the official client, over real HTTP against `agx api` (gunicorn, two
processes): the tools, authentication by key and by execution token, scoped keys, the
call-chain refusals, and a demo agent calling another agent with its own token."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from agx.embedded import free_port
from shared.apikeys import hash_key, new_execution_token
from shared.models import ApiKey, Execution, Transcript, new_id, utcnow
from shared.store.executions import Claimed
from shared.store.keys import create_key
from tests.conftest import wait_for, worker_env
from workers.executor import AgentConfig, Job, _agx_env, _argv, mcp_config_file

TOOLS = {
    "list_recent_executions",
    "get_execution_result",
    "get_agent_activity_summary",
    "run_agent_task",
}


def mcp(url: str, token: str, tool: str | None = None, **arguments: Any) -> Any:
    """One MCP session with the official client: the tool list, or one tool's result."""

    async def session() -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=120.0)) as http,
            streamable_http_client(url + "/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            if tool is None:
                return await client.list_tools()
            return await client.call_tool(tool, arguments)

    return anyio.run(session)


def error_text(result: Any) -> str:
    """The message of a tool error (and a failure if the call did not fail)."""
    assert result.is_error, result
    return " ".join(item.text for item in result.content)


@pytest.fixture
def api(processes, settings) -> str:
    """`agx api` with two gunicorn processes on a free port."""
    port = free_port()
    processes.start("api", "--port", str(port), "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _status(url + "/healthz") == 200, 60, 0.1, "the API server")
    return url


@pytest.fixture
def workers(processes, settings, api) -> None:
    """A worker pool whose agents call the API above (AGX_API_URL)."""
    env = {**worker_env(settings), "AGX_API_URL": api}
    processes.start("workers", "--processes", "1", "--threads", "4", env=env)


def _status(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _post_mcp(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    request = urllib.request.Request(
        url + "/mcp",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **headers,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _key(services, name: str, agents: list[str] | None = None) -> tuple[str, str]:
    """A new key: (plain key, its id)."""
    with services.Session.begin() as session:
        key = create_key(session, f"{name}-{uuid.uuid4().hex[:6]}", agents)
    with services.Session() as session:
        row = session.query(ApiKey).filter(ApiKey.key_hash == hash_key(key)).one()
        return key, row.id


def _running(
    services,
    agent: str,
    key_id: str | None,
    parent: str | None = None,
    status: str = "running",
    trigger: str | None = None,
) -> tuple[str, str]:
    """A stored execution with an execution token, as a worker's claim leaves it (a child of
    `parent` through MCP when given): (its id, its token)."""
    token = new_execution_token()
    row = Execution(
        id=new_id(),
        agent_name=agent,
        status=status,
        triggered_by=trigger or ("mcp" if parent else "manual"),
        message="seeded",
        parent_execution_id=parent,
        api_key_id=key_id,
        token_hash=hash_key(token),
        created_at=utcnow(),
        attempt=1,
    )
    with services.Session.begin() as session:
        session.add(row)
    return row.id, token


def _key_name(services, key_id: str) -> str:
    with services.Session() as session:
        return str(session.get(ApiKey, key_id).name)


def _row(services, execution_id: str) -> Execution:
    with services.Session() as session:
        found = session.get(Execution, execution_id)
        assert found is not None
        return found


def test_the_official_client_lists_and_calls_every_tool_on_two_api_processes(
    services, make_agent, api, workers
):
    make_agent("a")
    key, key_id = _key(services, "ops")
    key_name = _key_name(services, key_id)
    for _ in range(4):  # new connections: both gunicorn processes answer (stateless)
        assert {tool.name for tool in mcp(api, key).tools} == TOOLS

    done = mcp(api, key, "run_agent_task", name="a", message="hi there", wait=True)
    assert not done.is_error, done
    assert done.structured_content["status"] == "completed"
    assert done.structured_content["response"] == "demo: hi there"
    run_id = done.structured_content["id"]
    row = _row(services, run_id)
    assert (row.triggered_by, row.source, row.api_key_id) == ("mcp", f"key:{key_name}", key_id)
    assert row.parent_execution_id is None

    queued = mcp(api, key, "run_agent_task", name="a", message="sleep=0.2 later")
    assert queued.structured_content["status"] in ("pending", "running")
    later_id = queued.structured_content["execution_id"]

    recent = mcp(api, key, "list_recent_executions", name="a", limit=5)
    assert [item["id"] for item in recent.structured_content["items"]] == [later_id, run_id]
    one = mcp(api, key, "get_execution_result", id=run_id)
    assert one.structured_content["response"] == "demo: hi there"
    summary = mcp(api, key, "get_agent_activity_summary", name="a").structured_content
    assert summary["windows"]["24h"]["total"] == 2
    assert summary["windows"]["24h"]["by_trigger"]["mcp"] == 2

    assert "does not exist" in error_text(mcp(api, key, "get_execution_result", id="nope"))
    assert "does not exist" in error_text(mcp(api, key, "list_recent_executions", name="zz"))
    assert "message" in error_text(mcp(api, key, "run_agent_task", name="a", message=" "))
    assert "limit" in error_text(mcp(api, key, "list_recent_executions", name="a", limit=0))


def test_no_key_or_a_wrong_one_is_401_with_www_authenticate_and_a_foreign_host_421(
    services, make_agent, api
):
    key, _ = _key(services, "ops")
    for headers in ({}, {"Authorization": "Bearer agx_wrong"}, {"Authorization": "Basic x"}):
        status, sent, body = _post_mcp(api, headers)
        assert status == 401
        assert sent["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(body)["error"]["code"] == "unauthorized"
    status, _, body = _post_mcp(api, {"Authorization": f"Bearer {key}"})
    assert status == 200 and b"run_agent_task" in body
    status, _, _ = _post_mcp(api, {"Authorization": f"Bearer {key}", "Host": "evil.example"})
    assert status == 421  # DNS rebinding: only AGX_ALLOWED_HOSTS


def test_a_scoped_key_reaches_only_its_agents(services, make_agent, api):
    make_agent("mine")
    make_agent("theirs")
    scoped, _ = _key(services, "scoped", ["mine"])
    other_run, _ = _running(services, "theirs", None)

    for tool, args in (
        ("list_recent_executions", {"name": "theirs"}),
        ("get_agent_activity_summary", {"name": "theirs"}),
        ("run_agent_task", {"name": "theirs", "message": "hi"}),
        ("get_execution_result", {"id": other_run}),
    ):
        assert "does not exist" in error_text(mcp(api, scoped, tool, **args)), tool
    assert not mcp(api, scoped, "get_agent_activity_summary", name="mine").is_error
    accepted = mcp(api, scoped, "run_agent_task", name="mine", message="hi")
    assert accepted.structured_content["status"] == "pending"


def test_an_execution_token_acts_for_its_running_execution_and_its_key(services, make_agent, api):
    make_agent("a")
    make_agent("b")
    key, key_id = _key(services, "ops", ["a", "b"])
    running, token = _running(services, "a", key_id)
    auth = {"Authorization": f"Bearer {token}"}
    assert not mcp(api, token, "list_recent_executions", name="b").is_error
    assert _status(api + "/api/agents/b/executions", auth) == 200  # reads, as its key may
    assert _status(api + f"/api/agents/a/executions/{running}/stop", auth, "POST") == 403

    _, finished = _running(services, "a", key_id, status="completed")
    assert _post_mcp(api, {"Authorization": f"Bearer {finished}"})[0] == 401

    gone_key, gone_id = _key(services, "gone")
    _, orphan = _running(services, "a", gone_id)
    with services.Session.begin() as session:
        session.delete(session.get(ApiKey, gone_id))
    assert _post_mcp(api, {"Authorization": f"Bearer {orphan}"})[0] == 401

    _, unkeyed = _running(services, "a", None)  # a schedule's run: its own agent only
    assert not mcp(api, unkeyed, "list_recent_executions", name="a").is_error
    assert "does not exist" in error_text(mcp(api, unkeyed, "list_recent_executions", name="b"))
    assert "itself" in error_text(mcp(api, unkeyed, "run_agent_task", name="a", message="x"))

    _, paid = _running(services, "a", None, trigger="paid")  # a stranger paid for this run
    refused = error_text(mcp(api, paid, "list_recent_executions", name="a"))
    assert "does not exist" in refused, "other payers' tasks stay unseen"
    assert _status(api + "/api/agents/a/executions", {"Authorization": f"Bearer {paid}"}) == 404


def test_self_calls_cycles_and_deep_chains_are_refused_naming_the_chain(services, make_agent, api):
    for name in "abcde":
        make_agent(name)
    key, key_id = _key(services, "ops")
    root, root_token = _running(services, "a", key_id)
    refused = error_text(mcp(api, root_token, "run_agent_task", name="a", message="x"))
    assert "may not call itself" in refused and f"a ({root}) -> a" in refused

    b_run, b_token = _running(services, "b", key_id, parent=root)
    refused = error_text(mcp(api, b_token, "run_agent_task", name="a", message="x"))
    assert "cycle" in refused and f"a ({root}) -> b ({b_run}) -> a" in refused

    c_run, _ = _running(services, "c", key_id, parent=b_run)
    d_run, d_token = _running(services, "d", key_id, parent=c_run)  # 3 calls below a
    refused = error_text(mcp(api, d_token, "run_agent_task", name="e", message="x"))
    assert "AGX_MCP_MAX_DEPTH" in refused and f"c ({c_run}) -> d ({d_run}) -> e" in refused

    child = mcp(api, b_token, "run_agent_task", name="c", message="x").structured_content
    row = _row(services, child["execution_id"])  # 2 calls below a: allowed
    assert (row.triggered_by, row.parent_execution_id) == ("mcp", b_run)
    assert (row.source, row.api_key_id) == (f"agent:b/{b_run}", key_id)


def _task(api: str, key: str, agent: str, message: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{api}/api/agents/{agent}/task",
        data=json.dumps({"message": message, "wait": True}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


def test_a_demo_agent_runs_another_through_mcp_with_its_execution_token(
    services, make_agent, api, workers
):
    make_agent("a")
    make_agent("b")
    key, key_id = _key(services, "ops")
    caller = _task(api, key, "a", "call=b hello")
    assert caller["status"] == "completed", caller
    assert caller["response"] == "demo: call=b hello [call b: completed: demo: hello]"

    with services.Session() as session:
        callee = session.query(Execution).filter(Execution.agent_name == "b").one()
    assert callee.triggered_by == "mcp" and callee.parent_execution_id == caller["id"]
    assert callee.source == f"agent:a/{caller['id']}" and callee.api_key_id == key_id
    assert _post_mcp(api, {"Authorization": "Bearer agxe_x"})[0] == 401


def test_a_cycle_between_real_runs_is_refused_in_the_callers_reply(
    services, make_agent, api, workers
):
    make_agent("a")
    make_agent("b")
    key, _ = _key(services, "ops")
    caller = _task(api, key, "a", "call=b call=a hi")
    assert caller["status"] == "completed", caller
    assert "[call b: completed: demo: call=a hi [call a: error:" in caller["response"]
    assert "cycle" in caller["response"]


def _job(mcp: bool) -> Job:
    agent = AgentConfig(
        "a",
        (sys.executable, "-m", "agx.demo_agent"),
        "claude-stream-json",
        None,
        {"X": "1"},
        1,
        60,
        mcp=mcp,
    )
    fields = {"attempt": 1, "message": "hi", "triggered_by": "manual", "created_at": utcnow()}
    claimed = Claimed(**{name: fields.get(name) for name in Claimed._fields})
    return Job.of("E1", agent, claimed, "agxe_token")


def test_a_claude_shaped_agent_with_mcp_gets_agx_as_an_mcp_server_and_every_run_its_env():
    with mcp_config_file(_job(mcp=True), "http://h:1") as path:
        assert path is not None
        argv = _argv(_job(mcp=True), path)
        assert argv[argv.index("--mcp-config") + 1] == path
        assert not any("agxe_token" in arg for arg in argv), "no token in the process list"
        assert os.stat(path).st_mode & 0o777 == 0o600
        with open(path) as config_file:
            config = json.load(config_file)
    assert not os.path.exists(path), "removed after the run"
    assert config == {
        "mcpServers": {
            "agx": {
                "type": "http",
                "url": "http://h:1/mcp",
                "headers": {"Authorization": "Bearer agxe_token"},
            }
        }
    }
    with mcp_config_file(_job(mcp=False), "http://h:1") as none:
        assert none is None and "--mcp-config" not in _argv(_job(mcp=False), none)
    assert _agx_env(_job(mcp=False), "http://h:1") == {
        "AGX_API_URL": "http://h:1",
        "X": "1",
        "AGX_EXECUTION_ID": "E1",
        "AGX_EXECUTION_TOKEN": "agxe_token",
    }


def test_the_token_reaches_the_agent_and_never_its_transcript(services, make_agent, api, workers):
    leak = "import os; print(os.environ['AGX_EXECUTION_TOKEN'], os.environ['AGX_EXECUTION_ID'])"
    make_agent("leaky", command=[sys.executable, "-c", leak], output="text")
    key, _ = _key(services, "ops")
    run = _task(api, key, "leaky", "hi")
    assert run["status"] == "completed", run
    with services.Session() as session:
        row = session.get(Execution, run["id"])
        transcript = session.query(Transcript).filter_by(execution_id=run["id"]).one().content
    assert row.token_hash is None, "the token died with its run"
    assert transcript == f"[REDACTED] {run['id']}"


def test_mcp_is_an_agent_setting_that_must_be_a_boolean(client, make_agent):
    make_agent("a")
    assert client.get("/api/agents/a").json["mcp"] is False
    assert client.patch("/api/agents/a", json={"mcp": True}).json["mcp"] is True
    for bad in ("yes", 1, None):
        answer = client.patch("/api/agents/a", json={"mcp": bad})
        assert answer.status_code == 422 and answer.json["error"]["field"] == "mcp", bad


def test_a_scoped_key_is_not_told_which_unseen_agent_called():
    from api.serialize import execution_dict
    from shared.apikeys import Principal

    row = Execution(id="E2", agent_name="b", status="pending", message="m", source="agent:a/E1")
    assert execution_dict(row, Principal("k", "agent", ("b",)))["source"] == "agent"
    assert execution_dict(row, Principal("k", "agent", ("a", "b")))["source"] == "agent:a/E1"
    assert execution_dict(row, Principal("admin", "admin"))["source"] == "agent:a/E1"
