"""The runner, driving real programs: streaming, stdin, caps, timeouts, stops and killing groups."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from workers.runner import RunOutcome, run_agent

REPO = str(Path(__file__).resolve().parents[1])
DEMO = [sys.executable, "-m", "agx.demo_agent"]
DEMO_ENV = {"PYTHONPATH": REPO}
DEADLINE_SECONDS = 10.0


def python(code: str) -> list[str]:
    """Return the argv that runs code in a fresh interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def run(argv: list[str], stdin_text: str = "", **kwargs: object) -> tuple[RunOutcome, list[str]]:
    """Run argv to the end, collecting its lines."""
    lines: list[str] = []
    kwargs.setdefault("timeout_seconds", 30)
    outcome = run_agent(argv, stdin_text=stdin_text, on_line=lines.append, **kwargs)  # type: ignore[arg-type]
    return outcome, lines


def run_demo(message: str, **kwargs: object) -> tuple[RunOutcome, list[str]]:
    """Run the demo agent on message."""
    return run(DEMO, message, env=DEMO_ENV, **kwargs)


def is_gone(pid: int) -> bool:
    """Tell whether pid is dead; a zombie counts, since this sandbox's init may never reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int) -> bool:
    """Poll until pid is dead or the deadline passes."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not is_gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # leave no orphan behind a failed test
            return False
        time.sleep(0.01)
    return True


def grandchild_pid(lines: list[str]) -> int:
    """Find the pid the demo agent's grandchild directive printed."""
    for line in lines:
        if "grandchild pid=" in line:
            return int(line.split("grandchild pid=")[1].split('"')[0])
    raise AssertionError("no grandchild line")


def test_lines_are_streamed_in_order_and_the_exit_code_is_reported() -> None:
    outcome, lines = run_demo("hello lines=50 exit=4")
    events = [json.loads(line) for line in lines]
    texts = [e["message"]["content"][0]["text"] for e in events if e["type"] == "assistant"]
    assert events[0]["subtype"] == "init" and events[-1]["type"] == "result"
    assert texts == [f"line {i}" for i in range(50)] + ["demo: hello lines=50 exit=4"]
    assert outcome.exit_code == 4
    assert not (outcome.timed_out or outcome.stopped or outcome.truncated)


def test_the_message_arrives_on_stdin() -> None:
    _, lines = run(python("import sys; print(sys.stdin.read().upper())"), "héllo\nwörld")
    assert lines == ["HÉLLO", "WÖRLD"]


def test_a_message_larger_than_the_pipe_arrives_whole_while_the_agent_talks() -> None:
    """100 KB (the largest message) does not fit a pipe: it goes out as the agent reads it,
    from the same loop that reads what the agent prints meanwhile."""
    import hashlib

    message = "".join(f"line {i} of the message\n" for i in range(4000))
    code = """
        import hashlib, sys
        data = b""
        while chunk := sys.stdin.buffer.read(8192):
            data += chunk
            print("got", len(chunk), flush=True)
        print("total", len(data), hashlib.sha256(data).hexdigest())
    """
    outcome, lines = run(python(code), message)
    assert outcome.exit_code == 0
    expected = hashlib.sha256(message.encode()).hexdigest()
    assert lines[-1] == f"total {len(message.encode())} {expected}"
    assert len(lines) > 10, "the agent talked while it read"


def test_a_program_that_never_reads_stdin_does_not_hang_the_runner() -> None:
    outcome, lines = run(python("print('done')"), "x" * 2_000_000)
    assert (outcome.exit_code, lines) == (0, ["done"])


def test_the_agent_runs_in_workdir_with_env_merged_over_the_environment(tmp_path: Path) -> None:
    code = "import os; print(os.getcwd()); print(os.environ['AGX_T']); print('PATH' in os.environ)"
    _, lines = run(python(code), workdir=str(tmp_path), env={"AGX_T": "yes"})
    assert lines == [str(tmp_path), "yes", "True"]


def test_on_start_gets_the_pid_before_any_line() -> None:
    seen: list[str] = []
    pids: list[int] = []
    run_agent(
        python("import os; print(os.getpid())"),
        stdin_text="",
        on_line=lambda line: seen.append(f"{len(pids)}:{line}"),
        timeout_seconds=30,
        on_start=pids.append,
    )
    assert seen == [f"1:{pids[0]}"]


def test_a_timeout_kills_a_program_that_ignores_sigint_and_sigterm() -> None:
    pids: list[int] = []
    begun = time.monotonic()
    outcome, _ = run_demo(
        "ignore-signals sleep=60", timeout_seconds=1, grace_seconds=0.5, on_start=pids.append
    )
    assert outcome.timed_out and not outcome.stopped and outcome.exit_code is None
    assert 1.4 <= time.monotonic() - begun < DEADLINE_SECONDS
    assert 1000 <= outcome.duration_ms < DEADLINE_SECONDS * 1000
    assert wait_gone(pids[0])


def test_a_timeout_first_interrupts_so_a_polite_agent_exits_in_its_grace_period() -> None:
    outcome, lines = run_demo("sleep=60", timeout_seconds=0.5, grace_seconds=20)
    assert outcome.timed_out and outcome.exit_code == 130  # the agent's own KeyboardInterrupt exit
    assert outcome.duration_ms < DEADLINE_SECONDS * 1000
    assert not any('"result"' in line for line in lines)


def test_setting_the_stop_event_kills_the_agent_and_reports_stopped() -> None:
    stop = threading.Event()

    def on_line(line: str) -> None:
        if '"init"' in line:
            stop.set()

    outcome = run_agent(
        DEMO,
        stdin_text="ignore-signals sleep=60",
        on_line=on_line,
        timeout_seconds=60,
        stop=stop,
        env=DEMO_ENV,
        grace_seconds=0.2,
    )
    assert outcome.stopped and not outcome.timed_out and outcome.exit_code is None
    assert outcome.duration_ms < DEADLINE_SECONDS * 1000


def test_a_grandchild_dies_with_the_group_after_a_clean_exit() -> None:
    outcome, lines = run_demo("grandchild")
    assert outcome.exit_code == 0
    assert wait_gone(grandchild_pid(lines))


def test_a_grandchild_dies_with_the_group_when_the_agent_is_stopped() -> None:
    stop = threading.Event()
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if "grandchild pid=" in line:
            stop.set()

    run_agent(
        DEMO,
        stdin_text="grandchild ignore-signals sleep=60",
        on_line=on_line,
        timeout_seconds=60,
        stop=stop,
        env=DEMO_ENV,
        grace_seconds=0.2,
    )
    assert wait_gone(grandchild_pid(lines))


def test_an_error_in_on_line_kills_the_agent_and_reaches_the_caller() -> None:
    pids: list[int] = []

    def on_line(line: str) -> None:
        raise ValueError("the database is down")

    with pytest.raises(ValueError, match="database"):
        run_agent(
            DEMO,
            stdin_text="ignore-signals sleep=60",
            on_line=on_line,
            timeout_seconds=60,
            env=DEMO_ENV,
            grace_seconds=0.2,
            on_start=pids.append,
        )
    assert wait_gone(pids[0])


def test_a_missing_program_raises_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        run(["/nonexistent/agx-agent"])


def test_a_huge_line_without_newline_is_capped_and_memory_stays_bounded() -> None:
    size = 20_000_000
    code = f"import sys; sys.stdout.buffer.write(b'a' * {size})"
    tracemalloc.start()
    try:
        outcome, lines = run(python(code), max_line_bytes=65_536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dropped = size - 65_536
    assert lines == ["a" * 65_536 + f" …[line truncated: {dropped} bytes dropped]"]
    assert outcome.truncated and outcome.exit_code == 0
    assert peak < 2_000_000  # a few 64 KiB chunks and one capped line, not 20 MB


def test_output_past_the_total_cap_is_dropped_but_still_drained() -> None:
    # 2 MB is far more than a pipe holds: the program only finishes if we keep reading.
    code = "for i in range(20_000): print(f'{i:099d}')"
    outcome, lines = run(python(code), max_total_bytes=1_000)
    assert lines == [f"{i:099d}" for i in range(10)] + ["[output truncated after 1000 bytes]"]
    assert outcome.truncated and outcome.exit_code == 0


def test_a_long_line_is_cut_but_the_following_lines_arrive_intact() -> None:
    code = "print('x' * 100); print('short')"
    outcome, lines = run(python(code), max_line_bytes=10)
    assert lines == ["x" * 10 + " …[line truncated: 90 bytes dropped]", "short"]
    assert outcome.truncated


def test_invalid_utf8_is_replaced_and_carriage_returns_are_stripped() -> None:
    code = r"import sys; sys.stdout.buffer.write(b'caf\xe9\r\nok\r\n')"
    _, lines = run(python(code))
    assert lines == ["caf\ufffd", "ok"]


def test_a_final_line_without_newline_is_delivered() -> None:
    _, lines = run(python("import sys; sys.stdout.write('a\\n\\nb')"))
    assert lines == ["a", "", "b"]


def test_stderr_is_kept_apart_and_only_its_tail_is_reported() -> None:
    code = "import sys; sys.stderr.write('e' * 20_000 + 'END'); print('out')"
    outcome, lines = run(python(code))
    assert lines == ["out"]
    assert len(outcome.stderr_tail) == 8_192 and outcome.stderr_tail.endswith("eEND")


PARENT = """
import sys, threading
sys.path.insert(0, {repo!r})
from workers.runner import run_agent

def work():
    run_agent(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(3600)"],
        stdin_text="",
        on_line=print,
        timeout_seconds=3600,
        on_start=lambda pid: print(pid, flush=True),
    )

threading.Thread(target=work).start()  # not the main thread: the pact must hold anyway
"""


def test_the_agent_dies_when_the_worker_process_is_sigkilled(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(repo=REPO))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE) as parent:
        assert parent.stdout
        ready, _, _ = select.select([parent.stdout], [], [], DEADLINE_SECONDS)
        assert ready, "the parent never started the agent"
        agent = int(parent.stdout.readline())
        # Mid-run: the agent program itself is running (setpriv's prctl, done before its exec,
        # is behind us; the pool's subreaper covers the first millisecond, see runner._spawn).
        assert parent.stdout.readline().strip() == b"up"
        assert not is_gone(agent)
        parent.kill()
    assert wait_gone(agent)
