"""Byte-level BPE pre-tokenizers, keyed by llama.cpp's `tokenizer.ggml.pre` names.

A GGUF file carries vocab and merges but only the *name* of the pre-tokenizer; this table turns that name back into
the `tokenizers` pipeline the original tokenizer.json had, so ids match the original model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex, normalizers, pre_tokenizers

# The split patterns as the original tokenizer.json files spell them.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501  (one regex, as tokenizer.json spells it)


@dataclass(frozen=True)
class PreTokenizer:
    kind: str  # "split": one regex then bytes; "digits": single digits then GPT-2's regex; "gpt2": GPT-2's regex
    pattern: str | None = None
    nfc: bool = False
    ignore_merges: bool = False  # Llama 3 looks whole words up in the vocab before merging


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "qwen2": PreTokenizer("split", QWEN2_PATTERN, nfc=True),
    "llama-bpe": PreTokenizer("split", LLAMA3_PATTERN, ignore_merges=True),
    "smollm": PreTokenizer("digits"),
    "starcoder": PreTokenizer("digits"),
    "refact": PreTokenizer("digits"),
    "gpt-2": PreTokenizer("gpt2"),
}


def build_pre_tokenizer(spec: PreTokenizer) -> pre_tokenizers.PreTokenizer:
    if spec.kind == "split":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(spec.pattern or ""), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    if spec.kind == "digits":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def build_normalizer(spec: PreTokenizer) -> normalizers.Normalizer | None:
    return normalizers.NFC() if spec.nfc else None
