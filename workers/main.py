"""Dramatiq entry module (`dramatiq workers.main`): sets the broker, then declares the actor."""

from __future__ import annotations

import logging

import dramatiq

from shared.broker import ACTOR_NAME, setup_broker
from shared.services import Services
from shared.settings import Settings
from workers.executor import Executor

settings = Settings.from_env().require()
broker = setup_broker(settings.effective_broker_url)
# Every worker write is a single compare-and-set statement: autocommit saves BEGIN/COMMIT.
services = Services(settings, pool_size=16, pre_ping=False, autocommit=True)
services.broker = broker  # publish promotions on the worker's own connection
executor = Executor(services)


class _StopRunningWaiters(dramatiq.Middleware):
    """On shutdown, promoted waiters are published for other workers, not run here."""

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        executor.stopping.set()


broker.add_middleware(_StopRunningWaiters())

logging.getLogger("pika").setLevel(logging.WARNING)


@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=settings.queue, max_retries=0)
def run_execution(execution_id: str, agent: str | None = None) -> None:
    """Run one execution by id; agent runs are never retried blindly."""
    executor.handle(execution_id, agent)
