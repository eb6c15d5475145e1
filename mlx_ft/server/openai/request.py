"""What an OpenAI request asks for, checked: the sampling parameters shared by `/v1/chat/completions` and
`/v1/completions`, and the messages and tools of a chat.

Every parameter OpenAI's API defines is either honoured or refused with a 400 that names it; fields OpenAI does not
define are ignored, as OpenAI's own server does, so clients that send extras of their own keep working. Parameters
that change nothing in the answer (`user`, `metadata`, `store`, `service_tier`) are accepted.
"""

from __future__ import annotations

import re
from typing import Any

from mlx_ft import checks
from mlx_ft.data import check_conversation
from mlx_ft.data.formats import tool_calls_field, tools_field
from mlx_ft.errors import Invalid
from mlx_ft.inference import constrain
from mlx_ft.inference.sampling import MAX_TOKENS, OPENAI_TEMPERATURE, Constraint, Sampling
from mlx_ft.server.http import ApiError, field

MAX_CHOICES = 8  # `n`: answers generated together for one request
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 256  # each is looked for at every token: a long one would slow every answer being generated
MAX_ANSWERS = 64  # prompts × n of one request
MAX_TOP_LOGPROBS = 20  # as OpenAI (chat); the legacy completions API allows 5
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

# OpenAI parameters this server cannot honour, and what to do instead.
UNSUPPORTED = {
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated 'functions' is not supported; send 'tools'",
    "function_call": "the deprecated 'function_call' is not supported; send 'tool_choice'",
    "reasoning_effort": "reasoning effort is not supported by these models",
    "suffix": "'suffix' (insertion) is not supported",
}


def _int(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    return field(body, key, checks.integer, default, lo=lo, hi=hi)


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    return field(body, key, checks.number, default, lo=lo, hi=hi)


def refuse_unsupported(body: dict[str, Any]) -> None:
    for key, why in UNSUPPORTED.items():
        if body.get(key) not in (None, "", [], {}):
            raise ApiError(400, f"parameter '{key}': {why}")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise ApiError(400, "parameter 'modalities': only [\"text\"] is supported")


JSON_SCHEMA_KEYS = ("name", "schema", "strict", "description")


def response_format(body: dict[str, Any], tokenizer: Any) -> Constraint | None:
    """OpenAI's structured outputs: `{"type": "text"}` (none), `{"type": "json_object"}` (any JSON object) or
    `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`, compiled here so that a
    schema the grammar library cannot use is this request's 400, in the library's words."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    try:
        if kind == "json_object":
            constraint = constrain.json_object()
        elif kind == "json_schema":
            constraint = _json_schema(fmt.get("json_schema"))
        else:
            raise ApiError(
                400, 'parameter \'response_format\': \'type\' must be "text", "json_object" or "json_schema"'
            )
        if body.get("tools"):
            raise ApiError(400, "parameter 'response_format' cannot be combined with 'tools'")
        constrain.check(constraint, tokenizer)
    except Invalid as e:
        raise ApiError(400, f"parameter 'response_format': {e}") from None
    return constraint


def _json_schema(spec: Any) -> Constraint:
    if not isinstance(spec, dict):
        raise Invalid("'json_schema' must be an object with 'name' and 'schema'")
    unknown = sorted(set(spec) - set(JSON_SCHEMA_KEYS))
    if unknown:
        raise Invalid(f"unknown field(s) in 'json_schema': {', '.join(unknown)}; known: {', '.join(JSON_SCHEMA_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise Invalid("'json_schema.name' must be 1 to 64 letters, digits, '_' or '-'")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise Invalid("'json_schema.strict' must be true or false")
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        raise Invalid("'json_schema.description' must be a string")
    schema = spec.get("schema")
    return constrain.json_object() if schema is None else constrain.json_schema(schema)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise ApiError(
            400, f"field 'stop' must be a string of 1 to {MAX_STOP_CHARS} characters or a list of up to {MAX_STOPS}"
        )
    return tuple(stops)


def _logit_bias(body: dict[str, Any], vocab_size: int) -> tuple[tuple[int, float], ...]:
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise ApiError(400, "field 'logit_bias' must map token ids to numbers from -100 to 100")
    out = []
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(400, f"logit_bias: {key!r} is not a token id") from None
        if not 0 <= token < vocab_size:
            raise ApiError(400, f"logit_bias: token id {token} is outside the vocabulary (0 to {vocab_size - 1})")
        out.append((token, checks.number(value, f"logit_bias[{key}]", -100, 100)))
    return tuple(out)


def sampling(body: dict[str, Any], tokenizer: Any, vocab_size: int, chat: bool) -> Sampling:
    """The sampling a request asks for of a model with `tokenizer`. `logprobs` differs between the two APIs: a flag
    plus `top_logprobs` for chat, the number of top entries for completions."""
    refuse_unsupported(body)
    if chat:
        max_tokens = _int(body, "max_completion_tokens", None, 1, 1 << 20)
        if max_tokens is None:
            max_tokens = _int(body, "max_tokens", MAX_TOKENS, 1, 1 << 20)
        logprobs = field(body, "logprobs", checks.boolean, None)
        top = _int(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
        if top is not None and not logprobs:
            raise ApiError(400, "field 'top_logprobs' needs 'logprobs': true")
        top_logprobs = (top or 0) if logprobs else None
    else:
        max_tokens = _int(body, "max_tokens", COMPLETIONS_MAX_TOKENS, 1, 1 << 20)
        top_logprobs = _int(body, "logprobs", None, 0, 5)
    return Sampling(
        temp=_number(body, "temperature", OPENAI_TEMPERATURE, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=max_tokens or MAX_TOKENS,
        seed=_int(body, "seed", None, -(1 << 63), (1 << 64) - 1),
        top_k=_int(body, "top_k", 0, 0, vocab_size) or 0,  # mlx_lm's server's extension
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),  # mlx_lm's server's extension
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_repetition_penalty(body),
        logit_bias=_logit_bias(body, vocab_size),
        stop=_stop(body),
        top_logprobs=top_logprobs,
        constraint=response_format(body, tokenizer),
    )


def _repetition_penalty(body: dict[str, Any]) -> float:
    """mlx_lm's server's extension: a multiplicative penalty above 0 (1: off)."""
    penalty = _number(body, "repetition_penalty", 1.0, 0.0, 10.0)
    if penalty <= 0:
        raise ApiError(400, "field 'repetition_penalty' must be above 0 (1: no penalty)")
    return penalty


def stream(body: dict[str, Any]) -> bool:
    return field(body, "stream", checks.boolean, False)


def choices(body: dict[str, Any]) -> int:
    n = _int(body, "n", 1, 1, MAX_CHOICES)
    assert n is not None
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise ApiError(400, "parameter 'best_of' is not supported (only equal to n)")
    return n


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "field 'stream_options' must be an object like {\"include_usage\": true}")
    if not stream(body):
        raise ApiError(400, "field 'stream_options' is only allowed with 'stream': true")
    return bool(options.get("include_usage"))


def _content(m: dict[str, Any], i: int) -> str | None:
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"messages[{i}]: content part {kind!r} is not supported (text only)")
            parts.append(part["text"])
        return "".join(parts)
    if content is not None and not isinstance(content, str):
        raise ApiError(400, f"messages[{i}]: content must be a string or a list of text parts")
    return content


def _tool_calls(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """An assistant message's calls in OpenAI's shape, checked and normalised as prepared data's are (arguments a
    JSON object, kept as its JSON text)."""
    calls = m.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        raise ApiError(400, f"messages[{i}]: tool_calls must be a non-empty list")
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, f"messages[{i}].tool_calls[{k}]: needs a function with a name")
    try:
        return tool_calls_field(calls, "tool_calls")
    except ValueError as e:
        raise ApiError(400, f"messages[{i}].{e}") from None


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation: OpenAI roles (`developer` read as `system`), text content, assistant tool calls and tool
    results; it must end where the model answers (a user message or tool results)."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "field 'messages' is required: a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}]: role must be one of system, developer, user, assistant, tool")
        message: dict[str, Any] = {"role": role, "content": _content(m, i)}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _tool_calls(m, i)
        elif message["content"] is None:
            raise ApiError(400, f"messages[{i}]: content is required")
        if role == "tool" and isinstance(m.get("tool_call_id"), str):
            message["tool_call_id"] = m["tool_call_id"]
        out.append(message)
    try:
        check_conversation([*out, {"role": "assistant", "content": "-"}])
    except ValueError as e:
        raise ApiError(400, f"messages: {e} (the last message must be the user's, or tool results)") from None
    return out


def tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools the model may call (None: none, or `tool_choice: "none"`)."""
    raw = body.get("tools")
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise ApiError(
            400, 'parameter \'tool_choice\': only "auto" and "none"; forcing a call needs constrained decoding'
        )
    if body.get("parallel_tool_calls") is False:
        raise ApiError(400, "parameter 'parallel_tool_calls': false is not supported (the model decides)")
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise ApiError(400, "field 'tools' must be a list of {type: function, function: {name, ...}}")
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, f"tools[{i}] must be {{type: function, function: {{name, description, parameters}}}}")
    try:
        offered = tools_field(body, "tools")  # checked as prepared data's tools are: the template renders both
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    return None if choice == "none" else offered
