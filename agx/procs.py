"""Child-process helpers: a child that dies with its parent, and a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from shared.linux import death_pact


def spawn(
    argv: Sequence[str], env: Mapping[str, str] | None = None, log: int | None = None
) -> subprocess.Popen[bytes]:
    """Start a service child in its own process group; it gets SIGTERM if we die."""
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
        preexec_fn=death_pact(signal.SIGTERM),
    )


def stop(proc: subprocess.Popen[bytes], grace_seconds: float = 20.0) -> None:
    """SIGTERM the child's group, wait, then SIGKILL the group."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        break
    with contextlib.suppress(ProcessLookupError):  # leftovers in the group go too
        os.killpg(proc.pid, signal.SIGKILL)
