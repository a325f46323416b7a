"""Linux process controls (prctl) used to leave no process behind; no-ops elsewhere."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """Return libc's prctl, or None where there is no such thing."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def death_pact(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A pre-exec hook making the child get `sig` when the forking thread's process dies.

    The kernel sends it when the *thread* that forked exits: call from a long-lived thread.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the pact was made
            os.kill(os.getpid(), sig)

    return hook


def become_subreaper() -> bool:
    """Adopt orphaned descendants (instead of init); False where unsupported."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
