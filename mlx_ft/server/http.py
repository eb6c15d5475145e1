"""What every blueprint needs to read a request and answer it: the one API error type, the JSON body, field checks
and server-sent events. Every error a client can cause is an `ApiError`, answered as 4xx JSON `{"error": "..."}`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, request


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"field {key!r} is required: a non-empty string")
    return value


def number_field(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    """An optional number in [lo, hi] (booleans are not numbers here)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ApiError(400, f"field {key!r} must be a number from {lo} to {hi}")
    return float(value)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def event_stream(events: Iterator[str]) -> Response:
    resp = Response(events, mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
