"""Dramatiq broker setup and the execution message, shared by producers and workers."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.middleware import TimeLimit, default_middleware

#: The one actor that runs executions; producers address it by name only.
ACTOR_NAME = "run_execution"
REDIS_NAMESPACE = "agx-dramatiq"  #: the Redis broker's key prefix

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker


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


#: agx's messages are transient: RabbitMQ keeps them in memory, never on disk. An execution
#: message is only a wake-up call carrying an id; the row in PostgreSQL is the truth, and what a
#: RabbitMQ restart drops is re-sent by the reaper (a waiter whose message never led to a run
#: is named again after `Slots.renotify_ms`; a pending row nobody knows is re-dispatched).
#: Measured on this project's 2-core box: a persistent confirmed message cost RabbitMQ 0.41 ms
#: of CPU and its publisher 0.31 ms, a transient one 0.12 ms and 0.22 ms.
DELIVERY_MODE = 1


class BatchPublisher:
    """Publishes several execution messages to RabbitMQ with publisher confirms, pipelined:
    every message goes out, then the broker's acks are collected (a batch costs about one
    round trip; Dramatiq's confirm mode waits for each message's ack before the next).

    One connection per thread, of its own: pika's BlockingChannel waits for each confirm, so
    the batch publishes on the asynchronous channel under it (`BlockingChannel._impl`, pika's
    `Channel`) and lets the blocking connection pump the acks in. The messages are the ones
    Dramatiq would send (same body, mandatory) to a queue declared the way Dramatiq declares
    it, but transient (see DELIVERY_MODE). A batch that fails is tried once more on a fresh
    connection (RabbitMQ drops one whose heartbeats went unanswered while it sat idle); a
    message the broker had already taken before the failure may then arrive twice, which the
    worker's claim of the row makes harmless.
    """

    def __init__(self, broker: RabbitmqBroker, url: str, timeout: float = 10.0):
        import pika

        self._broker, self._params, self._timeout = broker, pika.URLParameters(url), timeout
        #: each thread's connection, kept where `close` finds it (a connection left to the
        #: garbage collector is never closed); a dead thread's is closed when another opens
        self._channels: dict[threading.Thread, _ConfirmedChannel] = {}
        self._lock = threading.Lock()

    def publish(self, messages: Sequence[dramatiq.Message]) -> list[bool]:
        """Publish; per message True once the broker acked it, False when it was nacked,
        returned, or not confirmed (connection lost, or no answer within the timeout)."""
        import pika.exceptions

        if not messages:
            return []
        for tries_left in (1, 0):  # a connection kept idle may have been dropped: once more
            try:
                for queue in {m.queue_name for m in messages}:
                    self._broker.declare_queue(queue, ensure=True)
                return self._channel().send(messages, self._timeout)
            except (pika.exceptions.AMQPError, dramatiq.errors.BrokerError, OSError):
                self._drop(threading.current_thread())
                if not tries_left:
                    log.warning("batch publish of %d failed", len(messages), exc_info=True)
        return [False] * len(messages)

    def _channel(self) -> _ConfirmedChannel:
        me = threading.current_thread()
        channel = self._channels.get(me)
        if channel is None or not channel.is_open:
            self._drop(me)
            channel = _ConfirmedChannel(self._params)
            with self._lock:
                self._channels[me] = channel
                dead = [self._channels.pop(t) for t in list(self._channels) if not t.is_alive()]
            for stale in dead:
                stale.close()
        return channel

    def _drop(self, thread: threading.Thread) -> None:
        """Close `thread`'s connection (its next batch opens another)."""
        with self._lock:
            channel = self._channels.pop(thread, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        """Close every thread's connection (a thread that publishes again opens another)."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


class _ConfirmedChannel:
    """A connection and a channel in confirm mode whose acks are tracked by delivery tag."""

    def __init__(self, params: Any):
        import pika

        self.conn = pika.BlockingConnection(params)
        self.impl = self.conn.channel()._impl
        self.pending: set[int] = set()  #: delivery tags published and not answered yet
        self.outcome: dict[int, bool] = {}  #: delivery tag -> acked, until `send` reads it
        self.returned: set[bytes] = set()
        self.next_tag = 1
        selected: list[bool] = []
        self.impl.add_on_return_callback(lambda _ch, _m, _p, body: self.returned.add(body))
        self.impl.confirm_delivery(self._on_confirm, callback=lambda _frame: selected.append(True))
        self._pump(lambda: bool(selected), 10.0)

    @property
    def is_open(self) -> bool:
        return bool(self.conn.is_open and self.impl.is_open)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked, last = method.NAME == "Basic.Ack", method.delivery_tag
        answered = [t for t in self.pending if t <= last] if method.multiple else [last]
        for tag in answered:
            if tag in self.pending:
                self.pending.discard(tag)
                self.outcome[tag] = acked

    def _pump(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.001)

    def send(self, messages: Sequence[dramatiq.Message], timeout: float) -> list[bool]:
        """Publish every message, then wait for their confirms."""
        import pika

        first, bodies = self.next_tag, [m.encode() for m in messages]
        for message, body in zip(messages, bodies, strict=True):
            properties = pika.BasicProperties(delivery_mode=DELIVERY_MODE)
            self.impl.basic_publish("", message.queue_name, body, properties, mandatory=True)
        self.next_tag += len(messages)
        tags = range(first, self.next_tag)
        self.pending.update(tags)
        self._pump(lambda: not self.pending, timeout)
        if self.pending:  # no answer in time: this channel's count can no longer be trusted
            raise TimeoutError(f"{len(self.pending)} publishes unconfirmed after {timeout} s")
        answers = [self.outcome.pop(tag) for tag in tags]
        return [ok and body not in self.returned for ok, body in zip(answers, bodies, strict=True)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
