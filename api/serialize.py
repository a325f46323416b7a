"""How executions look in JSON."""

from __future__ import annotations

from typing import Any

from shared.apikeys import Principal
from shared.models import Execution
from shared.timefmt import iso

_TIMES = (
    "created_at",
    "queued_at",
    "started_at",
    "completed_at",
    "heartbeat_at",
    "cancel_requested_at",
    "scheduled_for",
)
_PLAIN = (
    "id",
    "agent_name",
    "status",
    "triggered_by",
    "message",
    "model",
    "model_used",
    "response",
    "error",
    "input_tokens",
    "output_tokens",
    "num_turns",
    "claude_session_id",
    "duration_ms",
    "schedule_id",
    "parent_execution_id",
    "source",
    "attempt",
    "worker_id",
    "exit_code",
    "timeout_seconds",
)


def links(execution: Execution) -> dict[str, str]:
    """Where to find this execution and act on it (routes that exist)."""
    base = f"/api/agents/{execution.agent_name}/executions/{execution.id}"
    return {
        "self": base,
        "stop": base + "/stop",
        "events": f"/api/executions/{execution.id}/events",
        "websocket": f"/ws/executions/{execution.id}",
    }


def execution_dict(
    execution: Execution,
    viewer: Principal,
    queue_position: int | None = None,
    transcript: str | None = None,
) -> dict[str, Any]:
    """The whole record (transcript only when given), as much of it as `viewer` may see."""
    data: dict[str, Any] = {name: getattr(execution, name) for name in _PLAIN}
    if not viewer.is_admin:
        data["worker_id"] = None  # hosts and pids are the operators' business
        data["source"] = _source_for(viewer, execution.source)
    data.update({name: iso(getattr(execution, name)) for name in _TIMES})
    data["cost"] = None if execution.cost is None else float(execution.cost)
    data["queue_position"] = queue_position
    data["links"] = links(execution)
    if transcript is not None:
        data["transcript"] = transcript
    return data


def _source_for(viewer: Principal, source: str | None) -> str | None:
    """Another key's name is not shown to a scoped key: only that a key asked."""
    if source and source.startswith("key:") and source != f"key:{viewer.name}":
        return "key"
    return source
