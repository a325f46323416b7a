"""Pages: the agents, and an agent's Tasks, Chat and Schedules tabs (and Make Repeatable)."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import available_timezones

from flask import redirect, render_template, request
from sqlalchemy.orm import Session

from api.chat import SESSION_ID
from api.context import agent_or_404, require_agent_visible, services
from api.executions import ListQuery, page_of
from api.pages.base import bp
from api.pages.executions import visible_agents
from api.serialize import agent_dict, execution_dict, schedule_dict, turn_dict
from shared.errors import NotFound
from shared.models import Agent
from shared.states import AgentOutput, Overlap
from shared.store import activity, executions, schedules

HISTORY_SIZE = 30  #: executions shown on the Tasks tab
FIRES_SHOWN = 10  #: latest fires shown per schedule
#: Offered in the model select besides the agent's default (any name may be typed via the API).
MODELS = ("sonnet", "opus", "haiku")


@bp.get("/agents")
def agent_list() -> Any:
    """The agents the key may see: how busy each is, and its last execution."""
    with services().Session() as session:
        rows = [_summary(session, name) for name in visible_agents()]
    return render_template("agents.html", agents=rows)


def _summary(session: Session, name: str) -> dict[str, Any]:
    agent = agent_or_404(session, name)
    now = activity.summary(session, name)
    return {
        "name": name,
        "description": agent.description,
        "running": now.running_now,
        "capacity": agent.max_parallel_tasks,
        "waiting": now.waiting_now,
        "last": now.last_execution,
    }


@bp.get("/agents/<name>")
def agent_home(name: str) -> Any:
    """An agent opens on its Tasks tab."""
    require_agent_visible(name)
    return redirect(f"/agents/{name}/tasks")


def _agent(name: str) -> tuple[Agent, dict[str, Any]]:
    """The agent (404 page when missing or not visible) and its summary for the header."""
    who = require_agent_visible(name)
    with services().Session() as session:
        agent = agent_or_404(session, name)
        return agent, {**_summary(session, name), **agent_dict(agent, who.is_admin)}


@bp.get("/agents/<name>/tasks")
def agent_tasks(name: str) -> Any:
    """Send a task; the agent's history, running ones live."""
    agent, info = _agent(name)
    page = page_of(ListQuery(agent=name, limit=HISTORY_SIZE))
    return render_template(
        "agent_tasks.html", agent=info, tab="tasks", page=page, models=_models(agent)
    )


def _models(agent: Agent) -> list[str]:
    return [m for m in MODELS if m != agent.default_model]


@bp.get("/agents/<name>/chat")
def agent_chat(name: str) -> Any:
    """A conversation over one session (`?session=`), or Continue as Chat (`?continue=`)."""
    agent, info = _agent(name)
    who = require_agent_visible(name)
    session_id = request.args.get("session", "")
    origin_id = request.args.get("continue", "")
    turns: list[dict[str, Any]] = []
    with services().Session() as session:
        if origin_id:
            origin = executions.get(session, origin_id[:64])
            if origin is None or origin.agent_name != name:
                raise NotFound(f"execution '{origin_id[:64]}' of agent '{name}' does not exist")
            turns = [turn_dict(origin, who)]
            session_id = origin.claude_session_id or ""
        elif session_id and re.fullmatch(SESSION_ID, session_id):
            turns = [turn_dict(t, who) for t in executions.conversation(session, name, session_id)]
    return render_template(
        "agent_chat.html",
        agent=info,
        tab="chat",
        turns=turns,
        session_id=session_id if turns else "",
        continue_id=origin_id if turns and origin_id else "",
        can_chat=agent.output == AgentOutput.claude_stream_json.value,
        models=_models(agent),
    )


@bp.get("/agents/<name>/schedules")
def agent_schedules(name: str) -> Any:
    """The agent's schedules, their next run and their latest fires."""
    _, info = _agent(name)
    with services().Session() as session:
        rows = [
            schedule_dict(s, schedules.recent(session, s.id, FIRES_SHOWN))
            for s in schedules.all_schedules(session, name)
        ]
    return render_template("agent_schedules.html", agent=info, tab="schedules", schedules=rows)


@bp.get("/agents/<name>/schedules/new")
def new_schedule(name: str) -> Any:
    """Make Repeatable (`?from=` an execution) or a new schedule: message, model, cron, zone."""
    _, info = _agent(name)
    who = require_agent_visible(name)
    source = None
    from_id = request.args.get("from", "")
    if from_id:
        with services().Session() as session:
            row = executions.get(session, from_id[:64])
        if row is None or row.agent_name != name:
            raise NotFound(f"execution '{from_id[:64]}' of agent '{name}' does not exist")
        source = execution_dict(row, who)
    return render_template(
        "schedule_new.html",
        agent=info,
        tab="schedules",
        source=source,
        zones=sorted(available_timezones()),
        overlaps=[o.value for o in Overlap],
    )
