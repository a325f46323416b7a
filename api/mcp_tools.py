"""The MCP tools: agx's history, activity and task submission, as the caller may see them.

Each tool runs on a worker thread of the bridge's loop, inside an app context of the Flask app
that authenticated the request (the principal and the app travel in the WSGI environ). Every
failure is an MCP tool error with a message for the model (`is_error`), never a transport one.

Agent-to-agent calls: a call made with an execution token is a child of that execution
(`parent_execution_id`, `source` = the calling agent and execution). It is refused when the
callee is the caller itself, is already in the chain of calls that led to the caller (a
cycle), or would sit more than AGX_MCP_MAX_DEPTH calls below the chain's first run: so no run
waits for a slot that a run waiting for it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from flask import Flask
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from api.app import transient_error
from api.context import services
from api.serialize import activity_dict, execution_dict, links
from api.waiting import wait_terminal
from producer import submit_execution
from producer.submit import NewExecution
from shared.apikeys import Principal
from shared.errors import AgxError
from shared.models import Execution
from shared.states import ExecutionStatus, Trigger
from shared.store import activity, agents, executions

#: Where the /mcp view leaves the caller and the app for the tools, in the WSGI environ.
PRINCIPAL_KEY = "agx.principal"
APP_KEY = "agx.app"
T = TypeVar("T")


def register_tools(server: MCPServer) -> None:
    """Add agx's tools to an MCP server."""
    for tool in (
        list_recent_executions,
        get_execution_result,
        get_agent_activity_summary,
        run_agent_task,
    ):
        server.tool()(tool)


def list_recent_executions(
    name: str, ctx: Context, limit: Annotated[int, Field(ge=1, le=100)] = 10
) -> dict[str, Any]:
    """The agent's latest executions, newest first (status, message, response, error, cost)."""

    def work(who: Principal) -> dict[str, Any]:
        _visible_agent(who, name)
        with services().Session() as session:
            rows = executions.page(session, executions.Filters(agent=name), limit)
        return {"items": [execution_dict(row, who) for row in rows]}

    return _call(ctx, work)


def get_execution_result(id: str, ctx: Context) -> dict[str, Any]:
    """One execution's record: status, response or error, cost, timings."""

    def work(who: Principal) -> dict[str, Any]:
        with services().Session() as session:
            row = executions.get(session, id)
        if row is None or not who.may_see(row.agent_name):
            raise ToolError(f"execution '{id[:40]}' does not exist")
        return execution_dict(row, who)

    return _call(ctx, work)


def get_agent_activity_summary(name: str, ctx: Context) -> dict[str, Any]:
    """The agent's activity over the last 24 h and 7 d (counts by status and trigger, success
    rate, cost, durations) and what runs or waits now."""

    def work(who: Principal) -> dict[str, Any]:
        _visible_agent(who, name)
        with services().Session() as session:
            return activity_dict(activity.summary(session, name))

    return _call(ctx, work)


def run_agent_task(
    name: str,
    message: str,
    ctx: Context,
    model: str | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Submit a task to an agent: its execution id and status, or with wait=true the finished
    execution (waiting at most as long as the REST API's wait; then its current status)."""

    def work(who: Principal) -> dict[str, Any]:
        _visible_agent(who, name)
        source = f"key:{who.name}"
        if who.execution_id is not None:
            source = f"agent:{_check_chain(who.execution_id, name)}/{who.execution_id}"
        svc = services()
        submitted = submit_execution(
            svc,
            name,
            message,
            model=model,
            triggered_by=Trigger.mcp,
            source=source,
            parent_execution_id=who.execution_id,
            api_key_id=who.key_id,
        )
        execution: Execution | NewExecution = submitted.execution
        if wait:
            ended = wait_terminal(execution.id, svc.settings.wait_max_seconds)
            if ExecutionStatus(ended.status).terminal:
                return execution_dict(ended, who)
            execution = ended
        return {
            "execution_id": execution.id,
            "status": execution.status,
            "queue_position": submitted.queue_position,
            "links": links(execution),
        }

    return _call(ctx, work)


def _check_chain(caller_id: str, callee: str) -> str:
    """Refuse a self-call, a cycle, or a chain over AGX_MCP_MAX_DEPTH; returns the caller's
    agent. The chain is named in the refusal, first run first."""
    max_depth = services().settings.mcp_max_depth
    with services().Session() as session:
        chain = executions.call_chain(session, caller_id, max_depth + 1)
    if not chain:
        raise ToolError("the calling execution no longer exists")
    caller = chain[0][1]
    path = " -> ".join([*(f"{agent} ({eid})" for eid, agent in reversed(chain)), callee])
    if callee == caller:
        raise ToolError(f"refused: agent '{callee}' may not call itself (chain: {path})")
    if any(agent == callee for _, agent in chain):
        raise ToolError(f"refused: '{callee}' is already in this call chain, a cycle: {path}")
    if len(chain) > max_depth:
        raise ToolError(
            f"refused: this call would be {len(chain)} nested calls below the first run, over"
            f" the limit of {max_depth} (AGX_MCP_MAX_DEPTH); chain: {path}"
        )
    return caller


def _visible_agent(who: Principal, name: str) -> None:
    """Refuse an agent that does not exist or that the caller may not see (alike)."""
    if who.may_see(name):
        with services().Session() as session:
            if agents.get(session, name) is not None:
                return
    raise ToolError(f"agent '{name[:64]}' does not exist")


def _call(ctx: Context, work: Callable[[Principal], T]) -> T:
    """Run a tool's work as the authenticated caller, in the app's context; agx's errors and
    outages become tool errors with their message."""
    environ = ctx.request_context.request.scope["wsgi_environ"]  # type: ignore[union-attr]
    app: Flask = environ[APP_KEY]
    with app.app_context():
        try:
            return work(environ[PRINCIPAL_KEY])
        except AgxError as exc:
            raise ToolError(exc.message) from exc
        except Exception as exc:
            transient = transient_error(exc)
            if transient is None:
                raise
            raise ToolError(transient[1]) from exc
