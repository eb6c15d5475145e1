"""OpenAI-compatible `POST /v1/chat/completions`, `POST /v1/completions` (plain and `stream: true`) and
`GET /v1/models`, so existing clients (the openai package, LangChain, curl scripts) work unchanged. Stateless: the
client sends the history. What a request may ask is checked in `openai_request`; this module answers it.

Every model the server can answer with is listed, and `model` selects it: the runs `serve` was started with under
their folder names, the base, and the studio's runs and checkpoints under their ids (`run:NAME@best`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mlx_ft import chat_template
from mlx_ft.errors import UserError
from mlx_ft.inference import decode, tool_calls
from mlx_ft.inference.engine import ModelRef
from mlx_ft.inference.sampling import Sampling
from mlx_ft.inference.scheduler import Job, merged
from mlx_ft.server.http import ApiError, event_stream, json_body, sse
from mlx_ft.server.openai import request as openai_request
from mlx_ft.server.state import current
from mlx_ft.server.studio import models as studio_models

bp = Blueprint("openai", __name__, url_prefix="/v1")
_BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}  # byte-level BPE's printable stand-ins for raw bytes
_parsers: weakref.WeakKeyDictionary[Any, tool_calls.ToolCallParser | None] = weakref.WeakKeyDictionary()


def _parser(tokenizer: Any) -> tool_calls.ToolCallParser | None:
    """The model's tool-call parser, found once per loaded tokenizer (finding it reads the template)."""
    if tokenizer not in _parsers:
        _parsers[tokenizer] = tool_calls.parser_for(tokenizer)
    return _parsers[tokenizer]


def models_served() -> dict[str, ModelRef | None]:
    """Every model id a request may name, the default first (None: the served model)."""
    out: dict[str, ModelRef | None] = dict(current().served_models)
    for e in studio_models.catalogue():
        out.setdefault(e.id, e.ref)
    return out


def _model(body: dict[str, Any]) -> tuple[str, ModelRef | None]:
    name, first = body.get("model"), current().served_models
    if name is None:
        return next(iter(first)), None
    if isinstance(name, str) and name in first:  # the models serve was started with: no runs folder to read
        return name, first[name]
    served = models_served()
    if not isinstance(name, str) or name not in served:
        known = ", ".join(list(served)[:10]) + (" …" if len(served) > 10 else "")
        raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists them: {known}")
    return name, served[name]


@bp.get("/models")
def models() -> Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "mlx_ft"} for name in models_served()]
    return jsonify(object="list", data=data)


def _vocab_size(tokenizer: Any) -> int:
    return len(chat_template.hf_tokenizer(tokenizer))


def _token_bytes(tokenizer: Any, token: int) -> bytes:
    """The raw bytes of one token: byte-level BPE pieces mapped back, anything else (special tokens, SentencePiece)
    decoded."""
    hf = chat_template.hf_tokenizer(tokenizer)
    piece = hf.convert_ids_to_tokens(token)
    if isinstance(piece, str) and piece and all(c in _BYTE_OF for c in piece):
        return bytes(_BYTE_OF[c] for c in piece)
    return hf.decode([token]).encode("utf-8")


def _token_text(tokenizer: Any, token: int) -> str:
    return _token_bytes(tokenizer, token).decode("utf-8", errors="replace")


def _chat_logprobs(tokenizer: Any, tokens: list[decode.TokenLogprob]) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = _token_bytes(tokenizer, token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    content = [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in tokens]
    return {"content": content, "refusal": None}


def _completion_logprobs(tokenizer: Any, tokens: list[decode.TokenLogprob], offset: int) -> dict[str, Any]:
    texts = [_token_text(tokenizer, t.id) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{_token_text(tokenizer, i): lp for i, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def _seeded(sampling: Sampling, i: int) -> Sampling:
    """The sampling of choice `i` of n: its own seed, so the choices differ yet each is reproducible."""
    if sampling.seed is None or i == 0:
        return sampling
    return dataclasses.replace(sampling, seed=sampling.seed + i)


def _reporting(events: Iterator[str]) -> Iterator[str]:
    """A stream that fails midway ends with an error event, which OpenAI's clients raise, not a cut connection."""
    try:
        yield from events
    except Exception as e:  # noqa: BLE001 - the status line is sent already: the error can only be an event
        yield sse(
            {"error": {"message": f"generation failed: {e}", "type": "server_error", "param": None, "code": None}}
        )


def _submit(prompts: list[list[int]], sampling: Sampling, n: int, ref: ModelRef | None) -> list[Job]:
    if len(prompts) * n > openai_request.MAX_ANSWERS:
        raise ApiError(
            400, f"prompts × n is {len(prompts) * n}; at most {openai_request.MAX_ANSWERS} answers a request"
        )
    engine = current().engine
    for p in prompts:
        try:
            engine.check_fits(len(p), sampling.max_tokens)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
    return engine.submit_many([(p, _seeded(sampling, i)) for p in prompts for i in range(n)], ref)


def _merged(jobs: list[Job]) -> Iterator[tuple[int, decode.Chunk]]:
    """The pieces of several jobs as they come, tagged with the job's index; one job failing fails the request (a
    reply has all its choices or none); closing it cancels them all."""
    for i, item in merged(jobs):
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            yield i, item


class _Answer:
    """One choice as it is generated: text, token entries, why it ended, how many tokens."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tokens: list[decode.TokenLogprob] = []
        self.reason: str | None = None
        self.n = 0

    def add(self, chunk: decode.Chunk) -> None:
        self.text.append(chunk.text)
        self.tokens += chunk.tokens
        self.reason = chunk.finish_reason or self.reason
        self.n = chunk.generation_tokens


def _collect(jobs: list[Job]) -> list[_Answer]:
    answers = [_Answer() for _ in jobs]
    for i, chunk in _merged(jobs):
        answers[i].add(chunk)
    return answers


def _usage(prompts: list[list[int]], jobs: list[Job], completion: int) -> dict[str, Any]:
    """OpenAI's usage: each prompt counted once however many choices it has, and how many of its tokens were read
    from the prompt cache (the first choice's: the choices of one prompt start together, from the same entry)."""
    prompt = sum(len(p) for p in prompts)
    cached = sum(job.cached_tokens for job in jobs[:: len(jobs) // len(prompts)])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _request(body: dict[str, Any], chat: bool) -> tuple[str, ModelRef | None, Any, Sampling]:
    """The model a request names, its tokenizer, and the sampling the request asks of it."""
    model, ref = _model(body)
    try:
        tokenizer = current().engine.tokenizer_for(ref)
    except (ValueError, UserError) as e:  # a base that cannot load
        raise ApiError(400, str(e)) from None
    return model, ref, tokenizer, openai_request.sampling(body, tokenizer, _vocab_size(tokenizer), chat=chat)


@bp.post("/chat/completions")
def chat_completions() -> Response:
    body = json_body()
    messages = openai_request.messages(body)
    tools = openai_request.tools(body)
    model, ref, tokenizer, sampling = _request(body, chat=True)
    engine = current().engine
    n, usage_chunk = openai_request.choices(body), openai_request.include_usage(body)
    if tools and not chat_template.supports_tools(tokenizer):
        raise ApiError(400, f"model {model!r}: its chat template cannot render tools; serve one whose template can")
    try:
        prompt = engine.prompt(messages, sampling.max_tokens, ref, tools=tools)
    except (ValueError, UserError) as e:
        raise ApiError(400, str(e)) from None
    jobs = _submit([prompt], sampling, n, ref)
    parser = _parser(tokenizer) if tools else None
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "created": created, "model": model, "system_fingerprint": None}

    if not openai_request.stream(body):
        out = []
        answers = _collect(jobs)
        for i, a in enumerate(answers):
            text = "".join(a.text)
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            reason = a.reason or "stop"
            if parser is not None:
                content, calls = parser.split(text, tools)
                if calls:
                    message.update(content=content or None, tool_calls=calls)
                    reason = "tool_calls"
            choice = {"index": i, "message": message, "finish_reason": reason, "logprobs": None}
            if sampling.top_logprobs is not None:
                choice["logprobs"] = _chat_logprobs(tokenizer, a.tokens)
            out.append(choice)
        usage = _usage([prompt], jobs, sum(a.n for a in answers))
        return jsonify({**head, "object": "chat.completion", "choices": out, "usage": usage})

    def chunk(i: int, delta: dict[str, Any], reason: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": i, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
        extra = {"usage": None} if usage_chunk else {}
        return sse({**head, "object": "chat.completion.chunk", "choices": [choice], **extra})

    def events() -> Iterator[str]:
        streams = [parser.stream(tools) if parser is not None else None for _ in jobs]
        called = [0] * len(jobs)
        completion = 0
        for i in range(len(jobs)):
            yield chunk(i, {"role": "assistant", "content": ""})
        for i, piece in _merged(jobs):
            logprobs = _chat_logprobs(tokenizer, piece.tokens) if sampling.top_logprobs is not None else None
            stream = streams[i]
            if stream is None:
                parts: list[tool_calls.Event] = [tool_calls.ContentEvent(piece.text)]
            else:
                parts = stream.feed(piece.text) + (stream.finish() if piece.finish_reason is not None else [])
            for part in parts:
                if isinstance(part, tool_calls.ContentEvent):
                    if part.text:
                        yield chunk(i, {"content": part.text}, None, logprobs)
                        logprobs = None
                else:
                    yield chunk(i, {"tool_calls": [{"index": called[i], **part.call}]})
                    called[i] += 1
            if logprobs is not None and logprobs["content"]:
                yield chunk(i, {}, None, logprobs)  # tokens whose text is held back (a possible stop string)
            if piece.finish_reason is not None:
                completion += piece.generation_tokens
                yield chunk(i, {}, "tool_calls" if called[i] else piece.finish_reason)
        if usage_chunk:
            yield sse(
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": _usage([prompt], jobs, completion),
                }
            )
        yield "data: [DONE]\n\n"

    return event_stream(_reporting(events()))


def _prompts(body: dict[str, Any], tokenizer: Any) -> tuple[list[list[int]], list[str]]:
    """A completion request's prompts as ids and as text: a string, a list of strings, a list of token ids, or a
    list of such lists (one answer, or `n`, per prompt)."""
    raw = body.get("prompt")
    vocab = _vocab_size(tokenizer)
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "field 'prompt' is required: a string, a list of strings or of token id lists")
    ids, texts = [], []
    for k, p in enumerate(raw):
        if isinstance(p, str) and p:
            ids.append(chat_template.text_ids(tokenizer, p))
            texts.append(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if not all(0 <= t < vocab for t in p):
                raise ApiError(400, f"prompt[{k}]: a token id is outside the vocabulary (0 to {vocab - 1})")
            ids.append(list(p))
            texts.append(chat_template.hf_tokenizer(tokenizer).decode(p))
        else:
            raise ApiError(400, f"prompt[{k}] must be a non-empty string or list of token ids")
    return ids, texts


@bp.post("/completions")
def completions() -> Response:
    """Text continuation of a plain prompt, no chat template (what the model does with raw text)."""
    body = json_body()
    model, ref, tokenizer, sampling = _request(body, chat=False)
    n, usage_chunk = openai_request.choices(body), openai_request.include_usage(body)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise ApiError(400, "field 'echo' must be true or false")
    if echo and sampling.top_logprobs is not None:
        raise ApiError(400, "'echo' with 'logprobs' would need the prompt's log-probabilities, not computed here")
    prompts, texts = _prompts(body, tokenizer)
    jobs = _submit(prompts, sampling, n, ref)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None}

    if not openai_request.stream(body):
        answers = _collect(jobs)
        out = []
        for i, a in enumerate(answers):
            prefix = texts[i // n] if echo else ""
            logprobs = _completion_logprobs(tokenizer, a.tokens, 0) if sampling.top_logprobs is not None else None
            out.append({"index": i, "text": prefix + "".join(a.text), "logprobs": logprobs, "finish_reason": a.reason})
        return jsonify({**head, "choices": out, "usage": _usage(prompts, jobs, sum(a.n for a in answers))})

    def events() -> Iterator[str]:
        extra = {"usage": None} if usage_chunk else {}
        offsets = [0] * len(jobs)
        completion = 0
        if echo:
            for i in range(len(jobs)):
                yield sse({**head, **extra, "choices": [{"index": i, "text": texts[i // n], "logprobs": None}]})
        for i, piece in _merged(jobs):
            logprobs = None
            if sampling.top_logprobs is not None:
                logprobs = _completion_logprobs(tokenizer, piece.tokens, offsets[i])
            offsets[i] += len(piece.text)
            if piece.finish_reason is not None:
                completion += piece.generation_tokens
            choice = {"index": i, "text": piece.text, "logprobs": logprobs, "finish_reason": piece.finish_reason}
            yield sse({**head, **extra, "choices": [choice]})
        if usage_chunk:
            yield sse({**head, "choices": [], "usage": _usage(prompts, jobs, completion)})
        yield "data: [DONE]\n\n"

    return event_stream(_reporting(events()))
