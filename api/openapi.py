"""`/openapi.json`, generated from the registered routes and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, current_app, jsonify

bp = Blueprint("openapi", __name__)

_PARAM = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


def build_spec() -> dict[str, Any]:
    """Walk the URL map; request bodies and query parameters come from the view's models."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        view = current_app.view_functions[rule.endpoint]
        path = _PARAM.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(view, rule, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agx", "version": "0.1.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _operation(view: Any, rule: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = (view.__doc__ or "").strip().splitlines()
    op: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": doc[0] if doc else rule.endpoint,
        "parameters": [
            {"name": a, "in": "path", "required": True, "schema": {"type": "string"}}
            for a in sorted(rule.arguments)
        ],
        "responses": {
            "200": {"description": "OK"},
            "4XX": {"description": "Error", "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    model = getattr(view, "request_model", None)
    if model is not None:
        schemas[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas.update(schemas[model.__name__].pop("$defs", {}))
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    query = getattr(view, "query_model", None)
    if query is not None:
        for name, prop in query.model_json_schema()["properties"].items():
            op["parameters"].append(
                {"name": name, "in": "query", "required": False, "schema": prop}
            )
    return op


_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
}


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI 3.1 description of the REST API."""
    return jsonify(build_spec())
