"""The bare peer of bench/stream.py: a redis-py publisher and a minimal websocket relay.

No agx code. Two commands, each its own process (as agx's worker and API are):

* ``relay --port P --redis-url URL --channel C``: SUBSCRIBEs to C with redis-py (one
  subscription) and forwards every event of every published batch, one websocket text
  message each (the same JSON agx sends), to every connected client; after a batch that
  holds the terminal status it sends ``{"type":"end","status":...}`` and closes. A plain
  threading TCP server; the opening handshake and frames are written by hand (RFC 6455,
  server frames are never masked, so a batch is framed once and the same bytes go to
  every client with one ``sendall``). Each client that completes the handshake is counted
  in the Redis key ``<channel>:clients`` so the bench knows when all are there.
* ``publish --redis-url URL --channel C --argv JSON --message TEXT``: runs the agent
  program (the same argv and stdin as the agx side), reads its stdout in 64 KiB chunks,
  cuts lines and PUBLISHes them in batches as soon as it can: a background sender wakes on
  the first pending event and takes everything pending, at most 500 events per PUBLISH
  (agx's ``EventWriter`` lets a batch linger up to 100 ms to share round trips). Events
  are numbered like agx's: 1 = running, one per line, then
  the terminal status. No stream, no transcript, no redaction.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

import redis

MAX_BATCH = 500
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- relay -----------------------------------------------------------------------------------


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (server to client)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


CLOSE_FRAME = struct.pack("!BBH", 0x88, 2, 1000)


def _handshake(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > 65536:
            return False
        data += chunk
    key = None
    for line in data.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return False
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return True


class Relay:
    """One redis-py subscription fanned out to every websocket client."""

    def __init__(self, redis_url: str, channel: str):
        self.redis = redis.Redis.from_url(redis_url)
        self.channel = channel
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()

    def accept_loop(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self._admit, args=(conn,), daemon=True).start()

    def _admit(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not _handshake(conn):
            conn.close()
            return
        with self.lock:
            self.clients.append(conn)
        self.redis.incr(self.channel + ":clients")

    def run(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        self.redis.set(self.channel + ":relay", "subscribed")
        for message in pubsub.listen():
            if message["type"] != "message":
                continue
            batch = json.loads(message["data"])
            out = b"".join(text_frame(_dumps(event).encode()) for event in batch)
            last = batch[-1]
            ending = last["type"] == "status" and last["status"] in ("completed", "failed")
            if ending:
                out += text_frame(_dumps({"type": "end", "status": last["status"]}).encode())
                out += CLOSE_FRAME
            with self.lock:
                clients = list(self.clients)
                if ending:
                    self.clients.clear()
            for conn in clients:
                try:
                    conn.sendall(out)
                except OSError:
                    with self.lock:
                        if conn in self.clients:
                            self.clients.remove(conn)
                if ending:
                    conn.close()


def relay_main(args: argparse.Namespace) -> None:
    relay = Relay(args.redis_url, args.channel)
    server = socket.create_server(("127.0.0.1", args.port), backlog=128)
    threading.Thread(target=relay.accept_loop, args=(server,), daemon=True).start()
    relay.run()


# --- publisher -------------------------------------------------------------------------------


class Publisher:
    """Send as soon as possible (wake on the first pending event, <= 500 per send), PUBLISH only."""

    def __init__(self, client: redis.Redis, channel: str):
        self.client, self.channel = client, channel
        self.next_id = 1
        self.pending: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, kind: str, **fields: Any) -> None:
        with self.cond:
            self.pending.append({"id": self.next_id, "type": kind, **fields})
            self.next_id += 1
            if len(self.pending) == 1 or len(self.pending) >= MAX_BATCH:
                self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                batch, self.pending = self.pending, []
                closed = self.closed
            for start in range(0, len(batch), MAX_BATCH):
                self.client.publish(self.channel, _dumps(batch[start : start + MAX_BATCH]))
            if closed and not batch:
                return

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()


def publish_main(args: argparse.Namespace) -> None:
    client = redis.Redis.from_url(args.redis_url)
    publisher = Publisher(client, args.channel)
    publisher.put("status", status="running")
    proc = subprocess.Popen(
        json.loads(args.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    )
    assert proc.stdin and proc.stdout
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(args.message.encode())
    proc.stdin.close()
    fd = proc.stdout.fileno()
    tail = b""
    while chunk := os.read(fd, 65536):
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            publisher.put("line", line=part.decode("utf-8", "replace"))
    if tail:
        publisher.put("line", line=tail.decode("utf-8", "replace"))
    code = proc.wait()
    publisher.put("status", status="completed" if code == 0 else "failed")
    publisher.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--redis-url", required=True)
    relay.add_argument("--channel", required=True)
    publish = sub.add_parser("publish")
    publish.add_argument("--redis-url", required=True)
    publish.add_argument("--channel", required=True)
    publish.add_argument("--argv", required=True, help="JSON list: the agent program")
    publish.add_argument("--message", required=True)
    args = parser.parse_args(argv)
    (relay_main if args.command == "relay" else publish_main)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
