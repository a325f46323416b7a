"""Test hosts: network namespaces with a hostname of their own, reaching the services over a
veth pair, so "many hosts" is tested with real separate network stacks on this machine.

Each host is `ip netns` + a veth pair (10.231.N.1 on this side, 10.231.N.2 inside); its
processes run under `unshare --uts` with their own hostname. The shared services listen on
127.0.0.1 only, so a small TCP relay on 10.231.N.1 forwards each service port to them.
Everything is created by the test and removed afterwards; no traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.231"


def can_make_hosts() -> str | None:
    """Why test hosts cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if not (shutil.which("ip") and shutil.which("unshare")):
        return "needs iproute2 (ip) and util-linux (unshare)"
    probe = f"agxp{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"ip netns add refused: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class _Relay:
    """Forward TCP connections from (host, port) to 127.0.0.1:port, on one thread."""

    def __init__(self, listen: str, ports: list[int]):
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        for port in ports:
            server = socket.create_server((listen, port), reuse_port=False)
            server.setblocking(False)
            self.sel.register(server, selectors.EVENT_READ, ("accept", port))
            self.socks.append(server)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.2):
                kind, data = key.data
                if kind == "accept":
                    self._accept(key.fileobj, data)  # type: ignore[arg-type]
                else:
                    self._pump(key.fileobj, data)  # type: ignore[arg-type]

    def _accept(self, server: socket.socket, port: int) -> None:
        with contextlib.suppress(OSError):
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", port))
            for a, b in ((client, upstream), (upstream, client)):
                a.setblocking(False)
                self.sel.register(a, selectors.EVENT_READ, ("pump", b))
                self.socks.append(a)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            data = source.recv(65536)
            if data:
                sink.setblocking(True)
                sink.sendall(data)
                sink.setblocking(False)
                return
        except OSError:
            pass
        for s in (source, sink):  # either side closed: close both
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)
            s.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class Host:
    """One test host: its namespace, hostname and the address it reaches the services on."""

    name: str
    netns: str
    gateway: str  #: the services' address, as seen from inside
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Run argv inside the host, with its hostname, in a process group of its own."""
        script = f'hostname {self.name} && exec "$@"'
        wrapped = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*wrapped, "sh", *argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc


@contextlib.contextmanager
def hosts(names: list[str], ports: list[int]) -> Iterator[list[Host]]:
    """Make the hosts, relay the service ports to each, and remove everything afterwards."""
    made: list[Host] = []
    relays: list[_Relay] = []
    tag = uuid.uuid4().hex[:5]
    try:
        for index, name in enumerate(names, start=1):
            netns, outer, inner = f"agx{tag}{index}", f"agxo{tag}{index}", f"agxi{tag}{index}"
            net = f"{SUBNET}.{index}"
            _run("ip", "netns", "add", netns)
            made.append(Host(name, netns, f"{net}.1"))
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", netns)
            _run("ip", "addr", "add", f"{net}.1/30", "dev", outer)
            _run("ip", "link", "set", outer, "up")
            for cmd in (
                ["ip", "addr", "add", f"{net}.2/30", "dev", inner],
                ["ip", "link", "set", inner, "up"],
                ["ip", "link", "set", "lo", "up"],
            ):
                _run("ip", "netns", "exec", netns, *cmd)
            relays.append(_Relay(f"{net}.1", ports))
        yield made
    finally:
        for host in made:
            for proc in host.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                with contextlib.suppress(Exception):
                    proc.wait(10)
            # Deleting the namespace removes its veth end, and with it the peer.
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        for relay in relays:
            relay.close()
