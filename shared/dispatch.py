"""Sending execution ids to the workers: publish, or leave it for the reaper.

A message that cannot be sent is never an error for the caller: the row in PostgreSQL is
the truth, and the reaper re-sends what nobody sent (its re-dispatch of pending rows nobody
holds or waits for, and its promotion of waiters that fit in free slots).
"""

from __future__ import annotations

import logging

from shared.services import Services

log = logging.getLogger(__name__)


def send(services: Services, execution_id: str, agent: str | None = None) -> bool:
    """Publish the id; on any broker failure log it and return False (the reaper re-sends)."""
    try:
        services.publish(execution_id, agent)
        return True
    except Exception:  # any broker failure: the row is the truth, the reaper re-sends
        log.warning(
            "publish of execution %s failed; the reaper will re-send it",
            execution_id,
            exc_info=True,
        )
        return False


def promote(services: Services, heads: list[str], agent: str) -> list[str]:
    """Publish the promoted waiters `heads`; returns those sent (the reaper sends the rest)."""
    return [head for head in heads if send(services, head, agent)]
