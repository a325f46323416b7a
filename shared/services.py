"""The per-process handles on PostgreSQL, Redis and the broker, built once from settings."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import dramatiq
import redis
from dramatiq.errors import BrokerError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.broker import BatchPublisher, execution_message, make_broker, publish
from shared.combine import Combiner
from shared.db import DirectConnections, make_engine, make_sessionmaker
from shared.script_batch import close_lanes
from shared.settings import Settings
from shared.slots import Slots


@dataclass
class Services:
    """Lazily connected clients for one process; pass it down instead of using globals."""

    settings: Settings
    pool_size: int = 10
    #: ping each pooled connection before use (survives a PostgreSQL restart at one round trip
    #: per transaction; workers turn it off and let the reaper recover what a broken one fails)
    pre_ping: bool = True
    #: every statement its own transaction (for callers that only ever write one at a time)
    autocommit: bool = False
    #: agents whose whole queue limit the producer lately saw within its lock margin -> when
    #: (their submissions go straight to the locked path: producer/submit.py)
    small_limits: dict[str, float] = field(default_factory=dict, repr=False)
    #: the producer's combiner of concurrent lock-free submissions (producer/submit.py)
    submissions: Combiner[Any, Any] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def engine(self) -> Engine:
        """The SQLAlchemy engine."""
        assert self.settings.database_url, "AGX_DATABASE_URL is not set"
        return make_engine(
            self.settings.database_url, self.pool_size, self.pre_ping, self.autocommit
        )

    @cached_property
    def connections(self) -> DirectConnections:
        """Kept-open psycopg connections for the hot single statements (submit, claim, finish),
        pinged after an idle spell when `pre_ping` is on."""
        assert self.settings.database_url, "AGX_DATABASE_URL is not set"
        return DirectConnections(self.settings.database_url, ping=self.pre_ping)

    @cached_property
    def Session(self) -> sessionmaker[Session]:  # noqa: N802 - it is a session factory
        """The one sessionmaker of this process."""
        return make_sessionmaker(self.engine)

    @cached_property
    def redis(self) -> redis.Redis:
        """Redis client for slots, waiting lists and events."""
        assert self.settings.redis_url, "AGX_REDIS_URL is not set"
        return redis.Redis.from_url(self.settings.redis_url, health_check_interval=30)

    @cached_property
    def slots(self) -> Slots:
        """Slot leases and waiting lists."""
        return Slots(self.redis, self.settings.lease_seconds, self.settings.lease_buffer_seconds)

    @cached_property
    def broker(self) -> dramatiq.Broker:
        """The broker to publish on (the global one when this process already set it)."""
        with self._lock:
            return make_broker(self.settings.effective_broker_url)

    @cached_property
    def batches(self) -> BatchPublisher | None:
        """Confirmed batch publishing on RabbitMQ (None on the Redis broker)."""
        url = self.settings.effective_broker_url
        if not url.startswith(("amqp://", "amqps://")):
            return None
        return BatchPublisher(self.broker, url)  # type: ignore[arg-type]

    def publish_many(self, items: Sequence[tuple[str, str | None]]) -> list[bool]:
        """Publish (execution id, agent) pairs, confirmed together on RabbitMQ: per pair,
        whether the broker took it (never raises)."""
        messages = [execution_message(self.settings.queue, eid, agent) for eid, agent in items]
        assert self.batches is not None, "batches are for RabbitMQ"
        return self.batches.publish(messages)

    def publish(self, execution_id: str, agent: str | None = None) -> None:
        """Publish an execution id to the executions queue (raises when not confirmed); on
        RabbitMQ as a batch of one (a transient message: `shared.broker.DELIVERY_MODE`)."""
        if self.batches is None:
            publish(self.broker, self.settings.queue, execution_id, agent)
        elif not self.publish_many([(execution_id, agent)])[0]:
            raise BrokerError(f"the broker did not confirm execution {execution_id}")

    def close(self) -> None:
        """Release connections (engine pool, Redis, broker)."""
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "connections" in self.__dict__:
            self.connections.close()
        if "redis" in self.__dict__:
            close_lanes(self.redis)
            self.redis.close()
        if self.__dict__.get("batches") is not None:
            self.batches.close()  # type: ignore[union-attr]
        if "broker" in self.__dict__:
            self.broker.close()
