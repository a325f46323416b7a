"""The demo agent, run as a real program, speaks Claude Code's stream-json as its directives ask."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from agx import demo_agent

REPO = str(Path(__file__).resolve().parents[1])
DEMO = [sys.executable, "-m", "agx.demo_agent"]
ENV = {**os.environ, "PYTHONPATH": REPO}
RUN_TIMEOUT_SECONDS = 30  # a safety net against a hung test, not synchronisation


def run_demo(message: str, *args: str, env: dict[str, str] | None = None) -> Demo:
    """Run the demo agent to completion on message."""
    done = subprocess.run(
        [*DEMO, *args],
        input=message,
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    return Demo(done.returncode, done.stdout.splitlines(), done.stderr)


class Demo:
    """The exit code and output of one finished demo agent run."""

    def __init__(self, code: int, lines: list[str], stderr: str):
        self.code = code
        self.lines = lines
        self.stderr = stderr

    def events(self) -> list[dict[str, Any]]:
        """Return the JSON-object lines."""
        parsed = []
        for line in self.lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                parsed.append(value)
        return parsed

    def texts(self) -> list[str]:
        """Return the text of every assistant event."""
        return [
            e["message"]["content"][0]["text"] for e in self.events() if e["type"] == "assistant"
        ]

    def results(self) -> list[dict[str, Any]]:
        """Return the result events."""
        return [e for e in self.events() if e["type"] == "result"]


def read_line(stream: IO[bytes] | None, seconds: float = 10.0) -> str:
    """Read one line from an unbuffered pipe, failing instead of hanging past the deadline."""
    assert stream
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, "no line from the demo agent in time"
    return stream.readline().decode()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Collect demo agents started by hand; kill their groups afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


def start_demo(procs: list[subprocess.Popen[bytes]], message: str) -> subprocess.Popen[bytes]:
    """Start the demo agent in its own group, its message already sent."""
    proc = subprocess.Popen(
        DEMO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,  # unbuffered, so select() sees every line a readline has not yet taken
        env=ENV,
        start_new_session=True,
    )
    procs.append(proc)
    assert proc.stdin
    proc.stdin.write(message.encode())
    proc.stdin.close()
    return proc


def test_a_plain_message_yields_init_then_assistant_then_result() -> None:
    demo = run_demo("hello world")
    init, reply, result = demo.events()
    assert demo.code == 0
    assert init["type"] == "system" and init["subtype"] == "init"
    assert init["model"] == "demo-model" and init["tools"] == [] and init["cwd"]
    uuid.UUID(init["session_id"])
    assert reply["message"]["content"] == [{"type": "text", "text": "demo: hello world"}]
    assert reply["message"]["usage"] == {"input_tokens": 2, "output_tokens": 3}
    assert reply["session_id"] == result["session_id"] == init["session_id"]
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == "demo: hello world" and result["num_turns"] == 1
    assert result["total_cost_usd"] == 0.00005 and isinstance(result["duration_ms"], int)
    assert result["usage"] == {"input_tokens": 2, "output_tokens": 3}


def test_model_and_session_id_set_the_model_and_session_and_other_arguments_are_ignored(
    tmp_path: Path,
) -> None:
    env = {**ENV, "AGX_DEMO_SESSIONS": str(tmp_path)}
    args = ("-p", "--output-format=stream-json", "--model", "m-1", "--session-id", "s-9")
    demo = run_demo("hi", *args, env=env)
    init, reply, result = demo.events()
    assert (init["model"], init["session_id"]) == ("m-1", "s-9")
    assert reply["message"]["model"] == "m-1" and result["session_id"] == "s-9"


def test_resume_continues_a_kept_session_and_its_reply_knows_the_earlier_turns(
    tmp_path: Path,
) -> None:
    env = {**ENV, "AGX_DEMO_SESSIONS": str(tmp_path)}
    first = run_demo("my name is Ada", "--session-id", "chat-1", env=env).results()[0]
    assert first["result"] == "demo: my name is Ada"
    again = run_demo("who am I", "--resume", "chat-1", env=env)
    result = again.results()[0]
    assert again.code == 0 and result["session_id"] == "chat-1"
    assert result["result"] == "demo: who am I (turn 2; earlier: my name is Ada)"
    fresh = run_demo("who am I", "--session-id", "chat-2", env=env).results()[0]
    assert fresh["result"] == "demo: who am I"  # another session knows nothing of chat-1


def test_resuming_an_unknown_session_fails_like_claude(tmp_path: Path) -> None:
    demo = run_demo("hi", "--resume", "no-such", env={**ENV, "AGX_DEMO_SESSIONS": str(tmp_path)})
    (result,) = demo.results()
    assert demo.code == 1 and result["is_error"]
    assert result["result"] == "No conversation found with session ID: no-such"


def test_the_reply_echoes_the_first_200_characters_of_the_stripped_message() -> None:
    result = run_demo("  " + "x" * 300 + "\n").results()[0]
    assert result["result"] == "demo: " + "x" * 200


def test_lines_prints_that_many_extra_assistant_lines_in_order() -> None:
    texts = run_demo("lines=5").texts()
    assert texts == [f"line {i}" for i in range(5)] + ["demo: lines=5"]


def test_exit_sets_the_exit_code_after_the_result_line() -> None:
    demo = run_demo("exit=3")
    assert demo.code == 3 and len(demo.results()) == 1


def test_no_result_prints_no_result_line_and_exits_zero() -> None:
    demo = run_demo("no-result")
    assert demo.code == 0 and demo.results() == [] and demo.texts() == ["demo: no-result"]


def test_no_result_with_exit_exits_with_that_code() -> None:
    demo = run_demo("no-result exit=2")
    assert demo.code == 2 and demo.results() == []


def test_secret_prints_fake_credentials_in_an_assistant_line() -> None:
    text = run_demo("secret").texts()[0]
    assert "ANTHROPIC_API_KEY=sk-ant-demo1234567890abcdefXYZ" in text
    assert "Authorization: Bearer abcdef0123456789abcdef0123" in text


def test_garbage_prints_a_non_json_line_and_a_json_array_before_the_result() -> None:
    demo = run_demo("garbage")
    assert demo.lines.index("this is not json") < demo.lines.index("[1,2,3]")
    assert demo.lines.index("[1,2,3]") < len(demo.lines) - 1
    assert json.loads(demo.lines[-1])["type"] == "result"


def test_stderr_writes_a_line_to_stderr_only() -> None:
    demo = run_demo("stderr")
    assert demo.stderr.strip() and all(json.loads(line) for line in demo.lines)


def test_sleep_delays_the_result() -> None:
    begun = time.monotonic()
    demo = run_demo("sleep=0.3")
    assert time.monotonic() - begun >= 0.3 and len(demo.results()) == 1


def test_malformed_directives_are_ordinary_words() -> None:
    demo = run_demo("sleep=soon lines=many exit=x")
    assert demo.code == 0 and demo.texts() == ["demo: sleep=soon lines=many exit=x"]


def test_an_interrupted_demo_agent_exits_130_without_a_result(started: list) -> None:
    proc = start_demo(started, "sleep=30")
    assert json.loads(read_line(proc.stdout))["subtype"] == "init"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(RUN_TIMEOUT_SECONDS) == 130


def test_ignore_signals_survives_sigint_and_sigterm(started: list) -> None:
    proc = start_demo(started, "ignore-signals sleep=0.5")
    assert json.loads(read_line(proc.stdout))["subtype"] == "init"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(RUN_TIMEOUT_SECONDS) == 0
    assert proc.stdout and json.loads(proc.stdout.read().splitlines()[-1])["type"] == "result"


def test_grandchild_leaves_a_running_child_and_prints_its_pid(started: list) -> None:
    proc = start_demo(started, "grandchild")
    read_line(proc.stdout)  # init
    text = json.loads(read_line(proc.stdout))["message"]["content"][0]["text"]
    pid = int(text.removeprefix("grandchild pid="))
    assert proc.wait(RUN_TIMEOUT_SECONDS) == 0
    os.kill(pid, 0)  # still there after its parent exited; the fixture kills the group


def test_record_appends_start_result_and_end_events_per_run(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    env = {**ENV, demo_agent.RECORD_ENV: str(path)}
    run_demo("one", env=env)
    run_demo("two exit=1", env=env)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["message"]) for e in events] == [
        ("start", "one"),
        ("result", "one"),
        ("end", "one"),
        ("start", "two exit=1"),
        ("result", "two exit=1"),
        ("end", "two exit=1"),
    ]
    assert all(isinstance(e["t"], float) and isinstance(e["pid"], int) for e in events)


def test_directives_are_found_anywhere_among_the_words() -> None:
    todo = demo_agent.parse_directives("please sleep=1.5 now\nlines=2 garbage exit=4 secrets")
    assert todo == demo_agent.Directives(
        sleep_seconds=1.5, extra_lines=2, exit_code=4, garbage=True
    )


def test_main_can_be_called_as_a_console_script(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from main exit=5"))
    assert demo_agent.main(["--model", "x"]) == 5
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["result"] == "demo: from main exit=5"
