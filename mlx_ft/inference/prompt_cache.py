"""The prompt cache: the KV state of earlier answers, so a conversation's next turn reads only what is new.

Each turn of a chat sends the whole conversation again; without a cache every turn prefills it from its first token,
so the time to the first token grows with the history. Here the KV cache of every finished answer (its prompt and the
tokens it generated) is kept under the weights that computed it, and a new prompt starts from the entry sharing its
longest prefix: an exact or shorter entry is copied and the rest of the prompt prefilled, a longer one is copied and
trimmed back to the shared part. mlx_lm's `LRUPromptCache` does the bookkeeping (a trie per model, LRU order, byte
and entry bounds); this module decides what a key is, keeps every entry from crossing to other weights, and reports
how many of a prompt's tokens were read from the cache.

An entry is keyed by the identity of the weights that made it: the base, the adapter worn and that adapter file's
stamp, so an answer of one run is never continued with another run's cache, nor with a retrained run's old one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import psutil

DEFAULT_ENTRIES = 16  # conversations kept (mlx_lm's server keeps 10)
# The default byte bound: an eighth of the machine's memory, at most 4 GiB. A 3B model's KV for a 4k-token
# conversation is ~150 MB in float16, so a Mac mini with 24 GB keeps ~20 such conversations in 3 GiB.
MEMORY_SHARE = 8
MAX_DEFAULT_BYTES = 4 << 30


def default_bytes() -> int:
    return min(psutil.virtual_memory().total // MEMORY_SHARE, MAX_DEFAULT_BYTES)


def parse_bytes(text: str) -> int:
    """A size as `serve --prompt-cache-bytes` takes it: bytes, or a number with K, M or G (binary units, B optional:
    512M, 2GB, 1.5G); 0 turns the cache off."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    number = t[:-1] if scale > 1 else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size: write bytes or a number with K, M or G (e.g. 2G)") from None
    if not 0 <= value < 1 << 50:  # NaN and infinity fail this too
        raise ValueError(f"{text!r} is not a size between 0 and 1024 TiB")
    return int(value * scale)


class PromptCache:
    """KV caches of earlier prompts, looked up by longest common token prefix, bounded by entries and bytes.

    Used by the scheduler's thread only (MLX arrays belong to the stream that made them)."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES, max_bytes: int | None = None) -> None:
        # Here, not at the top: `serve`'s parser reads this module's defaults before MLX may load.
        from mlx_lm.models import cache as mlx_cache  # noqa: PLC0415

        self._mlx = mlx_cache
        self.max_bytes = default_bytes() if max_bytes is None else max_bytes
        self.max_entries = max_entries
        self._lru = mlx_cache.LRUPromptCache(max_size=max_entries, max_bytes=self.max_bytes)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def __len__(self) -> int:
        return len(self._lru)

    def take(self, weights: Hashable, prompt: Sequence[int]) -> tuple[list[Any] | None, int]:
        """A copy of the cache sharing the longest prefix with `prompt` under `weights`, and how many of the
        prompt's tokens it holds (None, 0: nothing to start from). At least the prompt's last token is left to
        compute, since its logits give the answer's first token."""
        if not self.enabled or len(prompt) < 2:
            return None, 0
        cache, rest = self._lru.fetch_nearest_cache(weights, list(prompt))
        if cache is None:
            return None, 0
        if not rest:  # the whole prompt is cached: step back one token so it is computed again
            if not self._mlx.can_trim_prompt_cache(cache):
                return None, 0
            self._mlx.trim_prompt_cache(cache, 1)
            return cache, len(prompt) - 1
        return cache, len(prompt) - len(rest)

    def keep(self, weights: Hashable, tokens: Sequence[int], cache: list[Any]) -> None:
        """Keep `cache`, the KV state of exactly `tokens` computed by `weights`; the least recently kept entries go
        when the bounds are passed (an entry alone larger than the byte bound is not kept)."""
        if not self.enabled or not tokens:
            return
        if sum(c.nbytes for c in cache) > self.max_bytes:
            return
        self._lru.insert_cache(weights, list(tokens), cache)
