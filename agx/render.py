"""Readable terminal rendering of execution events (Claude stream-json or plain text)."""

from __future__ import annotations

import json
from typing import Any

#: Process exit codes for an execution's outcome.
EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 2}


def render_line(line: str) -> str | None:
    """A human line for one transcript line (None to print nothing)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return line
    if not isinstance(obj, dict):
        return line
    kind = obj.get("type")
    if kind == "system":
        return f"· session {obj.get('session_id', '?')} model {obj.get('model', '?')}"
    if kind == "assistant":
        return _assistant(obj.get("message") or {})
    if kind == "user":
        return "· tool result"
    if kind == "result":
        cost = obj.get("total_cost_usd")
        return f"· result ({obj.get('num_turns', '?')} turns" + (
            f", ${cost:.4f})" if isinstance(cost, int | float) else ")"
        )
    return None


def _assistant(message: dict[str, Any]) -> str | None:
    parts = []
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            parts.append(f"→ {block.get('name', 'tool')}")
    return "\n".join(parts) or None


def render_event(event: dict[str, Any]) -> str | None:
    """A human line for one event."""
    if event.get("type") == "line":
        return render_line(event.get("line", ""))
    status = event.get("status")
    error = event.get("error")
    return f"--- {status}" + (f": {error}" if error else "")
