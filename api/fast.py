"""`POST /api/agents/{name}/task` without Flask in between, for the requests services send in
bulk: a cached bearer key, a JSON body, no `wait`.

Services enqueue their jobs with this one call, and there Flask's own work per request (its
contexts, routing, request and response objects, hooks) cost as much of the API's CPU as the
submission itself. `FastSubmit` sits in front of the Flask app (its `wsgi_app`) and answers
such a request itself, with the same code the Flask view runs (`api.context`'s key cache,
`api.validation`'s body checks and `TaskRequest`, `api.agents.submit_one` and `accepted`,
`api.app.error_answer`, `api.metrics.count`). Anything else it hands to Flask untouched (the
body it read put back): another route or method, a query string, a body that is not
`application/json` with a length, a key not authenticated in the last AGX_KEY_CACHE_SECONDS
(Flask authenticates it, and caches it), an execution token or a browser session, an agent the
key may not see, a body that fails validation, `wait: true`. So every refusal a caller can get
before the submission is Flask's own answer, and once the submission has started its outcome
(202, or the submission's error) is answered here, never submitted twice.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from api.agents import TaskRequest, accepted, submit_one
from api.app import error_answer
from api.context import bearer_value, cached_principal
from api.metrics import count
from api.validation import decode_json, parse
from shared.agents import SLUG
from shared.apikeys import Principal
from shared.errors import InvalidField

#: A name that no agent can have (not a slug: non-ASCII, a NUL) is left to Flask's 404.
PATH = re.compile(f"/api/agents/({SLUG.strip('^$')})/task")

StartResponse = Callable[..., Any]


class FastSubmit:
    """WSGI middleware: a fast path for the success case of POST .../task (see the module)."""

    def __init__(self, app: Flask):
        self.app = app
        self.flask = app.wsgi_app
        #: the route's template, as Flask's request metrics label it
        self.route = next(app.url_map.iter_rules("agents.submit_task")).rule

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            match = PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                answered = self._submit(environ, match.group(1))
                if answered is not None:
                    status, body, headers = answered
                    start_response(status, headers)
                    return [body]
        return self.flask(environ, start_response)

    def _submit(self, environ: dict[str, Any], name: str) -> tuple[str, bytes, list[Any]] | None:
        """The answer, or None to let Flask answer the request."""
        began = time.perf_counter()
        who = self._caller(environ, name)
        if who is None:
            return None
        raw = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        environ["wsgi.input"] = io.BytesIO(raw)  # Flask reads it again if it answers
        try:
            body = parse(TaskRequest, decode_json(raw), strict=True)
        except InvalidField:
            return None
        if body.wait:
            return None
        try:
            submitted = submit_one(self.app.extensions["agx"], name, body, who)
            code, answer, extra = 202, accepted(submitted), dict[str, str]()
        except Exception as exc:  # as Flask's error handler would answer it
            code, answer, extra = error_answer(exc)
        data = self.app.json.dumps(answer, separators=(",", ":")).encode() + b"\n"  # as jsonify
        count(self.route, "POST", code, began)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        return f"{code} {HTTP_STATUS_CODES[code].upper()}", data, headers + list(extra.items())

    def _caller(self, environ: dict[str, Any], name: str) -> Principal | None:
        """The caller, when the request is one this path answers; else None."""
        if environ.get("QUERY_STRING") or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        kind = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if kind != "application/json" or not (length.isascii() and length.isdigit()):
            return None
        if not 0 < int(length) <= (self.app.config["MAX_CONTENT_LENGTH"] or 0):
            return None
        # Only API keys are cached: an execution token or a session cookie goes to Flask.
        who = cached_principal(self.app, bearer_value(environ.get("HTTP_AUTHORIZATION", "")))
        if who is None or not who.may_see(name):
            return None
        return who
