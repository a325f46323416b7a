"""Spawn an agent process, stream its stdout lines, and make sure it and its children end.

The agent runs in its own process group. A stop or a timeout sends the group
SIGINT, then SIGKILL after a grace period; an error, and even a clean exit,
SIGKILLs the group, so no grandchild outlives the run. On Linux the agent
also gets PR_SET_PDEATHSIG=SIGKILL so it dies if the worker is SIGKILLed.
That signal fires when the *thread* that forked the agent exits: call
`run_agent` from a long-lived thread (Dramatiq worker threads are).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from subprocess import Popen
from typing import IO

from shared.linux import death_pact

CHUNK_BYTES = 65_536
STDERR_TAIL_BYTES = 8_192
POLL_SECONDS = 0.02  #: how often the loop checks the stop flag (exit and output wake it at once)
INLINE_STDIN_BYTES = 4096  #: messages up to one page are written at once (any pipe takes them)
DRAIN_SECONDS = 2.0  #: how long to wait for EOF on the pipes once the group is dead


@dataclass(frozen=True)
class RunOutcome:
    """How an agent run ended."""

    exit_code: int | None  # None if killed by a signal we sent
    timed_out: bool
    stopped: bool  # the stop event was set and we killed the agent
    duration_ms: int
    truncated: bool  # some output was capped
    stderr_tail: str = ""  # the last STDERR_TAIL_BYTES of stderr, for debugging


class _LineSplitter:
    """Cut a byte stream into decoded lines, with a per-line and a total cap."""

    def __init__(self, on_line: Callable[[str], None], max_line_bytes: int, max_total_bytes: int):
        self._on_line = on_line
        self._max_line = max_line_bytes
        self._max_total = max_total_bytes
        self._budget = max_total_bytes  # bytes still allowed through
        self._buf = bytearray()
        self._dropped = 0  # bytes of the current line beyond max_line_bytes
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        """Deliver every complete line in chunk, keeping the unfinished tail."""
        if self._budget < 0:
            return  # over the total cap: the caller keeps draining, we deliver nothing
        kept = chunk[: self._budget]
        self._budget -= len(chunk)
        start = 0
        while (end := kept.find(b"\n", start)) >= 0:
            self._append(kept[start:end])
            self._emit()
            start = end + 1
        self._append(kept[start:])
        if self._budget < 0:
            self.finish()
            self.truncated = True
            self._on_line(f"[output truncated after {self._max_total} bytes]")

    def finish(self) -> None:
        """Deliver the last line even though it has no newline."""
        if self._buf or self._dropped:
            self._emit()

    def _append(self, part: bytes) -> None:
        room = max(self._max_line - len(self._buf), 0)
        self._buf += part[:room]
        self._dropped += max(len(part) - room, 0)

    def _emit(self) -> None:
        line = self._buf.decode("utf-8", errors="replace").removesuffix("\r")
        if self._dropped:
            line += f" …[line truncated: {self._dropped} bytes dropped]"
            self.truncated = True
        self._buf.clear()
        self._dropped = 0
        self._on_line(line)


class _Tail:
    """Keep only the last few kilobytes of a stream."""

    def __init__(self, limit: int):
        self._limit = limit
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Append chunk, forgetting what falls out of the window."""
        self.data += chunk
        del self.data[: -self._limit]


class _Loop:
    """One thread does it all: feeds stdin, drains stdout and stderr, and notices the agent's
    exit (its pidfd), the deadline and the stop flag, with a single poll() and no helper thread."""

    def __init__(
        self,
        proc: Popen[bytes],
        data: bytes,
        lines: _LineSplitter,
        tail: _Tail,
        on_flush: Callable[[], float | None] | None,
    ):
        assert proc.stdin and proc.stdout and proc.stderr
        self._proc = proc
        self._on_flush = on_flush or (lambda: None)
        self._poller = select.poll()  # not select.select: a busy worker may hold fds above 1024
        self._sinks: dict[int, tuple[IO[bytes], Callable[[bytes], None]]] = {}
        for pipe, sink in ((proc.stdout, lines.feed), (proc.stderr, tail.feed)):
            self._sinks[pipe.fileno()] = (pipe, sink)
            self._poller.register(pipe, select.POLLIN)
        self._lines = lines
        self._stdin: IO[bytes] | None = proc.stdin
        self._data = memoryview(data)
        if len(data) <= INLINE_STDIN_BYTES:  # fits any pipe buffer: cannot block
            self._write_stdin()
        else:
            os.set_blocking(proc.stdin.fileno(), False)
            self._poller.register(proc.stdin, select.POLLOUT)
        self._pidfd = _pidfd(proc.pid)
        if self._pidfd is not None:
            self._poller.register(self._pidfd, select.POLLIN)
        again = self._on_flush()  # whatever the caller queued before the start may be due
        self._flush_at = None if again is None else time.monotonic() + again

    def wait(self, deadline: float, stop: threading.Event | None = None) -> str:
        """Pump until the leader exits ("exited"), stop is set ("stopped") or the deadline
        passes ("timeout")."""
        while not _has_exited(self._proc.pid):
            if stop is not None and stop.is_set():
                return "stopped"
            now = time.monotonic()
            if now >= deadline:
                return "timeout"
            wake = min(deadline, now + POLL_SECONDS)
            if self._flush_at is not None:
                wake = min(wake, self._flush_at)
            self._pump(max(wake - now, 0.0))
        return "exited"

    def drain(self) -> None:
        """After the group is dead: read what is left until EOF on both pipes, but give up
        after DRAIN_SECONDS on pipes an escaped process still holds."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while self._sinks and (left := deadline - time.monotonic()) > 0:
            self._pump(left, wait_for_pipes=True)
        self._lines.finish()
        self._on_flush()

    def close(self) -> None:
        """Close every pipe and handle still open."""
        for pipe, _ in self._sinks.values():
            _close(pipe)
        self._sinks.clear()
        if self._stdin is not None:
            _close(self._stdin)
            self._stdin = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _pump(self, timeout: float, wait_for_pipes: bool = False) -> None:
        """One poll: move whatever is ready, then call on_flush if a read came in or it is due."""
        if wait_for_pipes and self._pidfd is not None:  # the exit is known: only pipes matter
            self._poller.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        read = False
        for fd, _ in self._poller.poll(timeout * 1000):
            if fd in self._sinks:
                pipe, sink = self._sinks[fd]
                if chunk := os.read(fd, CHUNK_BYTES):
                    sink(chunk)
                    read = True
                else:  # EOF
                    self._poller.unregister(fd)
                    _close(self._sinks.pop(fd)[0])
            elif self._stdin is not None and fd == self._stdin.fileno():
                self._write_stdin()
        if read or (self._flush_at is not None and time.monotonic() >= self._flush_at):
            again = self._on_flush()
            self._flush_at = None if again is None else time.monotonic() + again

    def _write_stdin(self) -> None:
        """Write what the pipe takes; close stdin once the message is out, or the agent has
        closed it (which is its right: an agent that never reads must not hang us)."""
        assert self._stdin is not None
        fd = self._stdin.fileno()
        try:
            while self._data:
                self._data = self._data[os.write(fd, self._data) :]
        except BlockingIOError:
            return  # the pipe is full: poll says when it has room
        except OSError:
            pass  # BrokenPipeError: the agent exited or closed stdin
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(fd)
        _close(self._stdin)
        self._stdin = None


def _close(pipe: IO[bytes]) -> None:
    with contextlib.suppress(OSError):  # closing a broken pipe may report the breakage again
        pipe.close()


#: util-linux's setpriv sets the parent-death signal without a preexec_fn (which would make
#: every spawn a full fork of the worker instead of a vfork). Unlike `death_pact` it does not
#: re-check its parent after the prctl, so a worker killed in the millisecond between the spawn
#: and setpriv's prctl leaves the agent to init; under `agx workers` the pool's subreaper
#: covers that window (unless the pool dies whole within it), and every other exit path kills
#: the group.
_SETPRIV = shutil.which("setpriv")


def _spawn(
    argv: list[str],
    workdir: str | None,
    env: Mapping[str, str] | None,
    die_with_parent: bool = True,
) -> Popen[bytes]:
    merged = None if env is None else {**os.environ, **env}
    preexec = death_pact() if die_with_parent else None
    if die_with_parent and _SETPRIV is not None:
        _resolve(argv[0], merged, workdir)  # a missing program still raises, as with exec
        argv, preexec = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # kept apart: merged into stdout it would break the JSON lines
        bufsize=0,
        cwd=workdir,
        env=merged,
        start_new_session=True,
        preexec_fn=preexec,  # noqa: PLW1509 - only prctl, which is async-signal-safe
    )


def _resolve(program: str, env: Mapping[str, str] | None, workdir: str | None) -> None:
    """Raise FileNotFoundError when `program` is not an executable that exec would find."""
    if os.sep in program:
        path = os.path.join(workdir or ".", program)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise FileNotFoundError(2, "No such file or directory", program)
    elif shutil.which(program, path=(env or os.environ).get("PATH")) is None:
        raise FileNotFoundError(2, "No such file or directory", program)


def _has_exited(pid: int) -> bool:
    """Tell whether the leader exited, without reaping it, so its pgid stays reserved."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # someone else reaped it


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, sig)


def _pidfd(pid: int) -> int | None:
    """A pollable handle on the process (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _end_group(proc: Popen[bytes], loop: _Loop | None, drain: bool) -> None:
    """Every run ends here: whatever is left of the group, grandchildren included, dies; then
    the pipes are read to their end (unless `drain` is False) and closed."""
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        if loop is not None and drain:
            loop.drain()
    finally:
        if loop is not None:
            loop.close()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                _close(pipe)


def run_agent(
    argv: list[str],
    *,
    stdin_text: str,
    on_line: Callable[[str], None],
    timeout_seconds: float,
    stop: threading.Event | None = None,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
    grace_seconds: float = 5.0,
    max_line_bytes: int = 1_048_576,
    max_total_bytes: int = 256 * 1_048_576,
    on_start: Callable[[int], None] | None = None,
    on_flush: Callable[[], float | None] | None = None,
    die_with_parent: bool = True,
) -> RunOutcome:
    """Run argv with stdin_text on stdin, pass each stdout line to on_line, report how it ended.

    Everything happens on the calling thread (callbacks included). `on_flush` is called at the
    start, after the lines of each read from the pipe, and at the end; it returns None, or the
    seconds after which it wants to be called again even if no output comes (so a batch of
    events can wait for company, but not for ever). An exception from a callback kills the
    group and propagates. `die_with_parent=False` skips the parent-death signal: only for a
    caller that kills its runs by other means if it dies (workers under a live guardian)."""
    started = time.monotonic()
    lines = _LineSplitter(on_line, max_line_bytes, max_total_bytes)
    tail = _Tail(STDERR_TAIL_BYTES)
    proc = _spawn(argv, workdir, env, die_with_parent)
    why = "error"
    loop: _Loop | None = None
    try:
        if on_start is not None:
            on_start(proc.pid)  # before any on_line, so the caller can record the pid first
        loop = _Loop(proc, stdin_text.encode(), lines, tail, on_flush)
        why = loop.wait(started + timeout_seconds, stop)
        if why != "exited":
            _signal_group(proc.pid, signal.SIGINT)
            loop.wait(time.monotonic() + grace_seconds)
    finally:
        _end_group(proc, loop, drain=why != "error")  # after a failed callback, call none again
    killed = why != "exited" and proc.returncode < 0
    return RunOutcome(
        exit_code=None if killed else proc.returncode,
        timed_out=why == "timeout",
        stopped=why == "stopped",
        duration_ms=int((time.monotonic() - started) * 1000),
        truncated=lines.truncated,
        stderr_tail=tail.data.decode("utf-8", errors="replace"),
    )
