"""A small REST client for the CLI (stdlib HTTP), reading AGX_URL and AGX_API_KEY."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from shared.settings import Settings

UP_STATE = "up.json"  #: what `agx up` leaves in AGX_HOME: its URL and admin key
BULK_MAX = 1000  #: tasks per bulk submission (POST /api/agents/{name}/tasks)


class ApiError(Exception):
    """An error answer from the API."""

    def __init__(self, status: int, body: dict[str, Any]):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"{status} {err.get('code', '')}: {err.get('message', body)}")
        self.status = status


def saved_state(home: Path) -> dict[str, Any]:
    """What `agx up` left in AGX_HOME/up.json (its URL and key), if anything."""
    try:
        return json.loads((Path(home) / UP_STATE).read_text())
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
        state = saved_state(settings.home)
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

    def submit_many(
        self, agent: str, messages: Sequence[str], model: str | None = None
    ) -> list[dict[str, Any]]:
        """Submit messages to an agent in bulk (batches of BULK_MAX, each all or none);
        returns one accepted item per message, in order."""
        accepted: list[dict[str, Any]] = []
        for start in range(0, len(messages), BULK_MAX):
            tasks = [
                {"message": m, **({"model": model} if model else {})}
                for m in messages[start : start + BULK_MAX]
            ]
            answer = self.request("POST", f"/api/agents/{agent}/tasks", {"tasks": tasks})
            accepted += answer["items"]
        return accepted

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


def call(
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, Any] | None = None,
    client: Client | None = None,
) -> Any:
    """One request for a CLI command; an API error or an unreachable server ends it clearly."""
    client = client or Client()
    try:
        return client.request(method, path, body, params)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach agx at {client.url}: {exc}") from None
