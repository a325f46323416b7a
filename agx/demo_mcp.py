"""The demo agent's `call=AGENT` directive: it calls another agent through agx's MCP endpoint,
as an agent with `mcp: true` would, with the official MCP client.

The call is `run_agent_task(AGENT, <the message without this directive>, wait=true)`, made
to `$AGX_API_URL/mcp` with `Authorization: Bearer $AGX_EXECUTION_TOKEN` (what every run is
given); the callee's reply, or the tool's error, goes into the caller's own reply. Later
`call=` directives travel on in the forwarded message, so `call=b call=c hi` makes a chain.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DIRECTIVE = "call="
DEFAULT_MESSAGE = "hello"  #: what the callee is sent when nothing else is left to forward
RESULT_CHARS = 500  #: characters of the callee's reply quoted in the caller's
READ_TIMEOUT_SECONDS = 900.0  #: a waited-for task answers within the server's wait bound


def split_call(message: str) -> tuple[str, str] | None:
    """(callee, message to forward) from the first `call=AGENT` word, or None if there is none."""
    words = message.split()
    for index, word in enumerate(words):
        if word.startswith(DIRECTIVE) and len(word) > len(DIRECTIVE):
            rest = words[:index] + words[index + 1 :]
            return word[len(DIRECTIVE) :], " ".join(rest) or DEFAULT_MESSAGE
    return None


def call_reply(message: str, env: Mapping[str, str] | None = None) -> str:
    """The text the demo agent adds to its reply for a `call=` directive ("" without one)."""
    found = split_call(message)
    if found is None:
        return ""
    callee, forwarded = found
    return f" [call {callee}: {call_agent(callee, forwarded, env or os.environ)[:RESULT_CHARS]}]"


def call_agent(callee: str, message: str, env: Mapping[str, str]) -> str:
    """Run a task on `callee` through agx's MCP endpoint and describe how it ended."""
    url, token = env.get("AGX_API_URL"), env.get("AGX_EXECUTION_TOKEN")
    if not url or not token:
        return "error: AGX_API_URL and AGX_EXECUTION_TOKEN are not set"
    import anyio  # here, not at the top: only a calling run pays for the MCP client

    try:
        return anyio.run(_run_task, url.rstrip("/") + "/mcp", token, callee, message)
    except Exception as exc:  # the caller reports it in its reply, like a tool failure
        return f"error: {type(exc).__name__}: {exc}"


async def _run_task(url: str, token: str, callee: str, message: str) -> str:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30.0, read=READ_TIMEOUT_SECONDS)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        arguments = {"name": callee, "message": message, "wait": True}
        result = await session.call_tool("run_agent_task", arguments)
    return describe(result)


def describe(result: Any) -> str:
    """A tool result in a few words: `error: ...`, or the execution's status and outcome."""
    if result.is_error:
        text = " ".join(getattr(item, "text", "") for item in result.content)
        return f"error: {text}"
    data = result.structured_content or {}
    status = data.get("status", "?")
    outcome = data.get("response") or data.get("error") or data.get("execution_id") or ""
    return f"{status}: {outcome}"
