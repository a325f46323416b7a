"""Browser sessions: trade an API key for a signed, HTTP-only cookie (keys never go in URLs)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, session
from pydantic import BaseModel, ConfigDict, Field

from api.context import Unauthorized, services
from api.validation import json_body
from shared.apikeys import authenticate, hash_key

bp = Blueprint("session", __name__, url_prefix="/api/session")


class Login(BaseModel):
    """Body of POST /api/session."""

    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, max_length=200)


@bp.post("")
@json_body(Login)
def login(body: Login) -> Any:
    """Start a browser session with an API key."""
    with services().Session() as db:
        who = authenticate(db, body.api_key)
    if who is None:
        raise Unauthorized("that API key is not valid")
    session.clear()
    session["key_hash"] = hash_key(body.api_key)
    return jsonify({"name": who.name, "role": who.role})


@bp.delete("")
def logout() -> Any:
    """End the browser session."""
    session.clear()
    return "", 204
