"""The page's conversation API and the seed's `/api/chat` + `/api/clear`, over the SQLite history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify

from mlx_ft.errors import UserError
from mlx_ft.inference.engine import ModelRef
from mlx_ft.inference.sampling import Sampling
from mlx_ft.server.http import ApiError, event_stream, json_body, sse, text_field
from mlx_ft.server.state import current
from mlx_ft.server.studio import models as studio_models
from mlx_ft.services.history import Conversation

bp = Blueprint("api", __name__, url_prefix="/api")

API_CONVERSATION = "api"  # the seed API kept one server-side history; callers that name none share this one
SETTING_KEYS = ("title", "system", "temperature", "top_p", "max_tokens", "model")


def _conversation(cid: str) -> Conversation:
    conv = current().history.get(cid)
    if conv is None:
        raise ApiError(404, f"no conversation {cid!r}")
    return conv


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - set(SETTING_KEYS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(SETTING_KEYS)}")
    if body.get("model") is not None:
        studio_models.entry(body["model"])  # 400 on an id the server cannot answer with
    return body


def _new_conversation(**fields: Any) -> Conversation:
    """A new conversation; without a system prompt of its own it gets the one its model was trained with, if any
    (the model answers best under it)."""
    fields.setdefault("system", current().engine.system(studio_models.ref_of(fields.get("model"))))
    try:
        return current().history.create(**fields)
    except ValueError as e:
        raise ApiError(400, str(e)) from None


def _prepare(conv: Conversation, text: str) -> tuple[list[int], Sampling, ModelRef | None]:
    """The prompt for `text` after the conversation so far, the conversation's sampling settings, and its model."""
    history = current().history
    messages = [*history.chat_messages(conv.id), {"role": "user", "content": text}]
    try:
        ref = studio_models.ref_of(conv.model)
    except ApiError as e:
        raise ApiError(400, f"this conversation's model is gone ({e.message}); choose another") from None
    try:
        prompt = current().engine.prompt(messages, conv.max_tokens, ref)
    except (ValueError, UserError) as e:  # too long for the context; a base that cannot load
        raise ApiError(400, str(e)) from None
    return prompt, Sampling(temp=conv.temperature, top_p=conv.top_p, max_tokens=conv.max_tokens), ref


@bp.get("/conversations")
def list_conversations() -> Response:
    return jsonify(conversations=[c.to_dict() for c in current().history.list()])


@bp.post("/conversations")
def create_conversation() -> tuple[Response, int]:
    return jsonify(_new_conversation(**_settings(json_body())).to_dict()), 201


@bp.get("/conversations/<cid>")
def get_conversation(cid: str) -> Response:
    conv = _conversation(cid)
    return jsonify({**conv.to_dict(), "messages": [m.to_dict() for m in current().history.messages(cid)]})


@bp.patch("/conversations/<cid>")
def update_conversation(cid: str) -> Response:
    _conversation(cid)
    try:
        conv = current().history.update(cid, **_settings(json_body()))
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    if conv is None:
        raise ApiError(404, f"no conversation {cid!r}")
    return jsonify(conv.to_dict())


@bp.delete("/conversations/<cid>")
def delete_conversation(cid: str) -> Response:
    if not current().history.delete(cid):
        raise ApiError(404, f"no conversation {cid!r}")
    return jsonify(deleted=True)


@bp.post("/conversations/<cid>/clear")
def clear_conversation(cid: str) -> Response:
    if not current().history.clear(cid):
        raise ApiError(404, f"no conversation {cid!r}")
    return jsonify(cleared=True)


@bp.post("/conversations/<cid>/messages")
def send_message(cid: str) -> Response:
    """Stream the answer as server-sent events; the exchange is saved once it ends, or with the part generated so
    far when the client stops reading (the page's Stop button)."""
    conv = _conversation(cid)
    text = text_field(json_body(), "content")
    prompt, sampling, ref = _prepare(conv, text)
    history, engine = current().history, current().engine

    def events() -> Iterator[str]:
        pieces: list[str] = []
        reason = None
        saved = False
        tokens = 0
        try:
            job = engine.submit(prompt, sampling, ref)
            for chunk in job.pieces():
                pieces.append(chunk.text)
                reason, tokens = chunk.finish_reason, chunk.generation_tokens
                if chunk.text:
                    yield sse({"delta": chunk.text})
            _, answer = history.add_exchange(cid, text, "".join(pieces))
            saved = True
            yield sse(
                {
                    "done": True,
                    "finish_reason": reason,
                    "message": answer.to_dict(),
                    "conversation": history.get(cid).to_dict(),
                    "figures": {"tokens": tokens, **job.figures()},
                }
            )
        except KeyError:
            yield sse({"error": f"conversation {cid!r} was deleted while answering"})
        finally:
            if not saved and pieces:  # the client went away mid-answer: keep what it saw
                try:
                    history.add_exchange(cid, text, "".join(pieces))
                except KeyError:
                    pass

    return event_stream(events())


@bp.post("/chat")
def seed_chat() -> Response:
    """The seed's API: `{"message", "conversation_id"?}` → `{"status": "success", "response", "conversation_id"}`,
    history kept here."""
    body = json_body()
    text = text_field(body, "message")
    history = current().history
    cid = body.get("conversation_id")
    if cid is None:
        cid = API_CONVERSATION
        if history.get(cid) is None:
            _new_conversation(title="API chat", cid=cid)
    elif not isinstance(cid, str):
        raise ApiError(400, "field 'conversation_id' must be a string")
    conv = _conversation(cid)
    prompt, sampling, ref = _prepare(conv, text)
    answer, _, _ = current().engine.answer(prompt, sampling, ref)
    try:
        history.add_exchange(cid, text, answer)
    except KeyError:
        raise ApiError(404, f"conversation {cid!r} was deleted while answering") from None
    return jsonify(status="success", response=answer, conversation_id=cid)


@bp.post("/clear")
def seed_clear() -> Response:
    """The seed's API: `{"conversation_id"?}` → `{"status": "success", ...}` (the key its clients check)."""
    body = json_body()
    cid = body.get("conversation_id", API_CONVERSATION)
    if not isinstance(cid, str):
        raise ApiError(400, "field 'conversation_id' must be a string")
    history = current().history
    if history.get(cid) is None and cid != API_CONVERSATION:
        raise ApiError(404, f"no conversation {cid!r}")
    history.clear(cid)
    return jsonify(status="success", cleared=True, conversation_id=cid)
