"""Request parsing: typed pydantic bodies and query parameters that fail as 4xx naming the field.

Every JSON body is read whole (413 past the app's MAX_CONTENT_LENGTH, chunked or not), parsed,
and walked before any model sees it: nesting deeper than MAX_DEPTH, NUL characters (which
PostgreSQL cannot store) and lone surrogates (which no encoder can write) are refused with 422
naming the dotted field path. Bodies are then validated strictly (`true` is not an integer, `"3"`
is not one either), while query strings, which are text by nature, stay lax.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from shared.errors import InvalidField, NotFound

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

MAX_DEPTH = 32  #: deepest nesting of arrays and objects accepted in a JSON body
NUL = "\x00"


def register(app: Flask) -> None:
    """Install the request guards that apply to every route."""
    app.before_request(refuse_nul_in_url)


def refuse_nul_in_url() -> None:
    """Refuse a NUL character in the path (404: nothing can be named so) or a query parameter."""
    query = request.environ.get("QUERY_STRING", "")
    if NUL not in request.path and NUL not in query and "%00" not in query:
        return  # the common case, without decoding the query string
    if NUL in request.path:
        raise NotFound("nothing exists at a path that holds a NUL character")
    for name, value in request.args.items(multi=True):
        if NUL in name:
            raise InvalidField("query", "a parameter name holds a NUL character")
        if NUL in value:
            raise InvalidField(name, "must not contain NUL characters")


def field_name(error: Any) -> str:
    """Dotted path of the offending field from a pydantic error."""
    return ".".join(str(p) for p in error.get("loc", ())) or "body"


def parse(model: type[M], data: Any, strict: bool = False) -> M:
    """Validate data against a model, raising InvalidField for the first problem.

    `strict` is for data parsed from JSON: it is validated as JSON, strictly, so booleans are
    not integers and strings are not numbers (3.0 is 3, as in JSON Schema), while decimals
    still take numbers or strings.
    """
    if not isinstance(data, dict):
        raise InvalidField("body", "must be a JSON object")
    try:
        if strict:
            return model.model_validate_json(json.dumps(data), strict=True)
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "is not a known field"
        raise InvalidField(field_name(first), message) from None


def read_json() -> Any:
    """The request's JSON body (None when empty), checked for depth, NUL and lone surrogates."""
    return decode_json(_read_body())


def decode_json(raw: bytes) -> Any:
    """A JSON body (None when empty), checked for depth, NUL and lone surrogates."""
    if not raw:
        return None
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_number)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise InvalidField("body", "must be valid JSON") from None
    check_tree(data)
    return data


def _read_body() -> bytes:
    """The whole body; RequestEntityTooLarge (413) past the limit, with or without a length."""
    raw = request.get_data(cache=True)  # raises at once when Content-Length is over the limit
    limit = request.max_content_length
    # A chunked body is cut at the limit without a word (Werkzeug reads exactly `limit` bytes
    # and stops), so whether more followed is only known by reading one more byte ourselves.
    cut = limit is not None and len(raw) >= limit and request.content_length is None
    if cut and request.input_stream.read(1):
        raise RequestEntityTooLarge()
    return raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(text: str) -> float | int:
    """A JSON number with a fraction or exponent: 3.0 is the integer 3, as JSON Schema says."""
    value = float(text)
    if not math.isfinite(value):
        raise InvalidField("body", f"holds a number out of range ({text[:40]})")
    return int(value) if value.is_integer() else value


def _too_deep() -> InvalidField:
    return InvalidField("body", f"is nested too deeply (at most {MAX_DEPTH} levels)")


def check_tree(data: Any) -> None:
    """Refuse nesting past MAX_DEPTH and any key or string with NUL or a lone surrogate.

    Iterative on purpose: a recursive walk is what deep input is made to break.
    """
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            check_text(value, _dotted(path))
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    check_text(key, _dotted(path), "a key ")
                stack.append((item, (*path, key), depth + 1))


def check_text(text: str, field: str, prefix: str = "") -> None:
    """Refuse a string PostgreSQL cannot store: a NUL character or a lone UTF-16 surrogate."""
    if NUL in text:
        raise InvalidField(field, f"{prefix}must not contain NUL characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidField(
                field, f"{prefix}must be valid Unicode (it holds a lone surrogate)"
            ) from None


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "body"


def json_body(model: type[BaseModel]) -> Callable[[F], F]:
    """Decorate a view: parse the JSON body into `model`, passed as the `body` keyword."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            data = read_json()
            body = parse(model, data if data is not None else {}, strict=True)
            return view(*args, body=body, **kwargs)

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
