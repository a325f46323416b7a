"""Waiting for an execution to end, for callers that answer with its result (`wait: true`,
MCP's `run_agent_task`, paid tasks)."""

from __future__ import annotations

import time

from api.context import services
from shared.models import Execution
from shared.states import ExecutionStatus
from shared.store import executions


def wait_terminal(execution_id: str, max_seconds: float) -> Execution:
    """Poll the row (backing off to 0.5 s) until terminal or the wait bound passes."""
    deadline = time.monotonic() + max_seconds
    delay = 0.02
    while True:
        with services().Session() as session:
            execution = executions.get(session, execution_id)
        assert execution is not None
        if ExecutionStatus(execution.status).terminal or time.monotonic() >= deadline:
            return execution
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
