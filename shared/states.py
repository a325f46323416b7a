"""The execution lifecycle: statuses, triggers and the allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class ExecutionStatus(StrEnum):
    """Where an execution is in its life; terminal statuses never change again."""

    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in TERMINAL


TERMINAL = frozenset({ExecutionStatus.completed, ExecutionStatus.failed, ExecutionStatus.cancelled})
#: Statuses of an execution that is not finished (the index ix_executions_in_flight's predicate).
IN_FLIGHT = (ExecutionStatus.pending.value, ExecutionStatus.running.value)

#: Allowed moves; everything else is refused by compare-and-set.
TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.pending: frozenset(
        {ExecutionStatus.running, ExecutionStatus.cancelled, ExecutionStatus.failed}
    ),
    ExecutionStatus.running: TERMINAL,
    ExecutionStatus.completed: frozenset(),
    ExecutionStatus.failed: frozenset(),
    ExecutionStatus.cancelled: frozenset(),
}


class Trigger(StrEnum):
    """What created an execution."""

    manual = "manual"
    schedule = "schedule"
    mcp = "mcp"
    chat = "chat"
    paid = "paid"


class AgentOutput(StrEnum):
    """How an agent's stdout is read."""

    claude_stream_json = "claude-stream-json"
    text = "text"
