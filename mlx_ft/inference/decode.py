"""One answer's decoding, token by token, wherever it is generated: its sampler (a seeded answer with its own
random key), its logits processors (penalties, logit bias), and its text: whole characters only, cut before the
first stop string, each token's log-probability travelling with the piece that carries its text. The scheduler
applies these to every answer it generates (`scheduler.py`), for the server and the commands alike."""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors, make_sampler
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer, StreamingDetokenizer

from mlx_ft.inference import constrain
from mlx_ft.inference.sampling import Sampling


def sampler(sampling: Sampling) -> Any:
    """The sampler for `sampling`: mlx_lm's, shared by every answer with the same settings (a batch of answers that
    share one sampler is sampled in one call), or, with a seed, one with its own random key, so that a seeded answer
    is the same whichever other answers are generated beside it."""
    if sampling.top_p == 0:  # nucleus of probability 0: the likeliest token alone (OpenAI's meaning)
        sampling = dataclasses.replace(sampling, temp=0.0)
    if sampling.seed is None or sampling.temp == 0:
        return _shared_sampler(sampling.temp, _top_p(sampling), sampling.min_p, sampling.top_k)
    return _SeededSampler(sampling)


def _top_p(sampling: Sampling) -> float:
    return sampling.top_p if 0 < sampling.top_p < 1 else 0.0


@lru_cache(maxsize=64)
def _shared_sampler(temp: float, top_p: float, min_p: float, top_k: int) -> Any:
    return make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k)


class _SeededSampler:
    """mlx_lm's filters (top-p, min-p, top-k) and a categorical draw from this answer's own key, split per token."""

    def __init__(self, sampling: Sampling) -> None:
        self._key = mx.random.key(sampling.seed % (1 << 64))  # any integer: OpenAI's seeds may be negative
        self._temp = sampling.temp
        self._filters: list[Any] = []
        if top_p := _top_p(sampling):
            self._filters.append(lambda x: apply_top_p(x, top_p))
        if sampling.min_p:
            self._filters.append(lambda x: apply_min_p(x, sampling.min_p))
        if sampling.top_k:
            self._filters.append(lambda x: apply_top_k(x, sampling.top_k))

    def __call__(self, logprobs: mx.array) -> mx.array:
        self._key, key = mx.random.split(self._key)
        for f in self._filters:
            logprobs = f(logprobs)
        return mx.random.categorical(logprobs * (1.0 / self._temp), key=key)


def logits_processors(sampling: Sampling, tokenizer: Any = None) -> list[Any]:
    """mlx_lm's processors for the penalties and logit bias of `sampling` (none: an empty list), then its
    constraint's mask (which needs the `tokenizer`), last, so no bias can bring back a token it forbids. The
    penalties look at the whole answer so far (OpenAI's meaning), not mlx_lm's default last 20 tokens."""
    mask = [constrain.processor(sampling.constraint, tokenizer)] if sampling.constraint is not None else []
    return _mlx_processors(sampling) + mask


def _mlx_processors(sampling: Sampling) -> list[Any]:
    return make_logits_processors(
        dict(sampling.logit_bias) or None,
        sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None,
        sampling.max_tokens,
        sampling.presence_penalty or None,
        sampling.max_tokens,
        sampling.frequency_penalty or None,
        sampling.max_tokens,
    )


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the `top` likeliest (id, log-probability) there."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(token: int, logprobs: mx.array, top: int) -> TokenLogprob:
    """`token`'s entry from the model's log-probabilities over the vocabulary at its step."""
    if top <= 0:
        return TokenLogprob(token, logprobs[token].item())
    best = mx.argpartition(-logprobs, kth=top - 1)[:top]
    values = logprobs[best]
    order = mx.argsort(-values)
    ids, lps = best[order].tolist(), values[order].tolist()
    return TokenLogprob(token, logprobs[token].item(), tuple(zip(ids, lps, strict=True)))


@dataclass
class Chunk:
    """A piece of a streamed answer; the last one has `finish_reason` "stop" (end of turn, or a stop string) or
    "length". `tokens` are the log-probabilities of the tokens whose text this piece carries, when asked for."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    generation_tokens: int
    generation_tps: float
    tokens: list[TokenLogprob] = field(default_factory=list)
    cached_tokens: int = 0  # of the prompt's tokens, how many were read from the prompt cache


class Detokenizer(StreamingDetokenizer):
    """One answer's tokens as text, in whole characters only; a drop-in for mlx_lm's streaming detokenizers.

    mlx_lm's detokenizers decode the bytes they hold with errors="replace" when an answer ends, and flush a
    character's first bytes as U+FFFD when the next token does not complete it: an answer cut by max_tokens in the
    middle of a character (a CJK character is 3 bytes, often 2 tokens) ended in "\ufffd". Here every token's bytes go
    through one incremental UTF-8 decoder: an unfinished character's bytes wait for the next token, and bytes that
    can never form a character (the answer ended, or the next bytes do not continue it) are dropped. A U+FFFD the
    model wrote as a whole character (EF BF BD) still comes through. Tokenizers whose pieces are not bytes (mlx_lm's
    naive detokenizer) keep mlx_lm's decoding, less the replacement characters it may end an answer with."""

    SPM_SPACE = "\u2581".encode()  # SentencePiece's word boundary, a space in the text

    def __init__(self, tokenizer: Any) -> None:
        self._inner = tokenizer.detokenizer  # mlx_lm's, chosen for this tokenizer; its token table is shared
        self._bytes = self._byte_pieces(self._inner)
        # mlx_lm drops the space a BPE or SentencePiece answer starts with (the word-boundary space): so do we.
        self._trim = isinstance(self._inner, BPEStreamingDetokenizer) or getattr(self._inner, "trim_space", False)
        self.reset()

    def reset(self) -> None:
        self.offset = 0
        self.text = ""
        self.tokens: list[int] = []
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._started = False  # some text came: only the answer's first character may be a trimmed space
        self._inner.reset()

    def add_token(self, token: int) -> None:
        self.tokens.append(token)
        if self._bytes is None:
            self._inner.add_token(token)
            self.text = self._inner.text  # holds an unfinished character back (strips its trailing U+FFFD)
        else:
            self._append(self._utf8.decode(self._bytes(token)))

    def finalize(self) -> None:
        if self._bytes is None:
            self._inner.finalize()  # decodes what it held with "replace": an unfinished character is U+FFFD
            self.text += self._inner.text[len(self.text) :].rstrip("\ufffd")
        else:
            self._append(self._utf8.decode(b"", final=True))  # an unfinished last character is dropped

    def _append(self, text: str) -> None:
        if text and not self._started:
            self._started = True
            if self._trim and text.startswith(" "):
                text = text[1:]
        self.text += text

    @classmethod
    def _byte_pieces(cls, inner: StreamingDetokenizer) -> Any:
        """token id → its bytes, from the table of mlx_lm's BPE or SentencePiece detokenizer; None for others."""
        if isinstance(inner, BPEStreamingDetokenizer):
            table, chars = inner.tokenmap, _bpe_byte_of_char()
            # An id past the tokenizer's table (a padded embedding) is "!", as mlx_lm has it.
            return lambda t: b"".join(_bpe_bytes(table[t] if t < len(table) else "!", chars))
        if isinstance(inner, SPMStreamingDetokenizer):
            table = inner.tokenmap
            return lambda t: table[t].replace(cls.SPM_SPACE, b" ") if t < len(table) else b""
        return None


def _bpe_bytes(piece: str, chars: dict[str, int]) -> Iterator[bytes]:
    """A byte-level BPE token's bytes: each character stands for one byte; others (added tokens) for themselves."""
    for c in piece:
        b = chars.get(c)
        yield c.encode() if b is None else bytes((b,))


@lru_cache(maxsize=1)
def _bpe_byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable bytes are their own character, the rest are shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table


class AnswerText:
    """One answer's tokens as text pieces, cut before the first stop string.

    Text that may be the start of a stop string is held back until the next tokens show it is not, so a stop string
    split over several tokens (or streamed pieces) is still never shown. Each token's log-probability travels with
    the piece that carries its text."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._detokenizer = Detokenizer(tokenizer)
        self._stop = [s for s in stop if s]
        self._pending: list[tuple[str, TokenLogprob | None]] = []
        self.stopped = False  # a stop string was found: the answer is over

    def add(self, token: int, info: TokenLogprob | None = None) -> tuple[str, list[TokenLogprob]]:
        """The text (and token entries) that can be shown now that `token` was generated."""
        self._detokenizer.add_token(token)
        return self._emit(self._detokenizer.last_segment, info, final=False)

    def finish(self) -> tuple[str, list[TokenLogprob]]:
        """The rest of the answer's text, once it has ended."""
        self._detokenizer.finalize()
        return self._emit(self._detokenizer.last_segment, None, final=True)

    def _emit(self, segment: str, info: TokenLogprob | None, final: bool) -> tuple[str, list[TokenLogprob]]:
        if self.stopped:
            return "", []
        if segment or info is not None:
            self._pending.append((segment, info))
        text = "".join(t for t, _ in self._pending)
        cuts = [i for s in self._stop if (i := text.find(s)) >= 0]
        if cuts:
            self.stopped = True
            out = self._take(min(cuts))
            self._pending = []
            return out
        if final or not self._stop:
            return self._take(len(text))
        held = max((self._held(s, text) for s in self._stop), default=0)
        return self._take(len(text) - held)

    @staticmethod
    def _held(stop: str, text: str) -> int:
        """How much of the end of `text` may be the start of `stop` (the longest such part)."""
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return k
        return 0

    def _take(self, n: int) -> tuple[str, list[TokenLogprob]]:
        """The first `n` characters of the pending text and the entries of the tokens that start in them."""
        pieces: list[str] = []
        infos: list[TokenLogprob] = []
        while self._pending and n >= 0:
            text, info = self._pending[0]
            if len(text) > n:
                if n == 0 and text:
                    break
                pieces.append(text[:n])
                self._pending[0] = (text[n:], None)
                if info is not None:
                    infos.append(info)
                break
            pieces.append(text)
            if info is not None:
                infos.append(info)
            self._pending.pop(0)
            n -= len(text)
        return "".join(pieces), infos


def text_of(tokenizer: Any, ids: Sequence[int]) -> str:
    """An answer's tokens as the text the server streams: whole characters only (one cut at the end is dropped)."""
    detokenizer = Detokenizer(tokenizer)
    for token in ids:
        detokenizer.add_token(token)
    detokenizer.finalize()
    return detokenizer.text
