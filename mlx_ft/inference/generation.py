"""Answers from a loaded model: one conversation streamed token by token, or many at once with mlx_lm's batch
generator. Prompts always come from `chat_template.prompt_ids`, the ids training put before every answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import BatchGenerator, stream_generate
from mlx_lm.sample_utils import make_sampler
from tqdm import tqdm

from mlx_ft import chat_template
from mlx_ft.chat_template import Message
from mlx_ft.inference.sampling import Sampling


def sampler(sampling: Sampling) -> Any:
    """mlx_lm's sampler for `sampling`, seeding MLX's generator first when a seed is given."""
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    return make_sampler(temp=sampling.temp, top_p=sampling.top_p if 0 < sampling.top_p < 1 else 0.0)


@dataclass
class Chunk:
    """A piece of a streamed answer; the last one has `finish_reason` "stop" (end of turn) or "length"."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    generation_tokens: int
    generation_tps: float


def stream(model: nn.Module, tokenizer: Any, messages: Sequence[Message], sampling: Sampling) -> Iterator[Chunk]:
    """The answer to the conversation's last message, piece by piece as it is generated."""
    return stream_ids(model, tokenizer, chat_template.prompt_ids(tokenizer, messages), sampling)


def stream_ids(model: nn.Module, tokenizer: Any, prompt: list[int], sampling: Sampling) -> Iterator[Chunk]:
    """The answer to a prompt already rendered to ids (`chat_template.prompt_ids`), piece by piece."""
    for r in stream_generate(model, tokenizer, prompt, max_tokens=sampling.max_tokens, sampler=sampler(sampling)):
        yield Chunk(r.text, r.finish_reason, r.prompt_tokens, r.generation_tokens, r.generation_tps)


def answer(model: nn.Module, tokenizer: Any, messages: Sequence[Message], sampling: Sampling) -> str:
    return "".join(c.text for c in stream(model, tokenizer, messages, sampling))


def answer_many(
    model: nn.Module,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    sampling: Sampling,
    max_tokens: Sequence[int] | None = None,
    desc: str = "generating",
) -> list[str]:
    """Answers to many conversations, generated in batches (continuous batching: a finished answer's slot is refilled
    at once). `max_tokens` may be given per conversation."""
    prompts = [chat_template.prompt_ids(tokenizer, c) for c in conversations]
    return answer_many_ids(model, tokenizer, prompts, sampling, max_tokens, desc)


def answer_many_ids(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    sampling: Sampling,
    max_tokens: Sequence[int] | None = None,
    desc: str = "generating",
) -> list[str]:
    """`answer_many` for prompts already rendered to ids."""
    if not prompts:
        return []
    limits = list(max_tokens) if max_tokens is not None else [sampling.max_tokens] * len(prompts)
    gen = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids], sampler=sampler(sampling))
    try:
        uids = gen.insert(list(prompts), limits)
        tokens: dict[int, list[int]] = {uid: [] for uid in uids}
        with tqdm(total=len(uids), desc=desc, unit="ans", leave=False, disable=None) as bar:
            while responses := gen.next_generated():
                for r in responses:
                    if r.finish_reason != "stop":
                        tokens[r.uid].append(r.token)
                    if r.finish_reason is not None:
                        bar.update(1)
    finally:
        gen.close()
    return [tokenizer.decode(tokens[uid]) for uid in uids]
