"""The samples folder of a process tree's Prometheus metrics (see shared/metrics.py).

Kept apart from shared/metrics.py on purpose: prometheus-client decides at import whether
it runs multi-process, so the folder must be set before anything imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiproc(kind: str) -> Path:
    """Give this process tree a fresh samples folder (unless one is configured: then empty
    it); call it before any child starts."""
    configured = os.environ.get(MULTIPROC_ENV)
    folder = Path(configured or tempfile.gettempdir()) / (
        "" if configured else f"agx-metrics-{kind}-{os.getpid()}"
    )
    if folder.exists():
        for leftover in folder.glob("*.db"):
            leftover.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def forget_tree(folder: Path) -> None:
    """Remove a tree's samples folder when the tree ends (one agx made for it only, and only
    in the process that made it: a forked child, such as a gunicorn worker unwinding its copy
    of the master's stack on exit, must not take the live processes' samples with it)."""
    if folder.name.startswith("agx-metrics-") and folder.name.endswith(f"-{os.getpid()}"):
        shutil.rmtree(folder, ignore_errors=True)
