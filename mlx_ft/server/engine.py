"""The one loaded model behind the server, and the lock that makes its answers one at a time.

MLX generation is not re-entrant across threads and interleaving two conversations' decode steps would buy nothing
on one device, so every answer (streamed or not) holds the lock from its first to its last token: concurrent
requests queue, and tokens can never cross between conversations.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from mlx_ft import chat_template
from mlx_ft.chat_template import Message
from mlx_ft.inference import generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader

FALLBACK_CONTEXT = 4096  # when the model config names no context length


class TooLong(ValueError):
    """The conversation plus the answer it may get does not fit the model's context window."""


class Engine:
    def __init__(self, loaded: loader.Loaded) -> None:
        self.loaded = loaded
        self._lock = threading.Lock()
        args = getattr(loaded.model, "args", None)
        self.context = int(getattr(args, "max_position_embeddings", None) or FALLBACK_CONTEXT)

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def prompt(self, messages: Sequence[Message], max_tokens: int) -> list[int]:
        """The prompt ids for `messages`, refused when the prompt plus `max_tokens` exceeds the context window."""
        ids = chat_template.prompt_ids(self.tokenizer, messages)
        if len(ids) + max_tokens > self.context:
            raise TooLong(
                f"the conversation is {len(ids)} tokens; with max_tokens {max_tokens} it exceeds the "
                f"model's context window of {self.context} tokens (clear it or lower max_tokens)"
            )
        return ids

    def stream(self, prompt: list[int], sampling: Sampling) -> Iterator[generation.Chunk]:
        """The answer piece by piece, holding the model for the whole answer. Closing the iterator early (a client
        that went away) releases it."""
        with self._lock:
            yield from generation.stream_ids(self.loaded.model, self.tokenizer, prompt, sampling)

    def answer(self, prompt: list[int], sampling: Sampling) -> tuple[str, str | None, int]:
        """The whole answer, why it ended, and how many tokens it has."""
        text, reason, n = [], None, 0
        for chunk in self.stream(prompt, sampling):
            text.append(chunk.text)
            reason, n = chunk.finish_reason, chunk.generation_tokens
        return "".join(text), reason, n

    def answer_many(self, prompts: Sequence[list[int]], sampling: Sampling) -> list[str]:
        """Answers to many prompts in one batched generation, holding the model for all of them."""
        with self._lock:
            return generation.answer_many_ids(self.loaded.model, self.tokenizer, prompts, sampling, desc="task batch")
