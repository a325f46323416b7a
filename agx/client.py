"""A small REST client for the CLI (stdlib only), reading AGX_URL and AGX_API_KEY."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.settings import Settings


class ApiError(Exception):
    """An error answer from the API."""

    def __init__(self, status: int, body: dict[str, Any]):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {err.get('code', '')}: {err.get('message', body)}")
        self.status = status


def _state(settings: Settings) -> dict[str, Any]:
    """What `agx up` left in AGX_HOME/up.json (its URL and key), if anything."""
    path = Path(settings.home) / "up.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": {"message": raw.decode(errors="replace")[:500]}}


class Client:
    """Calls the agx REST API with a bearer key."""

    def __init__(self, url: str | None = None, key: str | None = None):
        settings = Settings.from_env()
        state = _state(settings)
        self.url = (
            url or os.environ.get("AGX_URL") or state.get("url") or "http://127.0.0.1:8000"
        ).rstrip("/")
        self.key = key or settings.api_key or state.get("api_key")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float = 330,
    ) -> Any:
        """Send one request; returns the decoded JSON or raises ApiError."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _decode(exc.read())) from None
        return json.loads(raw) if raw else None

    def events(self, execution_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Follow an execution's SSE stream; yields events, then {'type': 'end', ...}."""
        req = urllib.request.Request(
            f"{self.url}/api/executions/{execution_id}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(after)},
        )
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            resp = urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _decode(exc.read())) from None
        with resp:
            kind, data = "", ""
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and kind:
                    event = json.loads(data)
                    yield {"type": "end", **event} if kind == "end" else event
                    kind, data = "", ""
