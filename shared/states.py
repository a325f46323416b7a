"""The enumerations of agx: execution statuses and triggers, agent output, schedule policies."""

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


#: The error of an execution stopped by request (stop, or a stop that won over its outcome).
STOPPED_ERROR = "stopped by request"

TERMINAL = frozenset({ExecutionStatus.completed, ExecutionStatus.failed, ExecutionStatus.cancelled})
#: Statuses of an execution that is not finished (the index ix_executions_in_flight's predicate).
IN_FLIGHT = (ExecutionStatus.pending.value, ExecutionStatus.running.value)


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


class Overlap(StrEnum):
    """What a fire does while an earlier run of the same schedule is still in flight."""

    skip = "skip"
    queue = "queue"
    allow = "allow"


class FireOutcome(StrEnum):
    """What became of one due time of a schedule."""

    claimed = "claimed"  # a scheduler took it and is submitting (or died doing so)
    waiting = "waiting"  # overlap `queue`: submitted once the schedule's previous run ends
    submitted = "submitted"
    skipped = "skipped"  # overlap policy or queue_limit: nothing submitted, reason says why
    missed = "missed"  # no scheduler fired it within misfire_grace_seconds
    failed = "failed"  # the submission was refused for good (agent gone, bad message)
