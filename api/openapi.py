"""`/openapi.json`, generated from the registered routes, their pydantic models and a table here.

The URL map gives paths, methods and path parameters; a view's `json_body`/`query_params`
models give request bodies and query parameters; `OPERATIONS` below gives what each operation
answers on success and the errors it adds to those every route shares. An endpoint missing
from the table is still listed, with a plain 200 and the shared errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, current_app, jsonify
from werkzeug.routing import Rule
from x402.http import PAYMENT_SIGNATURE_HEADER

from api.context import PUBLIC_ENDPOINTS, WRITE_METHODS
from shared.states import ExecutionStatus, Overlap
from shared.store.payments import SETTLED, VERIFIED, VOIDED

bp = Blueprint("openapi", __name__)

_PARAM = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")
_REF = "#/components/schemas/{model}"
_BODIES = frozenset({"POST", "PUT", "PATCH"})

DESCRIPTION = """\
Every error the API itself answers is JSON: `{"error": {"code", "message", "field"?}}`, with
`field` naming the offending body field (dotted, like `env.TOKEN`), query parameter or header.
Statuses: 401 without a valid key (checked before anything else), 403 for a key that may not
do this (or a cookie-signed write from a foreign page), 404 for what does not exist or is not
visible to the key, 409 for a clash with the current state, 413 for a body over 1 MiB, 415 for
a body that is not JSON, 422 for a malformed field (nesting past 32 levels, NUL characters and
lone surrogates included), 429 when an agent's queue or a key's streams are full, 503 with
Retry-After when the database or Redis is out of reach or the process has no stream to spare.
Requests the HTTP server itself refuses before the app sees them (malformed HTTP: 400; a
request line over 4094 bytes: 414; over 100 headers or a header over 8190 bytes: 431) are
answered by gunicorn as text/html, not JSON.
"""


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


_STR, _INT = {"type": "string"}, {"type": "integer"}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, for machines"},
                "message": {"type": "string", "description": "for people"},
                "field": {"type": "string", "description": "the offending field, if one"},
            },
        }
    },
}
AGENT = {
    "type": "object",
    "required": ["name", "command", "output", "max_parallel_tasks", "timeout_seconds"],
    "properties": {
        "name": _STR,
        "command": {"type": "array", "items": _STR},
        "output": _STR,
        "default_model": _nullable("string"),
        "max_parallel_tasks": _INT,
        "timeout_seconds": _INT,
        "queue_limit": _INT,
        "workdir": _nullable("string"),
        "env": {"type": "object", "description": "values are masked for non-admin keys"},
        "price": {**_nullable("string"), "description": "a decimal, as a string"},
        "description": _nullable("string"),
        "mcp": {"type": "boolean", "description": "its runs get agx as an MCP server"},
    },
}
_COUNTS = {"type": "object", "additionalProperties": _INT}
ACTIVITY_WINDOW = {
    "type": "object",
    "required": ["since", "total", "by_status", "by_trigger", "success_rate"],
    "properties": {
        "since": _STR,
        "total": _INT,
        "by_status": _COUNTS,
        "by_trigger": _COUNTS,
        "success_rate": {
            **_nullable("number"),
            "description": "completed / (completed + failed); null when none finished so",
        },
        "total_cost_usd": _nullable("number"),
        "average_cost_usd": _nullable("number"),
        "average_duration_ms": _nullable("number"),
        "p95_duration_ms": _nullable("number"),
    },
}
ACTIVITY = {
    "type": "object",
    "required": ["agent", "running_now", "waiting_now", "last_execution", "windows"],
    "properties": {
        "agent": _STR,
        "at": _STR,
        "running_now": _INT,
        "waiting_now": _INT,
        "last_execution": {"type": ["object", "null"]},
        "windows": {
            "type": "object",
            "required": ["24h", "7d"],
            "additionalProperties": ACTIVITY_WINDOW,
        },
    },
}
_LINKS = {"type": "object", "additionalProperties": {"type": "string"}}
#: The JSON schema of what the payer sees (/openapi.json).
PAID_RESULT = {
    "type": "object",
    "required": ["execution_id", "status", "payment"],
    "properties": {
        "execution_id": _STR,
        "agent": _STR,
        "status": {"enum": [s.value for s in ExecutionStatus]},
        "response": {**_nullable("string"), "description": "once the payment is settled"},
        "error": _nullable("string"),
        "created_at": _nullable("string"),
        "completed_at": _nullable("string"),
        "payment": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"enum": [VERIFIED, SETTLED, VOIDED]},
                "payer": _nullable("string"),
                "amount": {"type": "string", "description": "in the asset's smallest unit"},
                "asset": _STR,
                "network": _STR,
                "tx": _nullable("string"),
                "error": _nullable("string"),
            },
        },
        "links": {
            "type": "object",
            "properties": {"result": {"type": "string", "description": "carries a read token"}},
        },
    },
}
#: The payment header, as /openapi.json lists it.
PAYMENT_SIGNATURE = {
    "name": PAYMENT_SIGNATURE_HEADER,
    "in": "header",
    "required": False,
    "description": "the x402 v2 payment payload (base64 JSON); without it: 402",
    "schema": {"type": "string"},
}
EXECUTION = {
    "type": "object",
    "required": ["id", "agent_name", "status"],
    "properties": {
        "id": _STR,
        "agent_name": _STR,
        "status": {"enum": [s.value for s in ExecutionStatus]},
        "message": _STR,
        "response": _nullable("string"),
        "error": _nullable("string"),
        "cost": _nullable("number"),
        "queue_position": _nullable("integer"),
        "transcript": {"type": "string", "description": "only on the single-execution read"},
        "links": _LINKS,
    },
}
TASK_ACCEPTED = {
    "type": "object",
    "required": ["execution_id", "status", "links"],
    "properties": {
        "execution_id": _STR,
        "status": _STR,
        "queue_position": _nullable("integer"),
        "links": _LINKS,
    },
}
CHAT_ACCEPTED = {
    "type": "object",
    "required": ["execution_id", "session_id", "status", "links"],
    "properties": {
        "execution_id": _STR,
        "session_id": {"type": "string", "description": "send it with the next message"},
        "status": _STR,
        "queue_position": _nullable("integer"),
        "waiting_for": {
            **_nullable("string"),
            "description": "the previous turn, still in flight: this one runs after it",
        },
        "links": _LINKS,
    },
}
CONVERSATION = {
    "type": "object",
    "required": ["agent", "session_id", "turns"],
    "properties": {
        "agent": _STR,
        "session_id": _STR,
        "turns": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "message", "status"],
                "properties": {
                    "id": _STR,
                    "message": _STR,
                    "response": _nullable("string"),
                    "status": {"enum": [s.value for s in ExecutionStatus]},
                    "error": _nullable("string"),
                    "cost": _nullable("number"),
                    "triggered_by": _STR,
                    "parent_execution_id": _nullable("string"),
                    "waiting_for": _nullable("string"),
                    "created_at": _nullable("string"),
                    "completed_at": _nullable("string"),
                    "links": _LINKS,
                },
            },
        },
    },
}
FIRE = {
    "type": "object",
    "required": ["scheduled_for", "outcome"],
    "properties": {
        "scheduled_for": _nullable("string"),
        "outcome": _STR,
        "execution_id": _nullable("string"),
        "reason": _nullable("string"),
    },
}
SCHEDULE = {
    "type": "object",
    "required": ["id", "agent_name", "name", "cron", "timezone", "enabled", "overlap"],
    "properties": {
        "id": _STR,
        "agent_name": _STR,
        "name": _STR,
        "cron": _STR,
        "timezone": _STR,
        "message": _STR,
        "model": _nullable("string"),
        "enabled": {"type": "boolean"},
        "overlap": {"enum": [o.value for o in Overlap]},
        "misfire_grace_seconds": _INT,
        "next_run_at": _nullable("string"),
        "last_run_at": _nullable("string"),
        "history": {"type": "array", "items": {"$ref": _REF.format(model="Fire")}},
        "links": _LINKS,
    },
}
SIGNED_IN = {
    "type": "object",
    "required": ["name", "role"],
    "properties": {"name": _STR, "role": _STR, "csrf_token": _STR},
}
PREVIEW = {
    "type": "object",
    "required": ["cron", "timezone", "next_runs", "next_runs_local"],
    "properties": {
        "cron": _STR,
        "timezone": _STR,
        "next_runs": {"type": "array", "items": _STR, "description": "UTC, ISO 8601"},
        "next_runs_local": {"type": "array", "items": _STR, "description": "in the zone"},
    },
}
RESPONSE_SCHEMAS = {
    "Preview": PREVIEW,
    "Error": ERROR,
    "Agent": AGENT,
    "Execution": EXECUTION,
    "TaskAccepted": TASK_ACCEPTED,
    "ChatAccepted": CHAT_ACCEPTED,
    "Conversation": CONVERSATION,
    "Fire": FIRE,
    "Schedule": SCHEDULE,
    "SignedIn": SIGNED_IN,
    "Activity": ACTIVITY,
}


def _page(model: str, cursor: bool = False) -> dict[str, Any]:
    """A list response: `{items}`, with `next_cursor` when it pages."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": {"$ref": _REF.format(model=model)}}},
    }
    if cursor:
        schema["required"].append("next_cursor")
        schema["properties"]["next_cursor"] = _nullable("string")
    return schema


def _one(model: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model)}


@dataclass(frozen=True)
class Doc:
    """One operation's successes (status -> description, JSON schema or None) and own errors."""

    ok: dict[str, tuple[str, dict[str, Any] | None]]
    errors: tuple[int, ...] = ()
    media: str = "application/json"
    headers: tuple[dict[str, Any], ...] = field(default_factory=tuple)


_RACES = (409,)  # a concurrent change (e.g. the agent deleted meanwhile) ends as 409
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "replay events after this id (ASCII digits); browsers send it on reconnect",
    "schema": {"type": "string"},
}
OPERATIONS: dict[str, Doc] = {
    "agents.list_agents": Doc({"200": ("The agents the key may see", _page("Agent"))}),
    "agents.create_agent": Doc({"201": ("Created", _one("Agent"))}, (409,)),
    "agents.get_agent": Doc({"200": ("The agent", _one("Agent"))}),
    "agents.patch_agent": Doc({"200": ("The changed agent", _one("Agent"))}, _RACES),
    "agents.delete_agent": Doc({"204": ("Deleted", None)}, (409,)),
    "agents.submit_tasks": Doc(
        {"202": ("Accepted, all of them: their ids in order", _page("TaskAccepted"))},
        (409, 429),
    ),
    "agents.submit_task": Doc(
        {
            "202": ("Accepted: the execution exists until it ends", _one("TaskAccepted")),
            "200": ("With `wait`: the finished execution", _one("Execution")),
        },
        (409, 429),
    ),
    "chat.chat": Doc(
        {"202": ("Accepted: runs after the conversation's previous turn", _one("ChatAccepted"))},
        (409, 429),
    ),
    "chat.continue_chat": Doc(
        {"202": ("Accepted: the execution's session goes on", _one("ChatAccepted"))},
        (409, 429),
    ),
    "chat.conversation": Doc({"200": ("The turns, oldest first", _one("Conversation"))}),
    "activity.agent_activity": Doc(
        {"200": ("Activity over the last 24 h and 7 d, and now", _one("Activity"))}
    ),
    "executions.list_executions": Doc({"200": ("A page", _page("Execution", cursor=True))}),
    "executions.list_agent_executions": Doc({"200": ("A page", _page("Execution", cursor=True))}),
    "executions.get_execution": Doc({"200": ("The whole record", _one("Execution"))}),
    "executions.stop_execution": Doc(
        {
            "200": ("Cancelled (it was pending) or already finished", _one("Execution")),
            "202": ("Stopping: the running process group is being signalled", _one("Execution")),
        },
        _RACES,
    ),
    "schedules.list_schedules": Doc({"200": ("The schedules", _page("Schedule"))}),
    "schedules.list_agent_schedules": Doc({"200": ("The schedules", _page("Schedule"))}),
    "schedules.preview_schedule": Doc({"200": ("The next run times", _one("Preview"))}),
    "schedules.create_schedule": Doc({"201": ("Created", _one("Schedule"))}, _RACES),
    "schedules.get_schedule": Doc({"200": ("The schedule and its latest fires", _one("Schedule"))}),
    "schedules.list_fires": Doc({"200": ("A page of fires", _page("Fire", cursor=True))}),
    "schedules.patch_schedule": Doc({"200": ("The changed schedule", _one("Schedule"))}, _RACES),
    "schedules.delete_schedule": Doc({"204": ("Deleted", None)}),
    "session.login": Doc({"200": ("Signed in: the cookie is set", _one("SignedIn"))}),
    "session.current": Doc({"200": ("Who is signed in", _one("SignedIn"))}),
    "session.logout": Doc({"204": ("Signed out: the session is revoked", None)}),
    "streams.events_sse": Doc(
        {"200": ("Server-sent events, ending with an `end` event", {"type": "string"})},
        (429,),
        media="text/event-stream",
        headers=(LAST_EVENT_ID,),
    ),
    "paid.paid_task": Doc(
        {
            "200": ("The run ended: settled (PAYMENT-RESPONSE), or not charged", PAID_RESULT),
            "202": ("Paid and running: `links.result` reads the result later", PAID_RESULT),
        },
        (402, 409, 429),
        headers=(PAYMENT_SIGNATURE,),
    ),
    "paid.paid_result": Doc({"200": ("The paid execution's result", PAID_RESULT)}),
}
_ERRORS = {
    401: "No valid API key or browser session",
    402: "Payment required (x402): PAYMENT-REQUIRED holds the price and, if refused, why",
    403: "The key may not do this, or a cookie-signed write came from a foreign page",
    404: "Not found, or not visible to this key",
    409: "Conflicts with the current state (or a concurrent change)",
    413: "The body is over 1 MiB",
    415: "The body is not JSON",
    422: "A field, query parameter or header is malformed (`field` names it)",
    429: "Too many: the agent's queue is full, or the key's open streams are",
    503: "The database or Redis is out of reach, or no stream slot is free; retry",
}


def build_spec() -> dict[str, Any]:
    """Walk the URL map; bodies and queries come from the view's models, the rest from the table."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = dict(RESPONSE_SCHEMAS)
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        view = current_app.view_functions[rule.endpoint]
        path = _PARAM.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(view, rule, method, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agx", "version": "0.1.0", "description": DESCRIPTION},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _operation(view: Any, rule: Rule, method: str, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = (view.__doc__ or "").strip().splitlines()
    table = OPERATIONS.get(rule.endpoint, Doc({"200": ("OK", None)}))
    op: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": doc[0] if doc else rule.endpoint,
        "tags": [rule.endpoint.split(".")[0]],
        "parameters": [
            {"name": a, "in": "path", "required": True, "schema": {"type": "string"}}
            for a in sorted(rule.arguments)
        ]
        + list(table.headers),
        "responses": _responses(table, _error_statuses(view, rule, method, table)),
    }
    if rule.endpoint in PUBLIC_ENDPOINTS:
        op["security"] = []
    model = getattr(view, "request_model", None)
    if model is not None:
        schemas[model.__name__] = model.model_json_schema(ref_template=_REF)
        schemas.update(schemas[model.__name__].pop("$defs", {}))
        op["requestBody"] = {
            "required": bool(schemas[model.__name__].get("required")),
            "content": {"application/json": {"schema": _one(model.__name__)}},
        }
    query = getattr(view, "query_model", None)
    if query is not None:
        query_schema = query.model_json_schema(ref_template=_REF)
        schemas.update(query_schema.pop("$defs", {}))
        for name, prop in query_schema["properties"].items():
            op["parameters"].append(
                {"name": name, "in": "query", "required": False, "schema": prop}
            )
    if rule.endpoint == "streams.events_sse":
        op["parameters"].append(
            {"name": "last_event_id", "in": "query", "required": False, "schema": _STR}
        )
    return op


def _error_statuses(view: Any, rule: Rule, method: str, table: Doc) -> set[int]:
    """The errors this operation can answer: those every route shares, then its own."""
    found = {401, 422, 503, *table.errors}  # 422: any query parameter holding NUL
    if rule.arguments:
        found.add(404)
    if method in WRITE_METHODS and rule.endpoint not in PUBLIC_ENDPOINTS:
        found.add(403)  # CSRF for cookie-signed writes, and admin-only operations
    if method in _BODIES:
        found |= {413, 415}
    return found


def _responses(table: Doc, errors: set[int]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (description, schema) in table.ok.items():
        responses[status] = {"description": description}
        if schema is not None:
            responses[status]["content"] = {table.media: {"schema": schema}}
    for code in sorted(errors):
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": _one("Error")}},
        }
        if code == 503:
            responses["503"]["headers"] = {
                "Retry-After": {"description": "seconds to wait", "schema": _STR}
            }
    return responses


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI 3.1 description of the REST API."""
    return jsonify(build_spec())
