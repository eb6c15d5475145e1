"""The one place that turns a conversation into text and token ids.

Training, inference, the server and the Modelfile all call these functions, so the model is trained on
exactly the tokens it will see when it is used. The template itself is the model's own (tokenizer_config.json's
`chat_template`); we never keep a second copy of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError

# The one vocabulary of a conversation, everywhere in mlx_ft: OpenAI's chat roles and {"role", "content"} messages.
# An assistant message may carry OpenAI's `tool_calls` ([{"id"?, "type": "function", "function": {"name",
# "arguments": JSON string}}]); a tool result is {"role": "tool", "tool_call_id"?, "content"}; the tools offered are
# OpenAI's [{"type": "function", "function": {"name", "description", "parameters"}}], beside the messages.
ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, Any]
Tool = dict[str, Any]


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside mlx_lm's TokenizerWrapper (or the tokenizer itself). A bare fast tokenizer
    has a `_tokenizer` too, its Rust core, which knows no chat template: only a wrapper's is taken."""
    inner = getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "apply_chat_template") else tokenizer


def has_template(tokenizer: Any) -> bool:
    """Whether the model ships a chat template (base models often do not, and cannot be chat-tuned as they are)."""
    return bool(getattr(hf_tokenizer(tokenizer), "chat_template", None))


def for_template(messages: Sequence[Message]) -> list[Message]:
    """The messages as Hugging Face chat templates expect them: OpenAI's shape, except that a tool call's
    `arguments` is an object, not a JSON string (Qwen2.5 and Llama 3.1 write `arguments | tojson`, which would
    quote a string a second time). Arguments that are not valid JSON stay as they are."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [_call_for_template(c) for c in m["tool_calls"]]}
        out.append(m)
    return out


def _call_for_template(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function")
    if not (isinstance(fn, dict) and isinstance(fn.get("arguments"), str)):
        return call
    try:
        arguments = json.loads(fn["arguments"])
    except json.JSONDecodeError:
        return call
    return {**call, "function": {**fn, "arguments": arguments}}


def render(
    tokenizer: Any,
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    tools: Sequence[Tool] | None = None,
) -> str:
    """The conversation as the model's chat template writes it, with the `tools` it may call."""
    hf = hf_tokenizer(tokenizer)
    if not has_template(tokenizer):
        raise ValueError("this tokenizer has no chat template")
    try:
        return hf.apply_chat_template(
            for_template(messages),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except TemplateError as e:  # the template refuses the conversation (Llama 3.1: one call per turn)
        raise ValueError(f"the chat template refuses this conversation: {e}") from None


def encode(
    tokenizer: Any,
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    tools: Sequence[Tool] | None = None,
) -> list[int]:
    """Token ids of the rendered conversation. Templates write their own BOS, so no special tokens are added."""
    return _ids(tokenizer, render(tokenizer, messages, add_generation_prompt, tools))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(hf_tokenizer(tokenizer).encode(text, add_special_tokens=False))


_PROBE = "\u2063answer\u2063"  # text no real answer contains, to find where the template puts an answer


@dataclass(frozen=True)
class AnswerFrame:
    """What the template writes around an assistant answer: `preamble` between the generation prompt and the answer
    (Qwen3 writes an empty `<think>\n\n</think>\n\n` block there), and `end` after it (`<|im_end|>\n`)."""

    preamble: str
    end: str


_frames: dict[tuple[Any, ...], AnswerFrame] = {}
_tool_support: dict[tuple[Any, ...], bool] = {}


def _template_key(tokenizer: Any) -> tuple[Any, ...]:
    """What a probe's result depends on: the template and the special tokens it may write."""
    hf = hf_tokenizer(tokenizer)
    return (getattr(hf, "chat_template", None), getattr(hf, "bos_token", None), getattr(hf, "eos_token", None))


def answer_frame(tokenizer: Any) -> AnswerFrame:
    """The template's frame around an answer, found by rendering a probe conversation (once per template)."""
    key = _template_key(tokenizer)
    if key not in _frames:
        _frames[key] = _probe_frame(tokenizer)
    return _frames[key]


def _probe_frame(tokenizer: Any) -> AnswerFrame:
    question = [{"role": "user", "content": "?"}]
    prompt = render(tokenizer, question, add_generation_prompt=True)
    full = render(tokenizer, [*question, {"role": "assistant", "content": _PROBE}])
    at = full.find(_PROBE)
    if at < 0:
        raise ValueError("the chat template does not write the assistant's answer")
    preamble = full[len(prompt) : at] if full.startswith(prompt) else ""
    return AnswerFrame(preamble, full[at + len(_PROBE) :])


_PROBE_NAMES = ("mlx_ft_probe_tool", "mlx_ft_probe_call", "mlx_ft_probe_result")


def supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template writes tools, an assistant's tool calls and their results (Qwen2.5, Qwen3 and
    Llama 3.1 do; plain ChatML drops them): found by rendering a probe conversation, once per template."""
    key = _template_key(tokenizer)
    if key not in _tool_support:
        _tool_support[key] = _probe_tools(tokenizer)
    return _tool_support[key]


def _probe_tools(tokenizer: Any) -> bool:
    if not has_template(tokenizer):
        return False
    tool, call, result = _PROBE_NAMES
    tools = [{"type": "function", "function": {"name": tool, "description": "?", "parameters": {"type": "object"}}}]
    # The id has Mistral's required shape (nine alphanumerics), so its template is judged on tools, not on ids.
    calls = [{"id": "probe0001", "type": "function", "function": {"name": call, "arguments": '{"q": 1}'}}]
    messages = [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "probe0001", "content": result},
        {"role": "assistant", "content": "!"},
    ]
    try:
        text = render(tokenizer, messages, tools=tools)
    except Exception:  # noqa: BLE001 -- a template that raises on tools (or on their fields) cannot render them
        return False
    return all(name in text for name in _PROBE_NAMES)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends an assistant turn (`<|im_end|>`, `<|eot_id|>`): generation must stop there. None when the
    template ends a turn with plain text only."""
    end = answer_frame(tokenizer).end.strip()
    ids = _ids(tokenizer, end) if end else []
    special = set(getattr(hf_tokenizer(tokenizer), "all_special_ids", ())) | set(
        getattr(hf_tokenizer(tokenizer), "added_tokens_decoder", {}) or {}
    )
    return ids[0] if ids and ids[0] in special else None


def prompt_text(tokenizer: Any, messages: Sequence[Message], tools: Sequence[Tool] | None = None) -> str:
    """The text a model reads before it writes its answer to the conversation's last message: the generation prompt
    plus the answer preamble. Training learns only what follows this, so inference gives exactly this."""
    return render(tokenizer, messages, add_generation_prompt=True, tools=tools) + answer_frame(tokenizer).preamble


def prompt_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[Tool] | None = None) -> list[int]:
    """Ids to feed a model that must answer the conversation's last (user or tool) message."""
    return _ids(tokenizer, prompt_text(tokenizer, messages, tools))


@dataclass(frozen=True)
class Turns:
    """Where a conversation's assistant turns are learned. `spans`: character spans in `text`, the whole rendered
    conversation. `apart`: turns the whole rendering writes differently from what inference asks the model to write,
    each as (its prompt as inference gives it + its answer, where the answer starts), to be learned in a sequence of
    its own."""

    text: str
    spans: list[tuple[int, int]]
    apart: list[tuple[str, int]]


def assistant_turns(tokenizer: Any, messages: Sequence[Message], tools: Sequence[Tool] | None = None) -> Turns:
    """What the model should learn to write: each assistant turn (its text and its tool calls, in the template's own
    format), its end-of-turn marker included, and nothing of the system, user or tool turns.

    A turn's answer is what the template writes after the generation prompt and the answer preamble when the
    conversation ends with that turn: exactly what inference asks the model to write. Where the whole conversation
    has that prompt and answer as a prefix, the turn is learned there. Qwen3 writes its empty think block (the
    preamble) only in the last turns, not in an assistant turn that a tool result follows: such a turn is learned
    apart, after the prompt inference gives (preamble included), or the model would learn to call tools only where
    it is never asked to. A turn a template rewrites otherwise (dropping old reasoning) is not learned; the last one
    always is.
    """
    text = render(tokenizer, messages, tools=tools)
    preamble = answer_frame(tokenizer).preamble
    spans: list[tuple[int, int]] = []
    apart: list[tuple[str, int]] = []
    for k, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], add_generation_prompt=True, tools=tools) if k else ""
        through = render(tokenizer, messages[: k + 1], tools=tools)
        answer = through[len(prompt) :].removeprefix(preamble) if through.startswith(prompt) else ""
        asked = prompt + preamble  # what inference feeds the model before this answer
        if answer and text.startswith(asked + answer):
            spans.append((len(asked), len(asked) + len(answer)))
        elif answer and text.startswith(prompt + answer):
            apart.append((asked + answer, len(asked)))
        elif k == len(messages) - 1 and text.startswith(asked):
            spans.append((len(asked), len(text)))
    if not spans and not apart:
        raise ValueError("the conversation has no assistant turn the chat template renders")
    return Turns(text, spans, apart)


def _masked(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], mask_prompt: bool
) -> tuple[list[int], list[int]]:
    """Ids of `text` and a 0/1 weight per id: 1 on the tokens that start inside a span. The mask comes from character
    offsets of one tokenization of the whole text, so tokens that BPE merges across a turn boundary are handled the
    way the model will actually see them."""
    enc = hf_tokenizer(tokenizer)(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    if not mask_prompt:
        return ids, [1] * len(ids)
    mask = [0] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(s <= start < e for s, e in spans):
            mask[i] = 1
    return ids, mask


def training_tokens(
    tokenizer: Any,
    messages: Sequence[Message],
    mask_prompt: bool = True,
    last_only: bool = False,
    tools: Sequence[Tool] | None = None,
) -> tuple[list[int], list[int]]:
    """Ids of the whole conversation (with the `tools` it was offered) and a 0/1 weight per id: 1 where the loss
    applies (with `last_only`, on the final assistant turn alone: a preference pair compares its two answers, not
    the turns they share). Turns learned apart (`assistant_turns`) are not learned here: `training_sequences` has
    them."""
    turns = assistant_turns(tokenizer, messages, tools)
    spans = turns.spans[-1:] if last_only else turns.spans
    return _masked(tokenizer, turns.text, spans, mask_prompt)


def training_sequences(
    tokenizer: Any, messages: Sequence[Message], mask_prompt: bool = True, tools: Sequence[Tool] | None = None
) -> list[tuple[list[int], list[int]]]:
    """What one conversation trains on: the whole conversation with the turns learned in it, then one sequence per
    turn learned apart (its prompt as inference gives it, then the answer), each as (ids, 0/1 weights)."""
    turns = assistant_turns(tokenizer, messages, tools)
    if not mask_prompt:  # every token is learned: the whole conversation holds them all
        return [_masked(tokenizer, turns.text, [], mask_prompt)]
    out = [_masked(tokenizer, turns.text, turns.spans, mask_prompt)] if turns.spans else []
    for text, at in turns.apart:
        out.append(_masked(tokenizer, text, [(at, len(text))], mask_prompt))
    return out


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of plain text, no chat template: what the model reads as a document (its BOS first, if it uses one).
    Continued pre-training learns these; the completions API continues them."""
    return list(hf_tokenizer(tokenizer).encode(text, add_special_tokens=True))


def text_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Ids of a plain-text example (continued pre-training) and its weights: every token is learned, the end-of-text
    token included, so the model also learns where a document stops."""
    hf = hf_tokenizer(tokenizer)
    ids = text_ids(tokenizer, text)
    if hf.eos_token_id is not None:
        ids.append(hf.eos_token_id)
    return ids, [1] * len(ids)
