"""One dispatch path: publish, or leave the execution to the reaper; one terminal event."""

from __future__ import annotations

from dataclasses import replace

from shared import dispatch, events, keys
from shared.services import Services
from tests.conftest import queued_messages


def test_a_send_the_broker_cannot_take_returns_false_instead_of_raising(settings):
    away = Services(replace(settings, broker_url="redis://127.0.0.1:1/0"), pool_size=1)
    try:
        assert dispatch.send(away, "ex-1", "demo") is False
        assert dispatch.promote(away, ["ex-2", "ex-3"], "demo") == [], "the reaper sends them"
    finally:
        away.close()


def test_promote_names_the_waiters_it_sent(services, settings):
    assert dispatch.promote(services, ["ex-4", "ex-5"], "demo") == ["ex-4", "ex-5"]
    assert dispatch.send(services, "ex-6") is True
    assert queued_messages(settings) == 3


def test_the_terminal_event_follows_the_newest_event_of_the_stream(services):
    client = services.redis
    events.emit_terminal(client, "quiet", "cancelled", error="stopped by request")
    events.emit(client, "busy", [events.status_event(1, "running"), events.line_event(2, "x")])
    events.emit_terminal(client, "busy", "failed", error="worker lost", response=None)
    assert events.read_stream(client, "quiet", 0) == [
        {"id": 1, "type": "status", "status": "cancelled", "error": "stopped by request"}
    ]
    assert events.read_stream(client, "busy", 2) == [
        {"id": 3, "type": "status", "status": "failed", "error": "worker lost", "response": None}
    ]
    assert client.ttl(keys.events_stream("busy")) > 0, "a final event sets the stream's expiry"
