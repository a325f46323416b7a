"""How agents, executions, schedules and their fires look in JSON."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from producer.submit import NewExecution
from scheduler import FireTimes
from shared.apikeys import Principal
from shared.models import Agent, Execution, Schedule, ScheduleFire, utcnow
from shared.store.activity import Activity, Window
from shared.timefmt import iso

MASKED = "********"  #: what a non-admin key sees instead of an env value

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
    "chat_session_id",
    "duration_ms",
    "schedule_id",
    "parent_execution_id",
    "source",
    "attempt",
    "worker_id",
    "exit_code",
    "timeout_seconds",
)


def links(execution: Execution | NewExecution) -> dict[str, str]:
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


def turn_dict(execution: Execution, viewer: Principal) -> dict[str, Any]:
    """One turn of a conversation: the message, the reply and how the run went."""
    full = execution_dict(execution, viewer)
    keep = ("id", "message", "response", "status", "error", "cost", "triggered_by")
    turn = {name: full[name] for name in keep}
    turn.update(
        parent_execution_id=execution.parent_execution_id,
        waiting_for=execution.held_for,
        created_at=full["created_at"],
        completed_at=full["completed_at"],
        links=full["links"],
    )
    return turn


def _source_for(viewer: Principal, source: str | None) -> str | None:
    """Another key's name is not shown to a scoped key, only that a key asked; nor a calling
    run of an agent it may not see (`agent:NAME/ID`), only that an agent asked."""
    if source and source.startswith("key:") and source != f"key:{viewer.name}":
        return "key"
    if source and source.startswith("agent:"):
        caller = source.removeprefix("agent:").split("/", 1)[0]
        return source if viewer.may_see(caller) else "agent"
    return source


def agent_dict(agent: Agent, reveal_env: bool = True) -> dict[str, Any]:
    """An agent as the API shows it; env values are write-only unless `reveal_env` (admins)."""
    env = agent.env if reveal_env else {name: MASKED for name in agent.env or {}}
    return {
        "name": agent.name,
        "command": agent.command,
        "output": agent.output,
        "default_model": agent.default_model,
        "max_parallel_tasks": agent.max_parallel_tasks,
        "timeout_seconds": agent.timeout_seconds,
        "queue_limit": agent.queue_limit,
        "workdir": agent.workdir,
        "env": env,
        "price": None if agent.price is None else str(agent.price),
        "description": agent.description,
        "mcp": agent.mcp,
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
    }


def next_run(schedule: Schedule) -> datetime | None:
    """When an enabled schedule fires next, from now (None when paused)."""
    if not schedule.enabled:
        return None
    try:
        return FireTimes.of(schedule.cron, schedule.timezone, allow_seconds=True).next_after(
            utcnow()
        )
    except ValueError:
        return None


_SCHEDULE_FIELDS = (
    "id",
    "agent_name",
    "name",
    "cron",
    "timezone",
    "message",
    "model",
    "enabled",
    "overlap",
    "misfire_grace_seconds",
    "created_from_execution_id",
)


def schedule_dict(schedule: Schedule, history: list[ScheduleFire] | None = None) -> dict[str, Any]:
    """A schedule as the API shows it (with its latest fires when given)."""
    data: dict[str, Any] = {name: getattr(schedule, name) for name in _SCHEDULE_FIELDS}
    data.update(
        next_run_at=iso(next_run(schedule)),
        last_run_at=iso(schedule.last_run_at),
        created_at=iso(schedule.created_at),
        updated_at=iso(schedule.updated_at),
        links={
            "self": f"/api/schedules/{schedule.id}",
            "agent": f"/api/agents/{schedule.agent_name}",
            "fires": f"/api/schedules/{schedule.id}/fires",
        },
    )
    if history is not None:
        data["history"] = [fire_dict(f) for f in history]
    return data


def fire_dict(fire: ScheduleFire) -> dict[str, Any]:
    """One due time of a schedule and what became of it."""
    return {
        "scheduled_for": iso(fire.scheduled_for),
        "outcome": fire.outcome,
        "execution_id": fire.execution_id,
        "reason": fire.reason,
        "recorded_at": iso(fire.updated_at),
    }


def activity_dict(activity: Activity) -> dict[str, Any]:
    """An agent's activity summary (GET /api/agents/{name}/activity, the MCP tool)."""
    last = activity.last_execution
    return {
        "agent": activity.agent,
        "at": iso(activity.at),
        "running_now": activity.running_now,
        "waiting_now": activity.waiting_now,
        "last_execution": None
        if last is None
        else {
            **last,
            "created_at": iso(last["created_at"]),
            "completed_at": iso(last["completed_at"]),
        },
        "windows": {label: _window_dict(w) for label, w in activity.windows.items()},
    }


def _window_dict(window: Window) -> dict[str, Any]:
    return {
        "since": iso(window.since),
        "total": window.total,
        "by_status": window.by_status,
        "by_trigger": window.by_trigger,
        "success_rate": window.success_rate,
        "total_cost_usd": _money(window.total_cost),
        "average_cost_usd": _money(window.average_cost),
        "average_duration_ms": window.average_duration_ms,
        "p95_duration_ms": window.p95_duration_ms,
    }


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)
