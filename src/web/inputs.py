"""Reading a request: JSON bodies through the pydantic models of web/schemas.py, query
arguments, and the 400/415 answers (RequestRejected) they give when they are wrong."""
from __future__ import annotations

import io
from typing import Any, TypeVar, cast, overload

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import ClientDisconnected

from mailjobs.enqueue import RequestRejected

M = TypeVar("M", bound=BaseModel)


def _loc(loc: tuple[int | str, ...]) -> str | None:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith(
                ("function-", "constrained-")):
            out += f".{part}" if out else str(part)
    return out or None


def validation_errors(exc: ValidationError) -> list[tuple[str | None, str]]:
    """pydantic's errors as (field, message) pairs, the first 20."""
    out = []
    for err in exc.errors(include_url=False)[:20]:
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "this field is required"
        else:
            message = err["msg"].removeprefix("Value error, ")
        out.append((_loc(err["loc"]), message))
    return out


def parse_body(model: type[M], raw: bytes | bytearray,
               context: dict[str, Any] | None = None) -> M:
    """Validate a JSON body with a pydantic model; every failure is a RequestRejected 400."""
    try:
        return model.model_validate_json(raw, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise RequestRejected(400, "invalid_json", f"body is not valid JSON: {first['msg']}",
                                  [(None, "not valid JSON")]) from None
        errors = validation_errors(exc)
        raise RequestRejected(400, "validation_error", f"{errors[0][0]}: {errors[0][1]}"
                              if errors[0][0] else errors[0][1], errors) from None


def read_body() -> bytes | bytearray:
    """The request body, read into one buffer of its Content-Length (get_data joins the pieces
    it reads: twice the body at once, 20 MB more for a 100,000-recipient job). A body that ends
    early is a ClientDisconnected (400): nothing is done with it."""
    size = request.content_length
    if size is None:
        return request.get_data(cache=False)
    # werkzeug's LimitedStream (an io.RawIOBase); 413 here when Content-Length is over
    # MAX_REQUEST_BYTES
    stream = cast(io.RawIOBase, request.stream)
    buf = bytearray(size)
    with memoryview(buf) as view:
        got = 0
        while got < size:
            n = stream.readinto(view[got:])
            if not n:
                raise ClientDisconnected()
            got += n
    return buf


def require_json() -> None:
    if request.mimetype != "application/json":
        raise RequestRejected(415, "unsupported_media_type",
                              "send the body as JSON with Content-Type: application/json",
                              [("Content-Type", "must be application/json")])


def json_body(model: type[M]) -> M:
    """The request's JSON body (Content-Type checked) as `model`."""
    require_json()
    return parse_body(model, request.get_data(cache=False))


@overload
def int_arg(name: str, default: int, low: int = 0, high: int = 2**63) -> int: ...
@overload
def int_arg(name: str, default: None, low: int = 0, high: int = 2**63) -> int | None: ...


def int_arg(name: str, default: int | None, low: int = 0, high: int = 2**63) -> int | None:
    """An integer query argument within [low, high], `default` when absent or empty."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestRejected(400, "validation_error", f"{name} must be an integer",
                              [(name, "must be an integer")]) from None
    if not low <= value <= high:
        raise RequestRejected(400, "validation_error", f"{name} must be between {low} and {high}",
                              [(name, f"must be between {low} and {high}")])
    return value


def choice_arg(name: str, allowed: tuple[str, ...]) -> str | None:
    """A query argument that is one of `allowed`, or None when absent."""
    value = request.args.get(name) or None
    if value is not None and value not in allowed:
        listed = ", ".join(allowed)
        raise RequestRejected(400, "validation_error", f"{name} must be one of {listed}",
                              [(name, f"must be one of {listed}")])
    return value
