"""Bulk publishes: confirmed together on RabbitMQ, in order, and never an error for the caller."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import dramatiq
import pika
import pytest

from producer import Task, submit_many
from shared.broker import ACTOR_NAME
from shared.services import Services
from tests.conftest import queued_messages


def _drain(settings, count: int) -> list[dramatiq.Message]:
    """Take `count` messages off the executions queue, in order."""
    return [message for _props, message in _take(settings, count)]


def _take(settings, count: int) -> list[tuple[pika.BasicProperties, dramatiq.Message]]:
    """Take `count` messages off the executions queue, in order, with their properties."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.effective_broker_url))
    try:
        channel = conn.channel()
        taken = []
        for _ in range(count):
            _method, props, body = channel.basic_get(settings.queue, auto_ack=True)
            assert body is not None, f"only {len(taken)} messages of {count}"
            taken.append((props, dramatiq.Message.decode(body)))
        return taken
    finally:
        conn.close()


def test_execution_messages_are_transient_whether_sent_alone_or_in_a_batch(settings, services):
    """The row is the truth: RabbitMQ keeps agx's messages in memory only (what a restart drops
    is re-sent: tests/test_stop_and_faults.py)."""
    if services.batches is None:
        pytest.skip("RabbitMQ's delivery mode")
    services.publish("ex-alone", "demo")
    assert services.publish_many([("ex-batch", "demo")]) == [True]
    taken = _take(settings, 2)
    assert [list(m.args) for _p, m in taken] == [["ex-alone", "demo"], ["ex-batch", "demo"]]
    assert [p.delivery_mode for p, _m in taken] == [1, 1]


def test_a_batch_is_confirmed_and_arrives_in_order_as_the_workers_read_it(settings, services):
    if services.batches is None:
        pytest.skip("batches are RabbitMQ's (the Redis broker publishes one by one)")
    ids = [f"ex-{i:03d}" for i in range(300)]
    assert services.publish_many([(eid, "demo") for eid in ids]) == [True] * 300
    assert services.publish_many([(eid, "demo") for eid in ids[:2]]) == [True, True]
    messages = _drain(settings, 302)
    assert [list(m.args) for m in messages[:300]] == [[eid, "demo"] for eid in ids]
    assert {m.actor_name for m in messages} == {ACTOR_NAME}
    assert {m.queue_name for m in messages} == {settings.queue}


def test_a_batch_the_broker_cannot_take_is_false_for_each_never_an_error(settings):
    if not settings.effective_broker_url.startswith("amqp"):
        pytest.skip("batches are RabbitMQ's")
    away = Services(replace(settings, broker_url="amqp://guest:guest@127.0.0.1:1/%2F"))
    try:
        assert away.publish_many([("ex-1", "demo"), ("ex-2", "demo")]) == [False, False]
    finally:
        away.close()


def test_a_bulk_submission_publishes_those_that_fit_free_slots_and_parks_the_rest(
    settings, services, make_agent
):
    make_agent("demo", max_parallel_tasks=40, queue_limit=100)
    submitted = submit_many(services, "demo", [Task(f"task {i}") for i in range(60)])
    assert [s.publication.value for s in submitted] == ["sent"] * 40 + ["parked"] * 20
    assert queued_messages(settings) == 40
    if settings.effective_broker_url.startswith("amqp"):
        sent = [m.args[0] for m in _drain(settings, 40)]
        assert sent == [s.execution.id for s in submitted[:40]]


def test_a_batch_connection_that_died_while_idle_is_replaced_and_nothing_is_lost(settings):
    """RabbitMQ drops a connection whose heartbeats went unanswered while it sat idle: the next
    batch goes out on a fresh one, each message once."""
    if not settings.effective_broker_url.startswith("amqp"):
        pytest.skip("batches are RabbitMQ's")
    url = settings.effective_broker_url
    fast = Services(
        replace(settings, broker_url=url + ("&" if "?" in url else "?") + "heartbeat=1")
    )
    try:
        assert fast.publish_many([("ex-1", "a"), ("ex-2", "a")]) == [True, True]
        time.sleep(4)  # one-second heartbeats, none answered: the connection is dropped
        assert fast.publish_many([("ex-3", "a"), ("ex-4", "a")]) == [True, True]
    finally:
        fast.close()
    assert [m.args[0] for m in _drain(settings, 4)] == ["ex-1", "ex-2", "ex-3", "ex-4"]
    assert queued_messages(settings) == 0, "each once"


def test_a_dead_threads_connection_is_closed_and_close_closes_every_threads(settings):
    """Each thread publishes on a connection of its own; none is left to the garbage
    collector (which would never close it)."""
    if not settings.effective_broker_url.startswith("amqp"):
        pytest.skip("batches are RabbitMQ's")
    svc = Services(settings)
    opened = []

    def publish_once(eid: str) -> None:
        svc.publish(eid, "a")
        opened.append(svc.batches._channels[threading.current_thread()])  # type: ignore[union-attr]

    try:
        for eid in ("ex-1", "ex-2"):  # one thread after the other: the first has ended
            thread = threading.Thread(target=publish_once, args=(eid,))
            thread.start()
            thread.join()
        first, second = opened
        assert not first.is_open, "the dead thread's connection was closed"
        assert second.is_open
    finally:
        svc.close()
    assert not second.is_open
    assert [m.args[0] for m in _drain(settings, 2)] == ["ex-1", "ex-2"]
