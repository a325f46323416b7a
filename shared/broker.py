"""Dramatiq broker setup and the execution message, shared by producers and workers."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import TimeLimit, default_middleware

#: The one actor that runs executions; producers address it by name only.
ACTOR_NAME = "run_execution"


def make_broker(url: str) -> dramatiq.Broker:
    """RabbitMQ (publisher confirms) for amqp:// URLs, Dramatiq's Redis broker for redis://."""
    # The runner owns time: Dramatiq's TimeLimit cannot interrupt a blocked pipe read.
    middleware = [m() for m in default_middleware if m is not TimeLimit]
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace="agx-dramatiq", middleware=middleware)
    raise ValueError(f"AGX_BROKER_URL must be amqp:// or redis://, got {url.split('://')[0]}://")


def setup_broker(url: str) -> dramatiq.Broker:
    """Create the process-wide broker and make it Dramatiq's global one."""
    broker = make_broker(url)
    dramatiq.set_broker(broker)
    return broker


def execution_message(queue: str, execution_id: str) -> dramatiq.Message:
    """The message that carries one execution id to the worker actor."""
    return dramatiq.Message(
        queue_name=queue, actor_name=ACTOR_NAME, args=(execution_id,), kwargs={}, options={}
    )


def publish(broker: dramatiq.Broker, queue: str, execution_id: str) -> None:
    """Publish an execution id; raises when the broker did not confirm it."""
    broker.enqueue(execution_message(queue, execution_id))
