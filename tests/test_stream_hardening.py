"""Live streams against hostile or unlucky clients: resuming at the end, holding threads,
sending frames, and event ids or execution ids that are not ids."""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import websocket

from producer import submit_execution
from shared import events
from shared.models import Execution, Transcript
from shared.store.keys import create_key
from tests.conftest import app_client, wait_for, worker_env

# --- helpers ---------------------------------------------------------------------------

_OPEN: list[Any] = []  #: client connections of the running test, closed at its end


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _OPEN:
        client = _OPEN.pop()
        with contextlib.suppress(Exception):
            client.close()
        if isinstance(client, websocket.WebSocket):
            client.shutdown()  # close() does nothing once the server's close frame was read


def _finish(services, execution_id: str, status: str, lines: list[str]) -> None:
    """Store an execution as finished with this transcript (as a worker would have)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with services.Session.begin() as session:
        row = session.get(Execution, execution_id)
        row.status, row.started_at, row.completed_at = status, now, now
        row.error = "it broke" if status == "failed" else None
        session.add(
            Transcript(execution_id=execution_id, content="\n".join(lines), line_count=len(lines))
        )


def _open_sse(base: str, path: str, key: str, headers: dict[str, str] | None = None) -> Any:
    """Start an SSE request; returns (connection, response) with the status line read."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    _OPEN.append(conn)
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}", **(headers or {})})
    return conn, conn.getresponse()


def _read_to_end(resp: Any, deadline_seconds: float = 5.0) -> tuple[list[dict], dict | None]:
    """Events and the `end` data of an SSE response, failing if `end` is not there in time."""
    deadline = time.monotonic() + deadline_seconds
    found: list[dict] = []
    kind = None
    while time.monotonic() < deadline:
        line = resp.readline().decode()
        if not line:
            raise AssertionError("the stream closed without an end event")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            if kind == "end":
                assert resp.readline() == b"\n"
                return found, json.loads(line[6:])
            found.append(json.loads(line[6:]))
    raise AssertionError("no end event in time: the stream goes on")


def _closed_after_end(resp: Any) -> bool:
    """True when the server ended the response body (no keepalive follows the end)."""
    return resp.read() == b""


def _ws_url(base: str, execution_id: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + f"/ws/executions/{execution_id}{query}"


def _ws(base: str, execution_id: str, key: str, query: str = "") -> websocket.WebSocket:
    ws = websocket.create_connection(
        _ws_url(base, execution_id, query), header=[f"Authorization: Bearer {key}"], timeout=10
    )
    _OPEN.append(ws)
    return ws


def _ws_refusal(base: str, execution_id: str, key: str, query: str = "") -> Any:
    """The HTTP refusal of a websocket upgrade (status, JSON body, headers)."""
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        _ws(base, execution_id, key, query)
    return refused.value.status_code, json.loads(refused.value.resp_body), refused.value


def _close_code(ws: websocket.WebSocket, deadline_seconds: float = 10.0) -> int | None:
    """Read until the server closes: its close code (None when the connection just dropped)."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big")
    raise AssertionError("the server did not close the websocket")


def _healthz_seconds(base: str) -> float:
    parts = urlsplit(base)
    started = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    return time.monotonic() - started


def _api(processes, settings, **env: str) -> str:
    """A real API server with extra settings; returns its URL."""
    from agx.embedded import free_port

    port = free_port()
    environment = {**worker_env(settings), "AGX_KEEPALIVE_SECONDS": "0.5", **env}
    processes.start("api", "--port", str(port), "--workers", "1", env=environment)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url), 30, 0.1, "the API server")
    return url


def _up(url: str) -> bool:
    try:
        return _healthz_seconds(url) >= 0
    except OSError:
        return False


@pytest.fixture
def scoped_key(services, make_agent):
    make_agent("demo")
    with services.Session.begin() as session:
        return create_key(session, "scoped-demo", agents=["demo"])


@pytest.fixture
def pending(services, scoped_key):
    """An execution that never runs here (no workers): its streams stay open."""
    return submit_execution(services, "demo", "waits").execution.id


# --- item 3: a finished execution's stream ends at once --------------------------------


def test_an_sse_client_that_has_every_event_of_a_finished_run_gets_end_at_once(
    services, api_url, scoped_key, admin_key
):
    stored = submit_execution(services, "demo", "from postgres").execution.id
    _finish(services, stored, "failed", ["a", "b"])  # events 1 running, 2-3 lines, 4 failed
    streamed = submit_execution(services, "demo", "from redis").execution.id
    _finish(services, streamed, "completed", ["x"])
    events.emit(
        services.redis,
        streamed,
        [events.status_event(1, "running"), events.line_event(2, "x")],
    )
    events.emit(services.redis, streamed, [events.status_event(3, "completed")], final=True)
    cases = [
        (stored, {"Last-Event-ID": "4"}, "failed"),
        (stored, {"Last-Event-ID": "999"}, "failed"),
        (streamed, {"Last-Event-ID": "3"}, "completed"),
        (streamed, {"Last-Event-ID": "50"}, "completed"),
    ]
    for eid, headers, status in cases:
        conn, resp = _open_sse(api_url, f"/api/executions/{eid}/events", scoped_key, headers)
        assert resp.status == 200
        assert _read_to_end(resp) == ([], {"status": status}), (eid, headers)
        assert _closed_after_end(resp)
        conn.close()
    conn, resp = _open_sse(api_url, f"/api/executions/{stored}/events?last_event_id=4", admin_key)
    assert _read_to_end(resp) == ([], {"status": "failed"})
    conn.close()
    conn, resp = _open_sse(api_url, f"/api/executions/{stored}/events", admin_key)
    replayed, end = _read_to_end(resp)
    assert [e["id"] for e in replayed] == [1, 2, 3, 4] and end == {"status": "failed"}
    conn.close()


def test_a_websocket_resuming_a_finished_run_at_its_end_gets_end_and_is_closed(
    services, api_url, scoped_key
):
    eid = submit_execution(services, "demo", "done").execution.id
    _finish(services, eid, "completed", ["only line"])  # events 1..3
    for after in ("3", "40"):
        ws = _ws(api_url, eid, scoped_key, f"?last_event_id={after}")
        assert json.loads(ws.recv()) == {"type": "end", "status": "completed"}
        assert _close_code(ws) == 1000
        ws.close()


# --- item 3: streams are bounded per key and per process -------------------------------


def test_one_key_cannot_hold_more_streams_than_its_bound_and_healthz_still_answers(
    services, api_url, scoped_key, pending, admin_key
):
    path = f"/api/executions/{pending}/events"
    held = [_open_sse(api_url, path, scoped_key) for _ in range(6)]
    held_ws = [_ws(api_url, pending, scoped_key) for _ in range(2)]
    assert all(resp.status == 200 for _, resp in held)
    refused = [_open_sse(api_url, path, scoped_key) for _ in range(30)]
    for conn, resp in refused:
        assert resp.status == 429
        assert resp.getheader("Retry-After")
        assert json.loads(resp.read())["error"]["code"] == "too_many_streams"
        conn.close()
    status, body, _ = _ws_refusal(api_url, pending, scoped_key)
    assert status == 429 and body["error"]["code"] == "too_many_streams"
    assert _healthz_seconds(api_url) < 1.0
    other = _ws(api_url, pending, admin_key)  # another key still streams
    assert json.loads(other.recv()) == []  # a keepalive
    other.close()
    for conn, _ in held:
        conn.close()
    for ws in held_ws:
        ws.close()


def test_the_process_bound_answers_503_and_slots_come_back_however_a_stream_ends(
    services, processes, settings, scoped_key, pending, admin_key
):
    url = _api(processes, settings, AGX_MAX_STREAMS_PER_KEY="2", AGX_MAX_STREAMS="3")
    path = f"/api/executions/{pending}/events"
    first, second = _open_sse(url, path, scoped_key), _open_sse(url, path, scoped_key)
    assert _open_sse(url, path, scoped_key)[1].status == 429
    admin_ws = _ws(url, pending, admin_key)
    conn, resp = _open_sse(url, path, admin_key)
    assert resp.status == 503 and resp.getheader("Retry-After") == "1"
    assert json.loads(resp.read())["error"]["code"] == "streams_busy"
    status, body, _ = _ws_refusal(url, pending, admin_key)
    assert status == 503 and body["error"]["code"] == "streams_busy"
    # A client that goes away gives its slot back (noticed at the next keepalive).
    first[0].close()
    again = wait_for(lambda: _accepted(url, pending, scoped_key), 10, 0.1, "the SSE slot back")
    admin_ws.close()  # the process is full until this one's slot is back too
    wait_for(lambda: _accepted(url, pending, admin_key), 10, 0.1, "the websocket slot back")
    again[0].close()
    # A stream that ends (a finished execution) gives its slot back at once.
    done = submit_execution(services, "demo", "done").execution.id
    _finish(services, done, "completed", [])
    second[0].close()
    for _ in range(5):  # more streams than the key's bound: none may keep its slot
        _, resp = wait_for(lambda: _accepted(url, done, scoped_key), 5, 0.1, "an SSE slot")
        assert _read_to_end(resp)[1] == {"status": "completed"}
        ws = wait_for(lambda: _ws_accepted(url, done, scoped_key), 5, 0.1, "a websocket slot")
        assert json.loads(ws.recv())[-1]["status"] == "completed"
        assert json.loads(ws.recv()) == {"type": "end", "status": "completed"}
        ws.close()


def _accepted(url: str, execution_id: str, key: str) -> Any:
    """(connection, response) if the stream was accepted, else None."""
    conn, resp = _open_sse(url, f"/api/executions/{execution_id}/events", key)
    return (conn, resp) if resp.status == 200 else None


def _ws_accepted(url: str, execution_id: str, key: str) -> Any:
    """The websocket if accepted, else None."""
    try:
        return _ws(url, execution_id, key)
    except websocket.WebSocketBadStatusException:
        return None


# --- item 4: client frames are bounded; any data message closes the socket ------------


def test_a_large_frame_or_any_data_message_closes_the_websocket_without_growing_memory(
    services, processes, settings, scoped_key, pending
):
    url = _api(processes, settings)
    worker = psutil.Process(processes.procs[-1].pid).children()[0]
    before = worker.memory_info().rss
    sockets = []
    for _ in range(6):
        ws = _ws(url, pending, scoped_key)
        # The server may close it while we are still sending.
        with contextlib.suppress(ConnectionError, OSError, websocket.WebSocketException):
            ws.send_binary(b"\x00" * (10 * 1024 * 1024))
        sockets.append(ws)
    for ws in sockets:
        assert _close_code(ws) in (1009, None)
    grown = worker.memory_info().rss - before
    assert grown < 20 * 1024 * 1024, f"the API process grew {grown / 1e6:.0f} MB"
    talker = _ws(url, pending, scoped_key)
    talker.send("hello")
    assert _close_code(talker) == 1008
    for ws in [*sockets, talker]:
        ws.close()


# --- items 8 and 9 and NUL ids: refused with the JSON error, before any upgrade --------


@pytest.mark.parametrize("value", ["²", "١٢", "12a", "-1", "1" * 13])
def test_only_ascii_digits_are_an_event_id(services, scoped_key, pending, value):
    client = app_client(services, scoped_key)
    path = f"/api/executions/{pending}/events"
    if value.isascii() or value == "²":  # a header carries latin-1 (the byte 0xB2 is ²)
        resp = client.get(path, headers={"Last-Event-ID": value})
        assert resp.status_code == 422, value
        assert resp.get_json()["error"]["field"] == "Last-Event-ID"
    resp = client.get(path, query_string={"last_event_id": value})
    assert resp.status_code == 422, value
    assert resp.get_json()["error"]["field"] == "last_event_id"


def test_a_bad_last_event_id_on_the_websocket_is_refused_before_the_upgrade(
    services, api_url, scoped_key, pending
):
    for query in ("?last_event_id=%C2%B2", "?last_event_id=%D9%A1%D9%A2", "?last_event_id=x"):
        status, body, _ = _ws_refusal(api_url, pending, scoped_key, query)
        assert status == 422, query
        assert body["error"]["field"] == "last_event_id"


def test_an_execution_id_that_cannot_exist_is_not_found_on_the_stream_routes(
    services, api_url, scoped_key
):
    client = app_client(services, scoped_key)
    for eid in ("a%00b", "x" * 33, "%00"):
        resp = client.get(f"/api/executions/{eid}/events")
        assert resp.status_code == 404, eid
        assert resp.get_json()["error"]["code"] == "not_found"
        status, body, _ = _ws_refusal(api_url, eid, scoped_key)
        assert (status, body["error"]["code"]) == (404, "not_found"), eid


def test_an_upgrade_request_that_is_no_websocket_handshake_is_a_400(
    services, api_url, scoped_key, pending
):
    conn, resp = _open_sse(
        api_url,
        f"/ws/executions/{pending}",
        scoped_key,
        {"Connection": "Upgrade", "Upgrade": "websocket"},  # no Sec-WebSocket-Key
    )
    assert resp.status == 400
    assert json.loads(resp.read())["error"]["code"] == "bad_request"
    assert _healthz_seconds(api_url) < 1.0
