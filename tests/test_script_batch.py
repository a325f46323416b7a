"""Scripts on each thread's own Redis connection: what redis-py's client would have done still
happens (retries, error replies, forgotten scripts), and the connections are accounted for."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import redis as redis_lib

from shared.script_batch import ScriptBatch, close_lanes, run_script

ECHO = "return {KEYS[1], ARGV[1]}"


def _connections(admin: redis_lib.Redis) -> int:
    return sum(1 for c in admin.client_list() if c["cmd"] != "client|list")


def test_a_connection_redis_dropped_while_idle_costs_no_failed_call(private_redis):
    """As with the client's pool: a thread's connection that Redis closed (a restart, an idle
    timeout, a killed client) is made anew before the next call."""
    admin = redis_lib.Redis.from_url(private_redis.url)
    client = redis_lib.Redis.from_url(private_redis.url)
    echo = client.register_script(ECHO)
    client.script_load(ECHO)
    assert run_script(client, echo, ["k"], [1]) == [b"k", b"1"]
    admin.client_kill_filter(_type="normal", skipme=True)
    assert run_script(client, echo, ["k"], [2]) == [b"k", b"2"]
    private_redis.stop()
    with pytest.raises(redis_lib.ConnectionError):
        run_script(client, echo, ["k"], [3])
    private_redis.start()  # empty: the script is loaded again by the call
    assert run_script(client, echo, ["k"], [4]) == [b"k", b"4"]


def test_an_error_reply_raises_and_the_connection_stays_in_step(private_redis):
    """A batch whose first script fails raises that error, yet reads the others' answers: the
    thread's next call gets its own answer, not a leftover."""
    client = redis_lib.Redis.from_url(private_redis.url)
    echo = client.register_script(ECHO)
    boom = client.register_script("return redis.error_reply('boom')")
    client.script_load(echo.script)
    client.script_load(boom.script)  # known: its failure is the error reply itself
    batch = ScriptBatch(client)
    batch.add(boom, [], [])
    batch.add(echo, ["k"], ["after"])
    with pytest.raises(redis_lib.ResponseError, match="boom"):
        batch.execute()
    assert run_script(client, echo, ["k"], ["next"]) == [b"k", b"next"]


def test_a_script_redis_forgot_is_loaded_and_run_once(private_redis):
    client = redis_lib.Redis.from_url(private_redis.url)
    count = client.register_script("return redis.call('INCR', KEYS[1])")
    assert run_script(client, count, ["n"], []) == 1
    client.script_flush()
    assert run_script(client, count, ["n"], []) == 2
    assert client.get("n") == b"2"


def test_each_thread_keeps_one_connection_and_close_lanes_closes_them(private_redis):
    admin = redis_lib.Redis.from_url(private_redis.url)
    client = redis_lib.Redis.from_url(private_redis.url)
    echo = client.register_script(ECHO)
    client.script_load(ECHO)
    before = _connections(admin)

    together = threading.Barrier(4)

    def work() -> None:
        together.wait()  # all alive at once: none's connection is taken for a finished one's
        for i in range(20):
            assert run_script(client, echo, ["k"], [i]) == [b"k", str(i).encode()]
        together.wait()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _connections(admin) == before + 4
    close_lanes(client)
    deadline = time.monotonic() + 5  # Redis counts a closed connection out a moment later
    while _connections(admin) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _connections(admin) == before
    assert run_script(client, echo, ["k"], ["again"]) == [b"k", b"again"]  # opens anew


def test_a_forked_child_never_uses_its_parents_connection(private_redis):
    """The child gets its own answers on a connection of its own, and the parent's connection
    is still the same one after the child exits (not shut down under it, not made anew)."""
    client = redis_lib.Redis.from_url(private_redis.url)
    echo = client.register_script(ECHO)
    assert run_script(client, echo, ["k"], ["parent"]) == [b"k", b"parent"]
    admin = redis_lib.Redis.from_url(private_redis.url)
    before = {c["id"] for c in admin.client_list()}
    answers: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()

    def in_child() -> None:  # runs in the forked child: the same client object, copied
        answers.put(run_script(client, echo, ["k"], ["child"]))

    child = multiprocessing.get_context("fork").Process(target=in_child)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert answers.get(timeout=5) == [b"k", b"child"]
    assert run_script(client, echo, ["k"], ["parent2"]) == [b"k", b"parent2"]
    assert before <= {c["id"] for c in admin.client_list()}
