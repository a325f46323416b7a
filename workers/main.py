"""Dramatiq entry module (`dramatiq workers.main`): sets the broker, then declares the actor."""

from __future__ import annotations

import logging
import os

import dramatiq

from shared.broker import ACTOR_NAME, setup_broker
from shared.fleet import Presence
from shared.logs import reformat, write_directly
from shared.services import Services
from shared.settings import Settings
from workers.drain import Drain
from workers.executor import Executor

settings = Settings.from_env().require()
broker = setup_broker(settings.effective_broker_url)
# Every worker write is a single compare-and-set statement: autocommit saves BEGIN/COMMIT.
services = Services(settings, pool_size=16, pre_ping=False, autocommit=True)
services.broker = broker  # publish promotions on the worker's own connection
executor = Executor(services)
drain = Drain(executor.heartbeats, settings.drain_seconds)
drain.install()  # SIGTERM: stop taking messages; a second one shortens the grace
Presence(
    services.redis,
    "worker",
    lambda: {
        "threads": os.environ.get("AGX_WORKER_THREADS", "?"),
        "busy": len(executor.heartbeats.current()),
    },
).start()


class _Drain(dramatiq.Middleware):
    """On shutdown, promoted waiters are published for other workers, not run here, and
    running agents have the drain's grace to finish (workers/drain.py)."""

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        executor.stopping.set()
        drain.start()


broker.add_middleware(_Drain())

logging.getLogger("pika").setLevel(logging.WARNING)
# Dramatiq set this process's logging up: keep its pid/thread prefix for text, or go JSON.
reformat("[PID %(process)d] [%(threadName)s] %(levelname)s %(name)s: %(message)s")
write_directly()  # to the pool's stderr, not through Dramatiq's relay (shared/logs.py)


@dramatiq.actor(actor_name=ACTOR_NAME, queue_name=settings.queue, max_retries=0)
def run_execution(execution_id: str, agent: str | None = None) -> None:
    """Run one execution by id; agent runs are never retried blindly."""
    executor.handle(execution_id, agent)
