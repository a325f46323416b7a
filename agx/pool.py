"""`agx workers`: the Dramatiq worker pool under a subreaper that leaves no orphan behind.

If a worker process is killed with SIGKILL, its agent dies too (parent-death signal, armed
for every run, so it holds even when this process dies with the pool's whole process group),
but anything the agent started would be re-parented to init and live on. This process marks
itself a child subreaper, so such orphans are re-parented here instead, and kills them.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from shared.linux import become_subreaper
from workers.groups import SOCKET_ENV

SCAN_SECONDS = 0.5  #: how often orphans are looked for


def _children() -> list[int]:
    """Pids whose parent is this process: from each of our threads' `children` file (Linux
    3.5+), else by reading every process's /proc stat (a scan of the whole host)."""
    try:
        found = list[int]()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", "rb") as children:
                found += [int(pid) for pid in children.read().split()]
        return found
    except OSError:
        return _children_by_scan()


def _children_by_scan() -> list[int]:
    """Pids whose parent is this process, read from every process's /proc stat (empty where
    there is no /proc)."""
    me, found = os.getpid(), list[int]()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(name))
    return found


def _kill_orphans(*ours: int) -> None:
    """SIGKILL and reap every child but ours (the Dramatiq master, the guardian): orphans."""
    for pid in _children():
        if pid in ours:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def run_pool(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the Dramatiq CLI as our child; forward stop signals; kill orphans; return its code."""
    become_subreaper()
    guardian, address = _start_guardian()
    master = subprocess.Popen(list(argv), env={**env, SOCKET_ENV: address})
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: master.send_signal(signum))
    while master.poll() is None:
        _kill_orphans(master.pid, guardian.pid)
        time.sleep(SCAN_SECONDS)
    for _ in range(100):  # killing an orphan re-parents its children here: repeat until none
        if not [pid for pid in _children() if pid != guardian.pid]:
            break
        _kill_orphans(guardian.pid)
        time.sleep(0.02)
    assert guardian.stdin is not None
    guardian.stdin.close()  # the pool is gone: the guardian leaves once its workers have
    guardian.wait()
    return master.returncode if master.returncode >= 0 else 128 - master.returncode


def _start_guardian() -> tuple[subprocess.Popen[bytes], str]:
    """The guardian, in a session of its own (a kill of the pool's group does not reach it),
    listening on a fresh abstract socket; its stdin is our pipe, so it sees us die."""
    address = f"agx-guard-{os.getpid()}-{secrets.token_hex(8)}"
    guardian = subprocess.Popen(
        [sys.executable, "-m", "agx.guardian", address],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not _listening(address) and time.monotonic() < deadline:
        time.sleep(0.01)
    return guardian, address


def _listening(address: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect("\0" + address)
            return True
        except OSError:
            return False
