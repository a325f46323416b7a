"""A stand-in agent that speaks Claude Code's stream-json, steered by directives in its message.

Run as ``python -m agx.demo_agent [--model M] [--resume SESSION | --session-id ID]``; the
message comes on stdin. Whitespace-separated directives anywhere in the message change its
behaviour (``sleep=2``, ``lines=100``, ``exit=3``, ``no-result``, ``secret``,
``ignore-signals``, ``grandchild``, ``garbage``, ``stderr``, and ``call=AGENT``, which runs
the rest of the message on AGENT through agx's MCP endpoint, see `agx.demo_mcp`); every other
word is ordinary text. Like Claude Code it keeps its sessions: each turn is appended to
``$AGX_DEMO_SESSIONS/<session id>.jsonl`` (default ``~/.local/state/agx-demo``), so a
resumed session's reply names the turn and quotes the earlier messages, and resuming an
unknown session fails as Claude's does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agx.demo_mcp import call_reply

DEFAULT_MODEL = "demo-model"
REPLY_PREFIX = "demo: "
MESSAGE_CHARS = 200  #: characters of the message echoed in the reply
SLEEP_STEP_SECONDS = 0.05
COST_PER_TOKEN_USD = 0.00001
RECORD_ENV = "AGX_DEMO_RECORD"
SESSIONS_ENV = "AGX_DEMO_SESSIONS"
SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,128}")  #: what may name a session file
EARLIER_CHARS = 40  #: characters of each earlier message quoted in a resumed reply
FAKE_SECRETS = (
    "ANTHROPIC_API_KEY=sk-ant-demo1234567890abcdefXYZ "
    "Authorization: Bearer abcdef0123456789abcdef0123"
)
GRANDCHILD_CODE = "import time; time.sleep(3600)"


@dataclass(frozen=True)
class Directives:
    """The behaviour switches found in a message."""

    sleep_seconds: float = 0.0
    extra_lines: int = 0
    exit_code: int | None = None
    no_result: bool = False
    secret: bool = False
    ignore_signals: bool = False
    grandchild: bool = False
    garbage: bool = False
    stderr: bool = False


_FLAGS = {
    "no-result": "no_result",
    "secret": "secret",
    "ignore-signals": "ignore_signals",
    "grandchild": "grandchild",
    "garbage": "garbage",
    "stderr": "stderr",
}
_VALUED = {
    "sleep": ("sleep_seconds", float),
    "lines": ("extra_lines", int),
    "exit": ("exit_code", int),
}


def parse_directives(message: str) -> Directives:
    """Collect the directives among the message's whitespace-separated words."""
    found: dict[str, Any] = {}
    for word in message.split():
        name, sep, value = word.partition("=")
        if not sep and word in _FLAGS:
            found[_FLAGS[word]] = True
        elif sep and name in _VALUED:
            field, convert = _VALUED[name]
            with contextlib.suppress(ValueError):  # a malformed directive is just text
                found[field] = convert(value)
    return Directives(**found)


def emit(event: object) -> None:
    """Print one JSON line and flush it, so a reader sees it at once."""
    print(json.dumps(event), flush=True)


def record(event: str, message: str) -> None:
    """Append one event line to the file named by AGX_DEMO_RECORD, if set."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), "message": message})
    # One os.write on an O_APPEND fd is atomic for short lines: concurrent agents never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def assistant(text: str, model: str, session_id: str, usage: dict[str, int] | None = None) -> None:
    """Print an assistant event carrying one text block."""
    message: dict[str, Any] = {"model": model, "content": [{"type": "text", "text": text}]}
    if usage is not None:
        message["usage"] = usage
    emit({"type": "assistant", "message": message, "session_id": session_id})


def start_grandchild() -> int:
    """Start a long-lived child that is deliberately never waited for."""
    child = subprocess.Popen([sys.executable, "-c", GRANDCHILD_CODE], stdin=subprocess.DEVNULL)
    return child.pid


def pause(seconds: float) -> None:
    """Sleep in small steps so signals are noticed promptly."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(SLEEP_STEP_SECONDS, left))


def side_effects(todo: Directives, model: str, session_id: str) -> None:
    """Print the extra lines the directives ask for, then pause."""
    if todo.stderr:
        print("demo agent: a line on stderr", file=sys.stderr, flush=True)
    if todo.grandchild:
        assistant(f"grandchild pid={start_grandchild()}", model, session_id)
    if todo.secret:
        assistant(FAKE_SECRETS, model, session_id)
    for i in range(todo.extra_lines):
        assistant(f"line {i}", model, session_id)
    if todo.garbage:
        print("this is not json", flush=True)
        print("[1,2,3]", flush=True)
    pause(todo.sleep_seconds)


def sessions_dir() -> Path:
    """Where sessions are kept (AGX_DEMO_SESSIONS, else ~/.local/state/agx-demo)."""
    configured = os.environ.get(SESSIONS_ENV)
    return Path(configured) if configured else Path.home() / ".local/state/agx-demo"


def earlier_turns(session_id: str) -> list[str] | None:
    """The messages of a kept session, oldest first; None when there is no such session."""
    path = sessions_dir() / f"{session_id}.jsonl"
    if not SESSION_ID.fullmatch(session_id) or not path.exists():
        return None
    return [json.loads(line)["message"] for line in path.read_text().splitlines() if line]


def keep_turn(session_id: str, message: str) -> None:
    """Append this turn to its session's file (one write: concurrent turns never interleave)."""
    if not SESSION_ID.fullmatch(session_id):
        return
    folder = sessions_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{session_id}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps({"message": message, "t": time.time()}) + "\n").encode())
    finally:
        os.close(fd)


def reply_to(message: str, earlier: list[str]) -> str:
    """The reply: the message echoed, and on a resumed session the turn and earlier messages."""
    reply = REPLY_PREFIX + message.strip()[:MESSAGE_CHARS]
    if earlier:
        quoted = " | ".join(m.strip()[:EARLIER_CHARS] for m in earlier)
        reply += f" (turn {len(earlier) + 1}; earlier: {quoted})"
    return reply


def no_session(session_id: str) -> None:
    """The stream of a resume that names no kept session (Claude's own wording)."""
    emit(
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "result": f"No conversation found with session ID: {session_id[:128]}",
            "session_id": session_id[:128],
            "num_turns": 0,
        }
    )


def converse(
    message: str, model: str, session_id: str, todo: Directives, earlier: Sequence[str] = ()
) -> None:
    """Print the whole stream for one message: init, extras, reply and result."""
    started = time.monotonic()
    emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session_id,
            "model": model,
            "tools": [],
            "cwd": os.getcwd(),
        }
    )
    side_effects(todo, model, session_id)
    reply = reply_to(message, list(earlier)) + call_reply(message)  # call=AGENT: through MCP
    usage = {"input_tokens": len(message.split()), "output_tokens": len(reply.split())}
    assistant(reply, model, session_id, usage)
    if todo.no_result:
        return
    cost = round((usage["input_tokens"] + usage["output_tokens"]) * COST_PER_TOKEN_USD, 6)
    emit(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": reply,
            "session_id": session_id,
            "total_cost_usd": cost,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "num_turns": 1,
            "usage": usage,
        }
    )
    record("result", message)  # its work is done: a run recorded failed after this is a bug


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read --model and --resume, ignoring every other argument."""
    parser = argparse.ArgumentParser(prog="agx.demo_agent", allow_abbrev=False)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--session-id", default=None)
    known, _ignored = parser.parse_known_args(argv)
    return known


def main(argv: list[str] | None = None) -> int:
    """Run the demo agent on stdin and return its exit code."""
    args = parse_args(argv)
    message = sys.stdin.read()
    todo = parse_directives(message)
    if todo.ignore_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record("start", message)
    session_id = args.resume or args.session_id or str(uuid.uuid4())
    try:
        earlier = [] if args.resume is None else earlier_turns(args.resume)
        if earlier is None:
            no_session(args.resume)
            return 1
        keep_turn(session_id, message)  # as Claude does: the message is kept when it comes
        converse(message, args.model, session_id, todo, earlier)
    except KeyboardInterrupt:
        return 130  # interrupted like a shell command would be
    finally:
        record("end", message)
    return todo.exit_code if todo.exit_code is not None else 0


if __name__ == "__main__":
    sys.exit(main())
