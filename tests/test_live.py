"""Live output over SSE and websockets: replay, no gap, no duplicate, auth and Origin checks."""

from __future__ import annotations

import pytest
import websocket

from producer import submit_execution
from tests.conftest import statuses, wait_for
from tests.helpers import stored
from tests.live import WsReader, sse_events


def _check_sequence(events, lines_expected):
    ids = [e["id"] for e in events]
    assert ids == list(range(1, len(ids) + 1)), "dense ids from 1, no gap, no duplicate"
    assert events[0] == {"id": 1, "type": "status", "status": "running", "attempt": 1}
    lines = [e["line"] for e in events if e["type"] == "line"]
    assert len(lines) == lines_expected
    assert events[-1]["type"] == "status" and events[-1]["status"] == "completed"


def test_an_sse_client_joining_mid_run_gets_every_line_once_in_order_then_resumes(
    services, make_agent, processes, api_url, admin_key
):
    make_agent("demo")
    processes.workers()
    eid = submit_execution(services, "demo", "stream lines=300 sleep=1.5").execution.id
    wait_for(lambda: statuses(services, [eid])[eid] == "running", 30, message="running")
    url = f"{api_url}/api/executions/{eid}/events"
    first, _ = sse_events(url, admin_key, stop_after=40)
    assert [e["id"] for e in first] == list(range(1, 41))
    rest, end = sse_events(url, admin_key, last_event_id=40)
    assert end == {"status": "completed"}
    everything = first + rest
    _check_sequence(everything, 300 + 3)  # init + 300 lines + reply + result
    row, transcript = stored(services, eid)
    assert [e["line"] for e in everything if e["type"] == "line"] == transcript.content.split("\n")
    # A finished execution replays from PostgreSQL with the same ids, even once Redis forgot it.
    services.redis.flushdb()
    replayed, end = sse_events(url, admin_key)
    assert end == {"status": "completed"}
    assert [(e["id"], e.get("line")) for e in replayed] == [
        (e["id"], e.get("line")) for e in everything
    ]


def test_two_websocket_clients_and_one_sse_client_receive_identical_sequences(
    services, make_agent, processes, api_url, admin_key
):
    make_agent("demo")
    processes.workers()
    eid = submit_execution(services, "demo", "fan out lines=500 sleep=1").execution.id
    ws_url = api_url.replace("http://", "ws://") + f"/ws/executions/{eid}"
    header = [f"Authorization: Bearer {admin_key}"]
    readers = [WsReader(ws_url, header), WsReader(ws_url, header)]
    sse, end = sse_events(f"{api_url}/api/executions/{eid}/events", admin_key)
    for reader in readers:
        reader.join(60)
        assert reader.end == {"type": "end", "status": "completed"}
        assert reader.events == sse
    _check_sequence(sse, 500 + 3)


def test_a_websocket_without_credentials_or_from_a_foreign_origin_is_refused(
    services, make_agent, api_url, admin_key
):
    make_agent("demo")
    eid = submit_execution(services, "demo", "secret stuff").execution.id
    ws_url = api_url.replace("http://", "ws://") + f"/ws/executions/{eid}"
    with pytest.raises(websocket.WebSocketBadStatusException) as no_key:
        websocket.create_connection(ws_url, timeout=10)
    assert no_key.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as foreign:
        websocket.create_connection(
            ws_url,
            timeout=10,
            origin="https://evil.example",
            header=[f"Authorization: Bearer {admin_key}"],
        )
    assert foreign.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as key_in_url:
        websocket.create_connection(ws_url + f"?api_key={admin_key}", timeout=10)
    assert key_in_url.value.status_code == 401


def test_a_browser_session_cookie_authorises_the_websocket(
    services, make_agent, api_url, admin_key
):
    import json
    import urllib.request

    make_agent("demo")
    eid = submit_execution(services, "demo", "cookie").execution.id
    req = urllib.request.Request(
        api_url + "/api/session",
        method="POST",
        data=json.dumps({"api_key": admin_key}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        cookie = resp.headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in resp.headers["Set-Cookie"]
    ws = websocket.create_connection(
        api_url.replace("http://", "ws://") + f"/ws/executions/{eid}",
        timeout=10,
        cookie=cookie,
        origin=api_url,
    )
    ws.close()
