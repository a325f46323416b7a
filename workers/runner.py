"""Spawn an agent process, stream its stdout lines, and make sure it and its children end.

The agent runs in its own process group. A stop, a timeout or any error sends
the group SIGINT, then SIGKILL after a grace period; even after a clean exit
the group is SIGKILLed, so no grandchild outlives the run. On Linux the agent
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
from threading import Thread
from typing import IO

from shared.linux import death_pact

CHUNK_BYTES = 65_536
STDERR_TAIL_BYTES = 8_192
POLL_SECONDS = 0.02  #: how often the watcher checks the process, stop event and deadline
INLINE_STDIN_BYTES = 4096  #: messages up to one page are written without a thread
PIPE_POLL_MS = 100  #: how often a pipe reader checks whether it was told to give up
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


class _Pipes:
    """The threads that feed stdin and drain stdout and stderr."""

    def __init__(
        self,
        proc: Popen[bytes],
        data: bytes,
        lines: _LineSplitter,
        tail: _Tail,
        on_flush: Callable[[], None] | None = None,
    ):
        assert proc.stdin and proc.stdout and proc.stderr
        self._pipes = (proc.stdin, proc.stdout, proc.stderr)
        self._started = False
        self.failed = threading.Event()  # set when on_line raised
        self.error: BaseException | None = None
        self._give_up = threading.Event()
        self._lines = lines
        self._on_flush = on_flush or (lambda: None)
        self._stdin, self._data = proc.stdin, data
        self._tail = tail
        # One thread drains both stdout and stderr: one thread start per run, not two.
        self._readers = [Thread(target=self._read, args=(proc.stdout, proc.stderr), daemon=True)]
        self._threads = list(self._readers)

    def start(self) -> None:
        """Feed stdin and start the readers; from then on each thread owns and closes its pipe."""
        for thread in self._readers:
            thread.start()
        if len(self._data) <= INLINE_STDIN_BYTES:  # fits any pipe buffer: cannot block
            _write_all(self._stdin, self._data)
        else:
            writer = Thread(target=_write_all, args=(self._stdin, self._data), daemon=True)
            self._threads.append(writer)
            writer.start()
        self._started = True

    def finish(self) -> None:
        """Wait for EOF on the pipes; give up on pipes an escaped process still holds."""
        if not self._started:
            for pipe in self._pipes:
                _close(pipe)
            return
        deadline = time.monotonic() + DRAIN_SECONDS
        for thread in self._readers:
            thread.join(max(deadline - time.monotonic(), 0))
        self._give_up.set()
        for thread in self._threads:
            thread.join(DRAIN_SECONDS)

    def _feed(self, chunk: bytes) -> None:
        self._lines.feed(chunk)
        self._on_flush()  # the lines of one read go on together

    def _read(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        try:
            _pump({stdout: self._feed, stderr: self._tail.feed}, self._give_up)
            self._lines.finish()
            self._on_flush()
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            self.error = exc
            self.failed.set()


def _write_all(pipe: IO[bytes], data: bytes) -> None:
    """Write the message and close stdin; an agent that never reads it must not hang us."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(pipe.fileno(), view) :]
    except OSError:
        pass  # BrokenPipeError: the agent exited or closed stdin, which is its right
    finally:
        _close(pipe)


def _pump(sinks: dict[IO[bytes], Callable[[bytes], None]], give_up: threading.Event) -> None:
    """Copy chunks from each pipe to its sink until EOF on all, or give_up and nothing left."""
    poller = select.poll()  # not select.select: a busy worker may hold fds above 1024
    by_fd = {pipe.fileno(): (pipe, sink) for pipe, sink in sinks.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    try:
        while by_fd:
            giving_up = give_up.is_set()
            ready = poller.poll(0 if giving_up else PIPE_POLL_MS)
            if not ready and giving_up:
                return  # an escaped process still holds a pipe but has nothing to say
            for fd, _ in ready:
                if chunk := os.read(fd, CHUNK_BYTES):
                    by_fd[fd][1](chunk)
                else:  # EOF
                    poller.unregister(fd)
                    _close(by_fd.pop(fd)[0])
    finally:
        for pipe, _ in by_fd.values():
            _close(pipe)


def _close(pipe: IO[bytes]) -> None:
    with contextlib.suppress(OSError):  # closing a broken pipe may report the breakage again
        pipe.close()


#: util-linux's setpriv sets the parent-death signal without a preexec_fn (which would make
#: every spawn a full fork of the worker instead of a vfork). Unlike `death_pact` it does not
#: re-check its parent after the prctl, so a worker killed in the millisecond between the spawn
#: and setpriv's prctl leaves the agent to init; under `agx workers` the pool's subreaper
#: (the orphan guard) covers that window, and every other exit path kills the group.
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


def _watch(pid: int, deadline: float, stop: threading.Event, failed: threading.Event) -> str:
    """Wait until the leader exits, the deadline passes, stop is set or failed is set."""
    pidfd = _pidfd(pid)
    try:
        while not _has_exited(pid):
            if failed.is_set():
                return "failed"
            if stop.is_set():
                return "stopped"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if pidfd is None:
                stop.wait(min(POLL_SECONDS, left))
            else:  # wakes the moment the agent exits, so its slot is freed at once
                select.select([pidfd], [], [], min(POLL_SECONDS, left))
        return "exited"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    """A pollable handle on the process (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


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
    on_flush: Callable[[], None] | None = None,
    die_with_parent: bool = True,
) -> RunOutcome:
    """Run argv with stdin_text on stdin, pass each stdout line to on_line, report how it ended.

    `on_flush` is called (on the reader thread) after the lines of each read from the pipe.
    `die_with_parent=False` skips the parent-death signal (and its cost) where a subreaper
    already kills what a dead worker leaves behind (`agx workers`).
    """
    started = time.monotonic()
    lines = _LineSplitter(on_line, max_line_bytes, max_total_bytes)
    tail = _Tail(STDERR_TAIL_BYTES)
    proc = _spawn(argv, workdir, env, die_with_parent)
    pipes = _Pipes(proc, stdin_text.encode(), lines, tail, on_flush)
    why = "error"
    try:
        if on_start is not None:
            on_start(proc.pid)  # before any on_line, so the caller can record the pid first
        pipes.start()
        why = _watch(proc.pid, started + timeout_seconds, stop or threading.Event(), pipes.failed)
        if why != "exited":
            _signal_group(proc.pid, signal.SIGINT)
            _watch(proc.pid, time.monotonic() + grace_seconds, threading.Event(), threading.Event())
    finally:
        # Every path ends here: whatever is left of the group, grandchildren included, dies.
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        pipes.finish()
    if pipes.error is not None:
        raise pipes.error
    killed = why != "exited" and proc.returncode < 0
    return RunOutcome(
        exit_code=None if killed else proc.returncode,
        timed_out=why == "timeout",
        stopped=why == "stopped",
        duration_ms=int((time.monotonic() - started) * 1000),
        truncated=lines.truncated,
        stderr_tail=tail.data.decode("utf-8", errors="replace"),
    )
