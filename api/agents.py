"""REST: agents, and submitting tasks to them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from api.context import (
    admin_only,
    agent_or_404,
    principal,
    require_admin,
    require_agent_visible,
    services,
)
from api.serialize import agent_dict, execution_dict, links
from api.validation import json_body
from api.waiting import wait_terminal
from producer import Task, submit_execution, submit_many
from producer.submit import MAX_BATCH, NewExecution, Submitted
from shared.agents import AgentPatch, AgentSpec, agent_values
from shared.apikeys import Principal
from shared.errors import Conflict
from shared.models import Agent, Execution
from shared.services import Services
from shared.states import ExecutionStatus, Trigger
from shared.store import agents

bp = Blueprint("agents", __name__, url_prefix="/api/agents")


class TaskRequest(BaseModel):
    """Body of POST /api/agents/{name}/task."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    model: str | None = None
    timeout_seconds: int | None = Field(None, ge=1)
    wait: bool = False


class BulkItem(BaseModel):
    """One task of POST /api/agents/{name}/tasks."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    model: str | None = None
    timeout_seconds: int | None = Field(None, ge=1)


class BulkRequest(BaseModel):
    """Body of POST /api/agents/{name}/tasks: up to 1,000 tasks, all accepted or none."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[BulkItem] = Field(min_length=1, max_length=MAX_BATCH)


@bp.get("")
def list_agents() -> Any:
    """List the agents the caller may see."""
    who = principal()
    with services().Session() as session:
        rows = agents.all_agents(session)
    items = [agent_dict(a, who.is_admin) for a in rows if who.may_see(a.name)]
    return jsonify({"items": items})


@bp.post("")
@admin_only
@json_body(AgentSpec)
def create_agent(body: AgentSpec) -> Any:
    """Create an agent (admin)."""
    exists = Conflict(f"agent '{body.name}' already exists; PATCH it instead")
    try:
        with services().Session.begin() as session:
            if agents.get(session, body.name) is not None:
                raise exists
            agent = Agent(name=body.name, **agent_values(body))
            session.add(agent)
            session.flush()
            data = agent_dict(agent)
    except IntegrityError:  # created by a concurrent request since the check
        raise exists from None
    return jsonify(data), 201


@bp.get("/<name>")
def get_agent(name: str) -> Any:
    """One agent."""
    who = require_agent_visible(name)
    with services().Session() as session:
        return jsonify(agent_dict(agent_or_404(session, name), who.is_admin))


@bp.patch("/<name>")
@admin_only
@json_body(AgentPatch)
def patch_agent(name: str, body: AgentPatch) -> Any:
    """Change some fields of an agent (admin)."""
    with services().Session.begin() as session:
        agent = agent_or_404(session, name, "update")
        for key, value in agent_values(body).items():
            setattr(agent, key, value)
        session.flush()
        data = agent_dict(agent)
    return jsonify(data)


@bp.delete("/<name>")
def delete_agent(name: str) -> Any:
    """Delete an agent and its history (admin); refused while it has live executions.

    The agent row is locked first: a submission that has not inserted yet then waits and
    finds no agent (404), one that has is counted here (409), so no accepted run is deleted.
    """
    require_admin()
    with services().Session.begin() as session:
        agent = agent_or_404(session, name, "update")
        live = agents.in_flight(session, name)
        if live:
            raise Conflict(
                f"agent '{name}' has {live} pending or running executions; stop them first"
            )
        session.delete(agent)
    return "", 204


@bp.post("/<name>/task")
@json_body(TaskRequest)
def submit_task(name: str, body: TaskRequest) -> Any:
    """Submit a task: 202 with the execution id, or the finished execution with `wait`.
    (Its 202 answers without `wait` usually come from api/fast.py, which calls `submit_one`.)"""
    who = require_agent_visible(name)
    svc = services()
    submitted = submit_one(svc, name, body, who)
    if not body.wait:
        return jsonify(accepted(submitted)), 202
    ended = wait_terminal(submitted.execution.id, svc.settings.wait_max_seconds)
    if ExecutionStatus(ended.status).terminal:
        return jsonify(execution_dict(ended, who)), 200
    return jsonify(accepted(submitted, ended)), 202


def submit_one(svc: Services, name: str, body: TaskRequest, who: Principal) -> Submitted:
    """Submit the task of a POST .../task body for the caller `who`."""
    return submit_execution(
        svc,
        name,
        body.message,
        model=body.model,
        timeout_seconds=body.timeout_seconds,
        triggered_by=Trigger.manual,
        source=f"key:{who.name}",
        api_key_id=who.key_id,
    )


def accepted(submitted: Submitted, now: Execution | None = None) -> dict[str, Any]:
    """The 202 answer to a submission (`now`: the execution as it stands after a `wait`)."""
    execution: Execution | NewExecution = now or submitted.execution
    return {
        "execution_id": execution.id,
        "status": execution.status,
        "queue_position": submitted.queue_position,
        "links": links(execution),
    }


@bp.post("/<name>/tasks")
@json_body(BulkRequest)
def submit_tasks(name: str, body: BulkRequest) -> Any:
    """Submit many tasks at once, all or none; 202 with their ids in the tasks' order."""
    who = require_agent_visible(name)
    tasks = [Task(t.message, t.model, t.timeout_seconds) for t in body.tasks]
    submitted = submit_many(
        services(),
        name,
        tasks,
        triggered_by=Trigger.manual,
        source=f"key:{who.name}",
        api_key_id=who.key_id,
    )
    return jsonify({"items": [accepted(s) for s in submitted]}), 202
