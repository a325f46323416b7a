"""Request parsing: typed pydantic bodies and query parameters that fail as 4xx naming the field."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from shared.errors import InvalidField

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


def field_name(error: Any) -> str:
    """Dotted path of the offending field from a pydantic error."""
    return ".".join(str(p) for p in error.get("loc", ())) or "body"


def parse(model: type[M], data: Any) -> M:
    """Validate data against a model, raising InvalidField for the first problem."""
    if not isinstance(data, dict):
        raise InvalidField("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "is not a known field"
        raise InvalidField(field_name(first), message) from None


def json_body(model: type[BaseModel]) -> Callable[[F], F]:
    """Decorate a view: parse the JSON body into `model`, passed as the `body` keyword."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            data = request.get_json(silent=True)
            if data is None and request.get_data(cache=True):
                raise InvalidField("body", "must be valid JSON")
            return view(*args, body=parse(model, data if data is not None else {}), **kwargs)

        wrapper.request_model = model  # type: ignore[attr-defined]  # read by /openapi.json
        return wrapper  # type: ignore[return-value]

    return decorate


def query_params(model: type[BaseModel]) -> Callable[[F], F]:
    """Decorate a view: parse query parameters into `model`, passed as the `query` keyword."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            data = {k: v for k, v in request.args.items() if v != ""}
            return view(*args, query=parse(model, data), **kwargs)

        wrapper.query_model = model  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
