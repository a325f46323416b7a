"""Browser fixtures: Debian's Chromium driven by Playwright (no browser is downloaded).

One browser per test module; each test gets fresh contexts (cookies) on a real API server
(gunicorn) with real workers. Screenshots go to tests/screenshots/ (ignored by git).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).parent / "screenshots"
WIDE, NARROW = 1280, 390  #: viewport widths: a laptop, a phone


def chromium_path() -> str | None:
    """Debian's chromium (apt-get install chromium), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """One headless Chromium for the module."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        found = playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield found
        found.close()


class Site:
    """The API server as a browser sees it, with helpers to open signed-in pages."""

    def __init__(self, browser: Any, url: str, key: str):
        self.browser, self.url, self.key = browser, url, key
        self.contexts: list[Any] = []

    def context(self, width: int = WIDE, key: str | None = None) -> Any:
        """A fresh browser context (its own cookies), signed in with `key` unless it is ''."""
        height = 900 if width >= 800 else 844
        ctx = self.browser.new_context(
            base_url=self.url, viewport={"width": width, "height": height}, timezone_id="UTC"
        )
        ctx.set_default_timeout(20_000)
        self.contexts.append(ctx)
        key = self.key if key is None else key
        if key:
            resp = ctx.request.post("/api/session", data={"api_key": key})
            assert resp.status == 200, resp.text()
        return ctx

    def page(self, path: str = "/", width: int = WIDE, key: str | None = None) -> Any:
        """A signed-in page at `path`."""
        page = self.context(width, key).new_page()
        page.goto(path)
        return page

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


def shoot(page: Any, name: str, full: bool = True) -> None:
    """Save a screenshot for people to look at (tests/screenshots/, never committed)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    width = page.viewport_size["width"] if page.viewport_size else 0
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=full)


def api_key(services: Any, agents: list[str] | None = None) -> str:
    """A new API key: admin, or scoped to `agents`."""
    from shared.store.keys import create_key

    with services.Session.begin() as session:
        if agents is None:
            return str(create_key(session, f"web-{uuid.uuid4().hex[:6]}"))
        return str(create_key(session, f"scoped-{uuid.uuid4().hex[:6]}", agents=agents))


class CuttableProxy:
    """A TCP proxy in front of the API whose open connections can be cut, like a network blip:
    the browser sees its stream drop and must resume on its own."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.refusing = threading.Event()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection (new ones are refused until resume())."""
        self.refusing.set()
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def resume(self) -> None:
        """Accept connections again."""
        self.refusing.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()
