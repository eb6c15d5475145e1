"""A model's answer -> OpenAI tool calls, for the whole answer (`split`) or while it streams (`stream`).

Which format a model writes its calls in is a fact of its chat template, so the family is read from there. mlx_lm
already knows most families (`TokenizerWrapper.tool_parser` with its start/end markers, inferred from the template
by `mlx_lm.tokenizer_utils`); we reuse those parsers and add only what mlx_lm lacks: Llama 3.1/3.2/3.3's JSON calls,
which have no markers at all, so they are recognised by the answer starting with `{`.

The contract the server relies on: content is never lost (text that looks like a call but does not parse stays
content, verbatim, markers included), nothing raises on model output, and streamed events add up to exactly what
`split` returns for the same text (`split` is the stream fed in one piece).
"""

from __future__ import annotations

import importlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ToolCall = dict[str, Any]  # OpenAI's shape: {"id", "type": "function", "function": {"name", "arguments": "<json>"}}
Tools = Sequence[dict[str, Any]] | None  # the request's `tools`, which some mlx_lm parsers use to type arguments
MlxParse = Callable[[str, Any], Any]  # mlx_lm.tool_parsers.*.parse_tool_call(text, tools) -> dict | list[dict]

PYTHON_TAG = "<|python_tag|>"  # Llama 3.1+ may open a call with it (Meta's prompt-format docs); never content


@dataclass(frozen=True)
class ContentEvent:
    """Answer text, safe to show: it cannot be (the start of) a tool call."""

    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """One complete tool call, in OpenAI's shape (a streamed `delta.tool_calls` entry also needs its `index`)."""

    call: ToolCall


Event = ContentEvent | ToolCallEvent


class ToolCallStream(Protocol):
    def feed(self, piece: str) -> list[Event]:
        """Events the text so far makes certain; holds back only what may still become a call."""
        ...

    def finish(self) -> list[Event]:
        """The rest, at the end of the answer: a call cut off by the token limit is still a call if it parses."""
        ...


class ToolCallParser(Protocol):
    family: str  # the mlx_lm parser's module name ("json_tools", "mistral", ...) or "llama3_json"

    def stream(self, tools: Tools = None) -> ToolCallStream: ...

    def split(self, text: str, tools: Tools = None) -> tuple[str, list[ToolCall]]: ...


def parser_for(tokenizer: Any) -> ToolCallParser | None:
    """The parser for the model's tool-call format, or None when its chat template cannot call tools.

    mlx_lm's TokenizerWrapper has already resolved the family (tokenizer_config's `tool_parser_type` first, then the
    template), so its answer wins; a bare Hugging Face tokenizer gets the same inference from the template."""
    if getattr(tokenizer, "has_tool_calling", False) and getattr(tokenizer, "tool_parser", None) is not None:
        module = getattr(tokenizer.tool_parser, "__module__", "")
        family = module.rpartition(".")[2] or "mlx_lm"
        return MarkerParser(family, tokenizer.tool_call_start, tokenizer.tool_call_end or "", tokenizer.tool_parser)
    # Not chat_template.hf_tokenizer: a bare fast tokenizer's `_tokenizer` is its Rust core, which has no template.
    # The wrapper forwards `chat_template` and `get_vocab` to the tokenizer inside, so both kinds read alike here.
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    from mlx_lm.tokenizer_utils import _infer_tool_parser  # the one place mlx_lm maps templates to parsers

    family = _infer_tool_parser(tokenizer)
    if family is not None:
        module = importlib.import_module(f"mlx_lm.tool_parsers.{family}")
        return MarkerParser(family, module.tool_call_start, module.tool_call_end or "", module.parse_tool_call)
    if _is_llama3_json(template):
        return Llama3JsonParser()
    return None


def _is_llama3_json(template: str) -> bool:
    """Llama 3.1/3.2/3.3 templates write a call as `{"name": "' + tool_call.name + '", "parameters": ...}`."""
    return "tool_call.name" in template and '"parameters": ' in template


def openai_call(name: Any, arguments: Any, call_id: Any = None) -> ToolCall | None:
    """The call in OpenAI's shape, or None when it is not one (no name, arguments not a JSON object).

    `arguments` may be a dict or its JSON text (templates and parsers differ); OpenAI sends it as JSON text. A
    model-written id is kept (Mistral templates check the ids of earlier calls); otherwise a fresh one."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{secrets.token_hex(12)}"
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _from_parsed(parsed: Any) -> list[ToolCall] | None:
    """mlx_lm parsers return one {"name", "arguments"[, "id"]} dict or a list of them; all must be calls."""
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for p in items:
        call = openai_call(p.get("name"), p.get("arguments", {}), p.get("id")) if isinstance(p, dict) else None
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _split_with(stream: ToolCallStream, text: str) -> tuple[str, list[ToolCall]]:
    """A whole answer through the stream in one piece, so `split` and streaming cannot disagree."""
    content: list[str] = []
    calls: list[ToolCall] = []
    for event in [*stream.feed(text), *stream.finish()]:
        if isinstance(event, ContentEvent):
            content.append(event.text)
        else:
            calls.append(event.call)
    return "".join(content), calls


def _marker_prefix_len(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker` (what must wait for the next piece)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class _Content:
    """Content text out of a stream, minus the whitespace the template writes around calls (`\\n<tool_call>`):
    trailing whitespace waits to see whether a call follows; a call and the whitespace after it read as the
    whitespace before it, so text on both sides of a call keeps one separator and an answer does not end in one."""

    def __init__(self) -> None:
        self._pending = ""
        self._after_call = False

    def text(self, text: str) -> list[Event]:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return []
            self._after_call = False
        text = self._pending + text
        body = text.rstrip()
        self._pending = text[len(body) :]
        return [ContentEvent(body)] if body else []

    def call(self, calls: list[ToolCall]) -> list[Event]:
        self._after_call = True
        return [ToolCallEvent(c) for c in calls]

    def end(self) -> list[Event]:
        rest, self._pending = self._pending, ""
        return [] if self._after_call or not rest else [ContentEvent(rest)]


class _MarkerStream:
    """Calls between a start and an end marker (an empty end: the call runs to the end of the answer)."""

    def __init__(self, parser: MarkerParser, tools: Tools) -> None:
        self._p = parser
        self._tools = tools
        self._out = _Content()
        self._buf = ""
        self._in_call = False

    def feed(self, piece: str) -> list[Event]:
        self._buf += piece
        events: list[Event] = []
        start, end = self._p.start, self._p.end
        while True:
            if not self._in_call:
                at = self._buf.find(start)
                if at < 0:
                    keep = _marker_prefix_len(self._buf, start)
                    safe, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
                    return events + (self._out.text(safe) if safe else [])
                events += self._out.text(self._buf[:at]) if at else []
                self._buf, self._in_call = self._buf[at + len(start) :], True
            else:
                at = self._buf.find(end) if end else -1
                if at < 0:
                    return events
                events += self._close(self._buf[:at], end)
                self._buf, self._in_call = self._buf[at + len(end) :], False

    def finish(self) -> list[Event]:
        rest, self._buf = self._buf, ""
        if self._in_call:
            self._in_call = False
            return self._close(rest, "") + self._out.end()
        return (self._out.text(rest) if rest else []) + self._out.end()

    def _close(self, body: str, end: str) -> list[Event]:
        """A call's text is parsed by mlx_lm's parser; if that fails it goes back to content as it was written."""
        try:
            calls = _from_parsed(self._p.parse(body, self._tools))
        except Exception:  # each mlx_lm parser raises its own errors on bad text, and model output must not crash us
            calls = None
        if calls is None:
            return self._out.text(self._p.start + body + end)
        return self._out.call(calls)


@dataclass(frozen=True)
class MarkerParser:
    """A family mlx_lm parses: `<tool_call>` JSON (Qwen2.5/Qwen3), `[TOOL_CALLS]` (Mistral), and the rest of
    mlx_lm.tool_parsers."""

    family: str
    start: str
    end: str
    parse: MlxParse

    def stream(self, tools: Tools = None) -> ToolCallStream:
        return _MarkerStream(self, tools)

    def split(self, text: str, tools: Tools = None) -> tuple[str, list[ToolCall]]:
        return _split_with(self.stream(tools), text)


def parse_llama3_calls(text: str) -> list[ToolCall] | None:
    """`{"name": ..., "parameters": {...}}` calls, optionally after `<|python_tag|>`, several separated by `;` or
    newlines (what Llama 3.x writes for parallel calls), or None when the whole text is not such calls."""
    text = text.strip()
    text = text.removeprefix(PYTHON_TAG)
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    at = 0
    while True:
        while at < len(text) and (text[at].isspace() or text[at] == ";"):
            at += 1
        if at == len(text):
            return calls or None
        try:
            obj, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        call = openai_call(obj.get("name"), obj.get("parameters", obj.get("arguments", {})))
        if call is None:
            return None
        calls.append(call)


class _Llama3Stream:
    """No markers: an answer that opens with `{` (after whitespace or `<|python_tag|>`) is held and parsed at the
    end; any other answer streams as content from its first visible character."""

    def __init__(self) -> None:
        self._buf = ""
        self._mode: str | None = None  # None: undecided, "content", or "call"

    def feed(self, piece: str) -> list[Event]:
        if self._mode == "content":
            return [ContentEvent(piece)] if piece else []
        self._buf += piece
        if self._mode == "call":
            return []
        head = self._buf.lstrip()
        if not head or (PYTHON_TAG.startswith(head) and head != PYTHON_TAG):
            return []  # undecided
        body = head.removeprefix(PYTHON_TAG).lstrip()
        if not body:
            return []
        if body.startswith("{"):
            self._mode = "call"
            return []
        self._mode = "content"
        text, self._buf = self._buf, ""
        return [ContentEvent(text)]

    def finish(self) -> list[Event]:
        text, self._buf = self._buf, ""
        if not text:
            return []
        calls = parse_llama3_calls(text) if self._mode == "call" else None
        if calls is None:
            return [ContentEvent(text)]
        return [ToolCallEvent(c) for c in calls]


@dataclass(frozen=True)
class Llama3JsonParser:
    """Llama 3.1/3.2/3.3 JSON tool calls (the templates' format; mlx_lm has no parser for it)."""

    family: str = "llama3_json"

    def stream(self, tools: Tools = None) -> ToolCallStream:
        return _Llama3Stream()

    def split(self, text: str, tools: Tools = None) -> tuple[str, list[ToolCall]]:
        return _split_with(self.stream(tools), text)
