"""What every blueprint needs to read a request and answer it: the one API error type and its JSON shape, the
JSON body, fields read through `mlx_ft.checks`, finite JSON out, and server-sent events. Every error a client can
cause is answered as 4xx JSON `{"error": "..."}` (OpenAI's shape on /v1)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from flask import Response, jsonify, request
from flask.json.provider import DefaultJSONProvider

from mlx_ft import checks

T = TypeVar("T")
MAX_NUMBER_CHARS = 40  # a JSON number longer than this is no count, seed or setting (Python reads 4300 digits)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(message: str, status: int) -> tuple[Response, int]:
    """`{"error": "..."}`; on the OpenAI routes OpenAI's shape, which its clients read the message from."""
    if request.path.startswith("/v1/"):
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
            status, "invalid_request_error"
        )
        return jsonify(error={"message": message, "type": kind, "param": None, "code": None}), status
    return jsonify(error=message), status


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"number {text[:20]}… is too long")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _short_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"integer {text[:20]}… has more than {MAX_NUMBER_CHARS} digits")
    return int(text)


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON: NaN, Infinity, numbers that overflow to infinity and integers of thousands of digits are
    refused (ValueError), so no non-finite number reaches a setting or a job; too deep a nesting is ValueError too."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_short_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = parse_json(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def field(body: dict[str, Any], key: str, check: Callable[..., T], default: Any = None, **bounds: Any) -> T:
    """`body[key]` through `check` (`checks.integer`, `checks.number`, ...), named `field 'key'` in its refusal;
    absent or null: `default`. A refusal is a `checks.FieldError`, answered 400 by the app."""
    value = body.get(key)
    if value is None:
        return default
    return check(value, f"field {key!r}", **bounds)


def text_field(body: dict[str, Any], key: str, max_chars: int = 1 << 20) -> str:
    value = body.get(key)
    return checks.text(value, f"field {key!r}", max_chars)


def finite(obj: Any) -> Any:
    """`obj` with every NaN and infinity replaced by None: JSON has no such numbers, and a page's `JSON.parse`
    fails on the whole answer for one of them (a diverged run's metrics)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs: Any) -> str:
    """JSON text that is strict JSON whatever `obj` holds (non-finite numbers as null)."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False, **kwargs)


class FiniteJSONProvider(DefaultJSONProvider):
    """Flask's JSON (jsonify) through `to_json`: no answer of the server ever carries NaN or Infinity."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        kwargs.pop("allow_nan", None)
        return to_json(obj, **kwargs)


def sse(obj: Any) -> str:
    return f"data: {to_json(obj, ensure_ascii=False)}\n\n"


def event_stream(events: Iterator[str]) -> Response:
    resp = Response(events, mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
