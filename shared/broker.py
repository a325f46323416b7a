"""Dramatiq broker setup and the execution message, shared by producers and workers."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import TimeLimit, default_middleware

#: The one actor that runs executions; producers address it by name only.
ACTOR_NAME = "run_execution"
REDIS_NAMESPACE = "agx-dramatiq"  #: the Redis broker's key prefix


def make_broker(url: str) -> dramatiq.Broker:
    """RabbitMQ (publisher confirms) for amqp:// URLs, Dramatiq's Redis broker for redis://."""
    # The runner owns time: Dramatiq's TimeLimit cannot interrupt a blocked pipe read.
    middleware = [m() for m in default_middleware if m is not TimeLimit]
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=REDIS_NAMESPACE, middleware=middleware)
    raise ValueError(f"AGX_BROKER_URL must be amqp:// or redis://, got {url.split('://')[0]}://")


def setup_broker(url: str) -> dramatiq.Broker:
    """Create the process-wide broker and make it Dramatiq's global one."""
    broker = make_broker(url)
    dramatiq.set_broker(broker)
    return broker


def execution_message(queue: str, execution_id: str, agent: str | None = None) -> dramatiq.Message:
    """The message for the worker actor: the execution id, and its agent's name so the worker
    can take a slot before it reads the row."""
    return dramatiq.Message(
        queue_name=queue,
        actor_name=ACTOR_NAME,
        args=(execution_id, agent) if agent else (execution_id,),
        kwargs={},
        options={},
    )


def publish(
    broker: dramatiq.Broker, queue: str, execution_id: str, agent: str | None = None
) -> None:
    """Publish an execution id; raises when the broker did not confirm it."""
    broker.enqueue(execution_message(queue, execution_id, agent))


def queue_depth(url: str, queue: str) -> tuple[int, int | None]:
    """Messages ready in the execution queue and its consumers (None: the Redis broker has no
    notion of consumers; count live workers instead). Raises when the broker is away."""
    if url.startswith(("amqp://", "amqps://")):
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            declared = conn.channel().queue_declare(queue=queue, passive=True)
            return declared.method.message_count, declared.method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:  # never declared: no worker ever ran
            return 0, 0
        finally:
            if conn.is_open:
                conn.close()
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.llen(f"{REDIS_NAMESPACE}:{queue}")), None  # type: ignore[arg-type]
    finally:
        client.close()
