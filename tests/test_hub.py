"""The per-process event hub: a slow client lags and catches up; others are not stalled."""

from __future__ import annotations

import threading

from api.follow import follow
from api.hub import MAX_BUFFERED_EVENTS, Hub
from shared import events


def _ids(batches):
    return [e["id"] for batch in batches for e in batch]


def test_a_slow_client_is_bounded_catches_up_from_the_stream_and_does_not_stall_others(services):
    hub = Hub(services.redis)
    eid = "hub-test"
    events.emit(services.redis, eid, [events.status_event(1, "running")])
    slow = follow(services, hub, eid, 0, keepalive_seconds=0.2)
    assert _ids([next(slow)]) == [1]  # subscribed and caught up; now it stops reading
    fast_seen: list[int] = []
    fast_ready = threading.Event()

    def fast_reader() -> None:
        for batch in follow(services, hub, eid, 1, keepalive_seconds=0.2):
            if not batch:
                fast_ready.set()
            fast_seen.extend(e["id"] for e in batch)

    reader = threading.Thread(target=fast_reader, daemon=True)
    reader.start()
    fast_ready.wait(5)
    total = 3 * MAX_BUFFERED_EVENTS
    for start in range(2, total + 2, 50):
        events.emit(
            services.redis,
            eid,
            [events.line_event(i, f"line {i}") for i in range(start, start + 50)],
        )
    events.emit(services.redis, eid, [events.status_event(total + 2, "completed")], final=True)
    reader.join(30)
    assert fast_seen == list(range(2, total + 3)), "the fast client got everything, in order"
    subs = [s for group in hub._subs.values() for s in group]
    assert all(s._buffered <= MAX_BUFFERED_EVENTS for s in subs)
    assert any(s.lagged for s in subs), "the slow client was cut off from live delivery"
    rest = _ids(b for b in slow if b)
    assert rest == list(range(2, total + 3)), "and caught up from the stream without loss"
    hub.close()
