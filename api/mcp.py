"""MCP at /mcp: agx's tools for agents and people, over streamable HTTP, inside the Flask app.

The official SDK's server runs in stateless JSON mode (every POST is a whole exchange; no
session lives in a process), so any number of API processes serve it. Its ASGI app is bridged
to WSGI by a2wsgi on an event loop that each process starts on its first /mcp request (a loop
started before gunicorn forks would hang), and whose lifespan it runs itself: a2wsgi does not,
and without it the session manager answers nothing.

Callers authenticate before the bridge, by bearer only: an API key, or a running execution's
token (`AGX_EXECUTION_TOKEN`), which calls on behalf of that run: its calls record the run as
their parent, and the call chain is checked (`api.mcp_tools`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from a2wsgi import ASGIMiddleware
from flask import Blueprint, Flask, current_app, jsonify, request
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from api.context import Unauthorized, bearer_principal
from api.mcp_tools import APP_KEY, PRINCIPAL_KEY, register_tools
from shared.settings import Settings

bp = Blueprint("mcp", __name__)

PATH = "/mcp"
MAX_BODY_BYTES = 1024 * 1024  #: like the REST API's bodies
START_SECONDS = 10.0  #: how long the first request waits for the bridge to start
_EXTENSION = "agx_mcp"
_lock = threading.Lock()


@bp.route(PATH, methods=["GET", "POST", "DELETE"])
def mcp_endpoint() -> Any:
    """The MCP endpoint (streamable HTTP, stateless, JSON responses); bearer auth first."""
    try:
        who = bearer_principal()
    except Unauthorized as exc:
        return jsonify(exc.to_dict()), 401, {"WWW-Authenticate": 'Bearer realm="agx"'}
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    request.environ[PRINCIPAL_KEY] = who
    request.environ[APP_KEY] = app
    return bridge(app).wsgi


def bridge(app: Flask) -> Bridge:
    """This app's bridge, started by the first call in this process."""
    found = app.extensions.get(_EXTENSION)
    if found is None:
        with _lock:
            found = app.extensions.get(_EXTENSION)
            if found is None:
                found = app.extensions[_EXTENSION] = Bridge(app.extensions["agx"].settings)
    return found


class Bridge:
    """The MCP server's ASGI app as a WSGI app, on an event loop thread of this process."""

    def __init__(self, settings: Settings):
        with _no_root_logging_setup():  # the SDK would install its own root log handler
            server = MCPServer("agx", instructions=INSTRUCTIONS)
        register_tools(server)
        self.asgi = server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            json_response=True,
            transport_security=transport_security(settings.allowed_hosts),
            max_request_body_size=MAX_BODY_BYTES,
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="mcp-bridge", daemon=True).start()
        self._start()
        self.wsgi = ASGIMiddleware(self.asgi, loop=self.loop)  # type: ignore[arg-type]

    def _start(self) -> None:
        """Run the app's lifespan (the session manager's task group) on the loop, for good."""
        ready = threading.Event()

        async def lifespan() -> None:
            async with self.asgi.router.lifespan_context(self.asgi):
                ready.set()
                await asyncio.Event().wait()  # until the process ends

        started = asyncio.run_coroutine_threadsafe(lifespan(), self.loop)
        deadline = time.monotonic() + START_SECONDS
        while not ready.wait(0.05):
            if started.done():
                started.result()  # raises why it could not start
            if started.done() or time.monotonic() > deadline:
                raise RuntimeError("the MCP server did not start")
        self._lifespan = started  # held: it runs as long as the process


def transport_security(allowed_hosts: tuple[str, ...]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check, from AGX_ALLOWED_HOSTS: a name without a port allows
    any port; `*` turns the check off (a proxy in front checks Host)."""
    if "*" in allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts: list[str] = []
    for host in allowed_hosts:
        has_port = host.rsplit("]", 1)[-1].count(":") == 1
        hosts += [host] if has_port else [host, f"{host}:*"]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


@contextlib.contextmanager
def _no_root_logging_setup() -> Iterator[None]:
    """MCPServer() calls logging.basicConfig, which does nothing while the root logger has a
    handler: lend it one for the moment, so the process's own logging setup stays as it is."""
    root, lent = logging.getLogger(), logging.NullHandler()
    root.addHandler(lent)
    try:
        yield
    finally:
        root.removeHandler(lent)


INSTRUCTIONS = (
    "agx runs tasks on named agents. list_recent_executions and get_execution_result read "
    "their history, get_agent_activity_summary sums it up, run_agent_task submits a task "
    "(wait=true returns the finished result). An agent may not call itself or an agent "
    "already in its call chain."
)
