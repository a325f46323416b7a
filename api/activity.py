"""REST: an agent's activity summary."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.context import agent_or_404, require_agent_visible, services
from api.serialize import activity_dict
from shared.store import activity

bp = Blueprint("activity", __name__, url_prefix="/api/agents")


@bp.get("/<name>/activity")
def agent_activity(name: str) -> Any:
    """The agent's activity over the last 24 h and 7 d, and what runs now."""
    require_agent_visible(name)
    with services().Session() as session:
        agent_or_404(session, name)
        summary = activity.summary(session, name)
    return jsonify(activity_dict(summary))
