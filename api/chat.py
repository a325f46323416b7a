"""REST: chat with an agent, Continue as Chat, and reading a conversation.

A conversation is a Claude session kept by the agent program. Its first turn is started
under a session id agx chooses (`--session-id`), later turns resume it (`--resume`). Turns
of one conversation are submitted under a lock and run one at a time, in order: a turn sent
while the one before it is in flight is held (pending, in no queue, holding no slot) until
that one ends, however it ends. A conversation belongs to its agent: a session id is only
resumed for the agent whose executions carry it, so no key can reach another agent's session.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.context import agent_or_404, require_agent_visible, services
from api.serialize import links, turn_dict
from api.validation import json_body
from producer import ChatTurn, Submitted, submit_execution
from shared.errors import Conflict, InvalidField, NotFound
from shared.states import AgentOutput, Trigger
from shared.store import executions

bp = Blueprint("chat", __name__, url_prefix="/api/agents")

#: What a session id is made of: it becomes an argv item, so it may not start with '-'.
SESSION_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


class ChatRequest(BaseModel):
    """Body of POST /api/agents/{name}/chat."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    session_id: str | None = Field(None, pattern=SESSION_ID)
    model: str | None = None


class ContinueRequest(BaseModel):
    """Body of POST /api/agents/{name}/executions/{id}/continue."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    model: str | None = None


@bp.post("/<name>/chat")
@json_body(ChatRequest)
def chat(name: str, body: ChatRequest) -> Any:
    """Send a message: a new conversation without `session_id`, the next turn with one."""
    resume = body.session_id is not None
    turn = ChatTurn(body.session_id or str(uuid.uuid4()), resume=resume)
    return _submit(name, body.message, body.model, turn, None)


@bp.post("/<name>/executions/<execution_id>/continue")
@json_body(ContinueRequest)
def continue_chat(name: str, execution_id: str, body: ContinueRequest) -> Any:
    """Continue as Chat: resume the session of a finished execution."""
    require_agent_visible(name)
    with services().Session() as session:
        original = executions.get(session, execution_id)
    if original is None or original.agent_name != name:
        raise NotFound(f"execution '{execution_id}' of agent '{name}' does not exist")
    if original.claude_session_id is None:
        raise Conflict(
            f"execution '{execution_id}' has no session id yet ({original.status}): it is "
            "recorded when the run ends, and runs that fail before starting have none"
        )
    turn = ChatTurn(original.claude_session_id, resume=True)
    return _submit(name, body.message, body.model, turn, original.id)


@bp.get("/<name>/chat/<session_id>")
def conversation(name: str, session_id: str) -> Any:
    """A conversation's turns, oldest first (the execution it was continued from included)."""
    who = require_agent_visible(name)
    if not re.fullmatch(SESSION_ID, session_id):
        raise InvalidField("session_id", "is not a session id")
    with services().Session() as session:
        turns = executions.conversation(session, name, session_id)
    if not turns:
        raise NotFound(f"agent '{name}' has no conversation '{session_id}'")
    return jsonify(
        {"agent": name, "session_id": session_id, "turns": [turn_dict(t, who) for t in turns]}
    )


def _submit(name: str, message: str, model: str | None, turn: ChatTurn, parent: str | None) -> Any:
    who = require_agent_visible(name)
    svc = services()
    with svc.Session() as session:
        agent = agent_or_404(session, name)
        if agent.output != AgentOutput.claude_stream_json.value:
            raise Conflict(
                f"agent '{name}' cannot keep a conversation: its output is '{agent.output}', "
                f"and only '{AgentOutput.claude_stream_json.value}' agents resume sessions"
            )
    submitted: Submitted = submit_execution(
        svc,
        name,
        message,
        model=model,
        triggered_by=Trigger.chat,
        source=f"key:{who.name}",
        parent_execution_id=parent,
        chat=turn,
        api_key_id=who.key_id,
    )
    execution = submitted.execution
    return jsonify(
        {
            "execution_id": execution.id,
            "session_id": turn.session_id,
            "status": execution.status,
            "queue_position": submitted.queue_position,
            "waiting_for": execution.held_for,
            "links": {
                **links(execution),
                "conversation": f"/api/agents/{name}/chat/" + turn.session_id,
            },
        }
    ), 202
