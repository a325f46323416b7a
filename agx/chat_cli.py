"""`agx chat AGENT [--session ID]`: an interactive conversation in the terminal.

Each line typed is one turn; the reply streams as it arrives. Ctrl-C while a reply runs
stops that turn (the conversation goes on); Ctrl-D (or Ctrl-C at the prompt) leaves. The
session id is printed on the way out, so `--session` picks the conversation up again.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import click

from agx.client import ApiError, Client, call
from agx.render import render_line

PROMPT = "you> "


@click.command()
@click.argument("agent")
@click.option("--session", "session_id", default=None, help="Resume this conversation.")
@click.option("--model", default=None)
def chat(agent: str, session_id: str | None, model: str | None) -> None:
    """Chat with AGENT: each line is a turn, replies stream as they come."""
    client = Client()
    if session_id:
        click.echo(f"· resuming conversation {session_id}", err=True)
    prompt = PROMPT if sys.stdin.isatty() else ""  # piped input: replies only
    while True:
        try:
            message = input(prompt)
        except (EOFError, KeyboardInterrupt):
            click.echo(err=True)
            break
        if not message.strip():
            continue
        body: dict[str, Any] = {"message": message, "session_id": session_id, "model": model}
        sent = call(
            "POST",
            f"/api/agents/{agent}/chat",
            {k: v for k, v in body.items() if v is not None},
            client=client,
        )
        session_id = sent["session_id"]
        if sent.get("waiting_for"):
            click.echo(f"· waiting for the previous turn {sent['waiting_for']}", err=True)
        _reply(client, agent, sent["execution_id"])
    if session_id:
        click.echo(f"· conversation {session_id} (agx chat {agent} --session {session_id})")


def _reply(client: Client, agent: str, execution_id: str) -> None:
    """Print the turn's reply as it streams; Ctrl-C stops the turn."""
    try:
        _stream(client, execution_id)
    except KeyboardInterrupt:
        with contextlib.suppress(ApiError):  # 409: it finished meanwhile
            client.request("POST", f"/api/agents/{agent}/executions/{execution_id}/stop")
        click.echo("\n· stopped", err=True)


def _stream(client: Client, execution_id: str) -> None:
    try:
        for event in client.events(execution_id):
            if event["type"] == "end":
                if event.get("status") != "completed":
                    click.echo(f"· {event.get('status')}: {event.get('error') or ''}", err=True)
                return
            if event["type"] == "line" and _is_reply(event.get("line", "")):
                text = render_line(event["line"])
                if text:
                    click.echo(text)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"stream from {client.url} broke: {exc}") from None


def _is_reply(line: str) -> bool:
    """Only what the agent says is shown (not its init, tool results or result lines)."""
    try:
        event = json.loads(line)
    except ValueError:
        return True  # a plain line is the agent talking
    return not isinstance(event, dict) or event.get("type") == "assistant"
