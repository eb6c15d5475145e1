"""OpenAI-compatible `POST /v1/chat/completions` (plain and `stream: true`) and `GET /v1/models`, so existing
clients (the openai package, LangChain, curl scripts) work unchanged. Stateless: the client sends the history."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify

from mlx_ft import chat_template
from mlx_ft.data import check_conversation
from mlx_ft.inference.sampling import MAX_TOKENS, OPENAI_TEMPERATURE, Sampling
from mlx_ft.server.engine import TooLong
from mlx_ft.server.http import ApiError, event_stream, json_body, number_field, sse
from mlx_ft.server.state import current

bp = Blueprint("openai", __name__, url_prefix="/v1")
ROLES = tuple(r for r in chat_template.ROLES if r != "tool")  # tool results need tool calls, which are not served yet


def _model_id() -> str:
    return current().config.source


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "field 'messages' is required: a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}]: role must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}]: content must be a string")
        out.append({"role": m["role"], "content": content})
    try:
        check_conversation([*out, {"role": "assistant", "content": "-"}])
    except ValueError as e:
        raise ApiError(400, f"messages: {e} (the last message must be the user's)") from None
    return out


def _sampling(body: dict[str, Any]) -> Sampling:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, "field 'max_tokens' must be a positive integer")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "field 'seed' must be an integer")
    return Sampling(
        temp=number_field(body, "temperature", OPENAI_TEMPERATURE, 0.0, 2.0),
        top_p=number_field(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=max_tokens,
        seed=seed,
    )


@bp.get("/models")
def models() -> Response:
    return jsonify(object="list", data=[{"id": _model_id(), "object": "model", "created": 0, "owned_by": "mlx_ft"}])


@bp.post("/chat/completions")
def chat_completions() -> Response:
    body = json_body()
    messages = _messages(body)
    sampling = _sampling(body)
    engine = current().engine
    try:
        prompt = engine.prompt(messages, sampling.max_tokens)
    except TooLong as e:
        raise ApiError(400, str(e)) from None
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), _model_id()
    if not body.get("stream"):
        text, reason, n = engine.answer(prompt, sampling)
        return jsonify(
            id=cid,
            object="chat.completion",
            created=created,
            model=model,
            choices=[
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason or "stop"}
            ],
            usage={"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n},
        )

    def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
        return sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
        )

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        reason = None
        for piece in engine.stream(prompt, sampling):
            reason = piece.finish_reason
            if piece.text:
                yield chunk({"content": piece.text})
        yield chunk({}, reason or "stop")
        yield "data: [DONE]\n\n"

    return event_stream(events())
