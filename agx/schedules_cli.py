"""`agx schedules ...` and `agx scheduler` (filled in by the schedules work)."""

from __future__ import annotations

import click


@click.group()
def schedules() -> None:
    """Manage cron schedules."""
