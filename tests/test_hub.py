"""The per-process event hub: a slow client lags and catches up; others are not stalled."""

from __future__ import annotations

import threading

from api.follow import follow
from api.hub import MAX_BUFFERED_BATCHES, Hub
from shared import events


def test_a_slow_client_is_bounded_catches_up_from_the_stream_and_does_not_stall_others(services):
    hub = Hub(services.redis)
    eid = "hub-test"
    events.emit(services.redis, eid, [events.status_event(1, "running")])
    slow = follow(services, hub, eid, 0, keepalive_seconds=0.2)
    assert next(slow)["id"] == 1  # subscribed and caught up; now it stops reading
    fast_seen: list[int] = []
    fast_ready = threading.Event()

    def fast_reader() -> None:
        for event in follow(services, hub, eid, 1, keepalive_seconds=0.2):
            if event is None:
                fast_ready.set()
                continue
            fast_seen.append(event["id"])

    reader = threading.Thread(target=fast_reader, daemon=True)
    reader.start()
    fast_ready.wait(5)
    total = 3 * MAX_BUFFERED_BATCHES
    for i in range(2, total + 2):
        events.emit(services.redis, eid, [events.line_event(i, f"line {i}")])
    events.emit(services.redis, eid, [events.status_event(total + 2, "completed")], final=True)
    reader.join(30)
    assert fast_seen == list(range(2, total + 3)), "the fast client got everything, in order"
    subs = [s for group in hub._subs.values() for s in group]
    assert all(len(s._batches) <= MAX_BUFFERED_BATCHES for s in subs)
    assert any(s.lagged for s in subs), "the slow client was cut off from live delivery"
    rest = [e["id"] for e in slow if e is not None]
    assert rest == list(range(2, total + 3)), "and caught up from the stream without loss"
    hub.close()
