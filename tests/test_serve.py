"""Serving: kept-alive connections on agx's gunicorn worker (agx/serve.py ApiWorker)."""

from __future__ import annotations

import http.client
import socket
import time
from urllib.parse import urlsplit

from agx.cli import api_processes
from agx.serve import NEXT_REQUEST_SECONDS


def _connection(api_url: str) -> http.client.HTTPConnection:
    parts = urlsplit(api_url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)


def _healthz(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_one_connection_serves_requests_back_to_back_and_after_a_pause(api_url: str) -> None:
    conn = _connection(api_url)
    assert _healthz(conn) == 200
    sock = conn.sock
    for _ in range(20):  # back to back: served by the thread that answered the previous one
        assert _healthz(conn) == 200
    time.sleep(NEXT_REQUEST_SECONDS * 40)  # idle: the connection went back to the poller
    assert _healthz(conn) == 200
    assert conn.sock is sock  # never reconnected: every request was on the kept-alive socket
    conn.close()


def test_pipelined_requests_are_all_answered(api_url: str) -> None:
    """Two requests in one write: the second is read ahead with the first and still served."""
    parts = urlsplit(api_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        one = f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        sock.sendall(one + one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2


def test_idle_kept_alive_connections_hold_no_thread(api_url: str) -> None:
    """More idle kept-alive clients than the process has threads (32) never keep a new
    client waiting: a thread waits for a connection's next request only briefly."""
    idle = [_connection(api_url) for _ in range(40)]
    for conn in idle:
        assert _healthz(conn) == 200  # each now kept alive, idle
    fresh = _connection(api_url)
    started = time.monotonic()
    assert _healthz(fresh) == 200
    assert time.monotonic() - started < 2.0  # not behind the idle ones' keep-alive (5 s)
    for conn in idle:  # and every idle one is still served on its own connection
        sock = conn.sock
        assert _healthz(conn) == 200
        assert conn.sock is sock
    for conn in [*idle, fresh]:
        conn.close()


def test_a_client_that_closes_after_its_request_leaves_the_server_serving(api_url: str) -> None:
    for _ in range(5):
        conn = _connection(api_url)
        assert _healthz(conn) == 200
        conn.close()  # while the thread waits for a next request
    conn = _connection(api_url)
    assert _healthz(conn) == 200
    conn.close()


def test_agx_api_defaults_to_half_the_cpus_between_one_and_eight_processes():
    assert [api_processes(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 8, 8]
