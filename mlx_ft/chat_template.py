"""The one place that turns a conversation into text and token ids.

Training, inference, the server and the Modelfile all call these functions, so the model is trained on
exactly the tokens it will see when it is used. The template itself is the model's own (tokenizer_config.json's
`chat_template`); we never keep a second copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The one vocabulary of a conversation, everywhere in mlx_ft: OpenAI's chat roles and {"role", "content"} messages.
ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, Any]


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside mlx_lm's TokenizerWrapper (or the tokenizer itself)."""
    return getattr(tokenizer, "_tokenizer", tokenizer)


def has_template(tokenizer: Any) -> bool:
    """Whether the model ships a chat template (base models often do not, and cannot be chat-tuned as they are)."""
    return bool(getattr(hf_tokenizer(tokenizer), "chat_template", None))


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as the model's chat template writes it."""
    hf = hf_tokenizer(tokenizer)
    if not has_template(tokenizer):
        raise ValueError("this tokenizer has no chat template")
    return hf.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the rendered conversation. Templates write their own BOS, so no special tokens are added."""
    return _ids(tokenizer, render(tokenizer, messages, add_generation_prompt))


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


def answer_frame(tokenizer: Any) -> AnswerFrame:
    """The template's frame around an answer, found by rendering a probe conversation (once per template)."""
    hf = hf_tokenizer(tokenizer)
    key = (getattr(hf, "chat_template", None), getattr(hf, "bos_token", None), getattr(hf, "eos_token", None))
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


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends an assistant turn (`<|im_end|>`, `<|eot_id|>`): generation must stop there. None when the
    template ends a turn with plain text only."""
    end = answer_frame(tokenizer).end.strip()
    ids = _ids(tokenizer, end) if end else []
    special = set(getattr(hf_tokenizer(tokenizer), "all_special_ids", ())) | set(
        getattr(hf_tokenizer(tokenizer), "added_tokens_decoder", {}) or {}
    )
    return ids[0] if ids and ids[0] in special else None


def prompt_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The text a model reads before it writes its answer to the conversation's last message: the generation prompt
    plus the answer preamble. Training learns only what follows this, so inference gives exactly this."""
    return render(tokenizer, messages, add_generation_prompt=True) + answer_frame(tokenizer).preamble


def prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Ids to feed a model that must answer the conversation's last (user) message."""
    return _ids(tokenizer, prompt_text(tokenizer, messages))


def assistant_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model should learn to write: each assistant turn,
    its end-of-turn marker included, and nothing of the system or user turns.

    A span is found by rendering the conversation up to that turn: the prompt before it (`prompt_text`, the answer
    preamble included, since inference writes that into the prompt) ends where the answer starts.
    Templates that rewrite earlier turns (Qwen3 drops old reasoning) break that prefix property; then only the last
    turn is learned, which is still never wrong.
    """
    text = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = prompt_text(tokenizer, messages[:k]) if k else ""
        through = render(tokenizer, messages[: k + 1])
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            if k == len(messages) - 1 and text.startswith(before):
                return text, [(len(before), len(text))]
            spans = []
            continue
        spans.append((len(before), len(through)))
    if not spans:
        raise ValueError("the conversation has no assistant turn the chat template renders")
    return text, spans


def training_tokens(
    tokenizer: Any, messages: Sequence[Message], mask_prompt: bool = True, last_only: bool = False
) -> tuple[list[int], list[int]]:
    """Ids of the whole conversation and a 0/1 weight per id: 1 where the loss applies (with `last_only`, on the
    final assistant turn alone: a preference pair compares its two answers, not the turns they share).

    The mask is taken from character offsets of one tokenization of the full text, so tokens that BPE merges across
    a turn boundary are handled the way the model will actually see them.
    """
    text, spans = assistant_spans(tokenizer, messages)
    spans = spans[-1:] if last_only else spans
    enc = hf_tokenizer(tokenizer)(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    if not mask_prompt:
        return ids, [1] * len(ids)
    mask = [0] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(s <= start < e for s, e in spans):
            mask[i] = 1
    return ids, mask


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
