"""`agx workers`: the Dramatiq worker pool under a subreaper that leaves no orphan behind.

If a worker process is killed with SIGKILL, its agent dies too (parent-death signal, armed
for every run, so it holds even when this process dies with the pool's whole process group),
but anything the agent started would be re-parented to init and live on. This process marks
itself a child subreaper, so such orphans are re-parented here instead, and kills them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from shared.linux import become_subreaper

SCAN_SECONDS = 0.5  #: how often orphans are looked for


def _children() -> list[int]:
    """Pids whose parent is this process (read from /proc; empty where there is none)."""
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


def _kill_orphans(master: int) -> None:
    """SIGKILL and reap every child that is not the Dramatiq master: they are orphans."""
    for pid in _children():
        if pid == master:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def run_pool(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the Dramatiq CLI as our child; forward stop signals; kill orphans; return its code."""
    become_subreaper()
    master = subprocess.Popen(list(argv), env=dict(env))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: master.send_signal(signum))
    while master.poll() is None:
        _kill_orphans(master.pid)
        time.sleep(SCAN_SECONDS)
    for _ in range(100):  # killing an orphan re-parents its children here: repeat until none
        if not _children():
            break
        _kill_orphans(master.pid)
        time.sleep(0.02)
    return master.returncode if master.returncode >= 0 else 128 - master.returncode
