"""Event batching: a run's events share Redis round trips, yet none waits long to be seen."""

from __future__ import annotations

import json
import sys
import threading
import time

import redis as redis_lib

from shared import keys
from shared.events import LINGER_SECONDS, MAX_BATCH, EventWriter, read_stream
from shared.script_batch import ScriptBatch
from shared.slots import Slots, decode_heads
from workers.runner import run_agent


def _stream(client: redis_lib.Redis, eid: str) -> list[dict]:
    return read_stream(client, eid, 0, 100_000)


def test_a_silent_agent_still_shows_running_at_once(private_redis):
    """The `running` event waits for company at most LINGER_SECONDS, not for the agent."""
    client = redis_lib.Redis.from_url(private_redis.url)
    events = EventWriter(client, "silent")
    events.status("running", attempt=1)
    seen: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _stream(client, "silent"):
            time.sleep(0.005)
        seen.append(time.monotonic())

    started = time.monotonic()
    watcher = threading.Thread(target=watch)
    watcher.start()
    outcome = run_agent(
        [sys.executable, "-c", "import time; time.sleep(3)"],
        stdin_text="",
        on_line=events.line,
        on_flush=events.tick,
        timeout_seconds=30,
    )
    watcher.join()
    assert outcome.exit_code == 0
    # Within the linger (plus start-up slack on a busy machine), long before the 3 s run ends.
    assert seen and seen[0] - started < LINGER_SECONDS + 1.0, "running shown only at the end"
    assert [e["status"] for e in _stream(client, "silent")] == ["running"]


def test_a_burst_of_lines_is_sent_in_batches_in_order(private_redis):
    client = redis_lib.Redis.from_url(private_redis.url)
    pubsub = client.pubsub()
    pubsub.subscribe(keys.events_channel("burst"))
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    events = EventWriter(client, "burst")
    events.status("running", attempt=1)
    count = 3 * MAX_BATCH + 7
    code = f"for i in range({count}): print('line', i)"
    run_agent(
        [sys.executable, "-c", code],
        stdin_text="",
        on_line=events.line,
        on_flush=events.tick,
        timeout_seconds=30,
    )
    events.close("completed")
    stored = _stream(client, "burst")
    assert [e["id"] for e in stored] == list(range(1, count + 3))
    assert [e["line"] for e in stored[1:-1]] == [f"line {i}" for i in range(count)]
    messages = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        messages.append(json.loads(message["data"]))
    assert [e["id"] for batch in messages for e in batch] == list(range(1, count + 3))
    assert len(messages) < count / 50, f"{len(messages)} publishes for {count} lines"
    assert all(len(batch) <= MAX_BATCH for batch in messages)


def test_a_batch_reloads_scripts_that_redis_forgot(private_redis):
    """After SCRIPT FLUSH (as after a Redis restart) the batch still runs each script once."""
    client = redis_lib.Redis.from_url(private_redis.url)
    slots = Slots(client, lease_seconds=30)
    slots.mark_restored()  # as after the rebuild from PostgreSQL
    assert slots.acquire("a", "e1", 1, 60).admitted
    assert not slots.acquire("a", "e2", 1, 60).admitted
    events = EventWriter(client, "e1")
    events.status("running", attempt=1)
    events.line("hello")
    client.script_flush()
    batch = ScriptBatch(client)
    slots.release("a", "e1", 1, batch)
    events.close("completed", via=batch)
    assert decode_heads(batch.execute()[0]) == ["e2"]
    assert [e["id"] for e in _stream(client, "e1")] == [1, 2, 3]
    assert not slots.holds("a", "e1") and not slots.holds("a", "e2")
