"""Structured outputs: an answer held to a grammar (any JSON object, a JSON schema, a regex, one of a list of
strings) by masking, at every step, the tokens that cannot continue it.

The grammar library is llguidance: on this CPU it compiles any of our grammars in ~2 ms and computes a step's mask in
15-140 us (`bench/grammar_cost.py`: xgrammar masks faster but compiles a new JSON schema in 0.5-1 s and needs torch
and triton; outlines-core takes 6-15 s to build plain JSON mode). The mask is one answer's logits processor, so a
constrained answer in a batch constrains only itself; its cost is the answer's own (well under 1% of a decode step).

`Constraint` (in `sampling`) says what to hold an answer to; `check` compiles it for a tokenizer in the request's
thread (a grammar that cannot compile is the request's error, with the library's words), and `processor` gives the
answer's processor, which follows the tokens as they are generated.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

from mlx_ft import chat_template
from mlx_ft.errors import Invalid, UserError
from mlx_ft.inference.sampling import Constraint

# Whitespace between JSON tokens: newlines and indentation allowed (a small model writes the JSON it was trained on,
# usually indented: held to one line, SmolLM2 named a field "age_color" where it wrote "color" indented), but at most
# 24 characters at a time, so that it cannot fill its whole budget with blanks (llguidance's default allows any run).
_JSON_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,24}"}
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 256
MAX_PATTERN_CHARS = 4096
MAX_SCHEMA_CHARS = 64 << 10

COMPILED_KEPT = 64  # grammars kept compiled per tokenizer, the least recently used dropped first


@dataclass
class _ForTokenizer:
    """llguidance's view of one of our tokenizers, and the grammars compiled for it (matchers never advanced)."""

    ll: llguidance.LLTokenizer
    compiled: OrderedDict[str, llguidance.LLMatcher] = field(default_factory=OrderedDict)


_tokenizers: weakref.WeakKeyDictionary[Any, _ForTokenizer] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def json_object() -> Constraint:
    """Any JSON object (OpenAI's `{"type": "json_object"}`)."""
    return _valid("json_object", llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, _JSON_OPTIONS))


def json_schema(schema: Any) -> Constraint:
    """JSON matching `schema` (OpenAI's `json_schema.schema`)."""
    if not isinstance(schema, dict):
        raise Invalid("the JSON schema must be an object")
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise Invalid(f"the JSON schema is longer than {MAX_SCHEMA_CHARS} characters")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, _JSON_OPTIONS)
    except ValueError as e:
        raise Invalid(f"the JSON schema cannot be used: {e}") from None
    return _valid("json_schema", grammar)


def regex(pattern: Any) -> Constraint:
    """Text matching `pattern` whole (Rust regex syntax, as Python's for the common parts; no backreferences or
    lookaround)."""
    if not isinstance(pattern, str) or not pattern:
        raise Invalid("the regex must be a non-empty string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise Invalid(f"the regex is longer than {MAX_PATTERN_CHARS} characters")
    return _valid("regex", llguidance.LLMatcher.grammar_from_regex(pattern))


def choice(options: Any) -> Constraint:
    """Exactly one of `options`."""
    if (
        not isinstance(options, list)
        or not options
        or not all(isinstance(o, str) and o for o in options)
        or len(options) > MAX_CHOICES
    ):
        raise Invalid(f"the choice must be a list of 1 to {MAX_CHOICES} non-empty strings")
    if any(len(o) > MAX_CHOICE_CHARS for o in options):
        raise Invalid(f"a choice is longer than {MAX_CHOICE_CHARS} characters")
    pattern = "|".join(re.escape(o) for o in dict.fromkeys(options))
    return _valid("choice", llguidance.LLMatcher.grammar_from_regex(f"({pattern})"))


def for_task(recipe_path: Any, task: Any, tokenizer: Any = None) -> Constraint | None:
    """What a recipe task's answers are held to: its pattern when the task says `constrain`, else None; compiled (for
    `tokenizer` too, when given), a pattern that cannot be used refused naming the recipe and the task. `task` is a
    `recipes.Task` (the data layer cannot import this one)."""
    if not task.constrain or task.pattern is None:
        return None
    try:
        pattern = regex(task.pattern.pattern)
        if tokenizer is not None:
            check(pattern, tokenizer)
    except Invalid as e:
        raise UserError(
            f"{recipe_path}: task {task.name!r}: {e} (set `constrain: false` to parse answers with it without "
            "holding them to it)"
        ) from None
    return pattern


def _valid(kind: str, grammar: str) -> Constraint:
    """The grammar as a Constraint, refused here when it cannot compile (no tokenizer needed to know that)."""
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise Invalid(f"the {kind.replace('_', ' ')} cannot be used: {_one_line(error)}")
    return Constraint(kind, grammar)


def _one_line(error: str) -> str:
    """llguidance's message on one line: its first line and the line saying what is wrong, without the drawing of
    where (carets under the grammar's text)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    said = [line.removeprefix("error:").strip() for line in lines[1:] if line.startswith("error:")]
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0]) if lines else error
    return ": ".join([first.rstrip(":"), *said])


def _for(tokenizer: Any) -> _ForTokenizer:
    """llguidance's view of the model's tokenizer (its byte pieces and end-of-turn tokens), built once per tokenizer
    (0.3 s for a 49k vocabulary, 1.5 s for 151k)."""
    with _lock:
        found = _tokenizers.get(tokenizer)
        if found is None:
            eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [])
            try:
                ll = llguidance.hf.from_tokenizer(chat_template.hf_tokenizer(tokenizer), eos_token=eos or None)
            except ValueError as e:  # a slow (Python) tokenizer: llguidance reads only fast ones
                raise Invalid(f"this model's tokenizer cannot be constrained ({e})") from None
            found = _tokenizers[tokenizer] = _ForTokenizer(ll)
        return found


def _matcher(constraint: Constraint, tokenizer: Any) -> llguidance.LLMatcher:
    """A fresh matcher for `constraint`: a copy of one compiled earlier for this tokenizer when there is one, so a
    grammar checked in the request's thread is not compiled again in the generation thread, and a task's pattern is
    compiled once for all its requests."""
    side = _for(tokenizer)
    with _lock:
        compiled = side.compiled.get(constraint.grammar)
        if compiled is not None:
            side.compiled.move_to_end(constraint.grammar)
            return compiled.deep_copy()
    matcher = llguidance.LLMatcher(side.ll, constraint.grammar, log_level=0)
    if matcher.is_error():
        raise Invalid(f"the {constraint.kind.replace('_', ' ')} cannot be used: {_one_line(matcher.get_error())}")
    with _lock:
        side.compiled[constraint.grammar] = matcher.deep_copy()
        while len(side.compiled) > COMPILED_KEPT:
            side.compiled.popitem(last=False)
    return matcher


def check(constraint: Constraint, tokenizer: Any) -> None:
    """Compile `constraint` for `tokenizer` (in the request's thread: a bad one is refused before it is queued,
    and the scheduler's thread finds the tokenizer's side built)."""
    _matcher(constraint, tokenizer)


class _Guide:
    """One answer's logits processor: the tokens generated since its last call go into the matcher, then every token
    the grammar does not allow next gets -inf. Once the grammar is complete only the end-of-turn tokens remain."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher
        self._seen: int | None = None  # context tokens already given to the matcher (at first: the prompt)

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.shape[-1]
        if self._seen is not None and n > self._seen:
            self._matcher.consume_tokens(tokens[self._seen :].tolist())
        self._seen = n
        return _apply(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), logits)


# Each byte of a mask as the 8 values it adds to its 8 tokens' logits: 0 where allowed, -inf where not. A lookup
# and an add (xgrammar's way) beat unpacking bits and `mx.where` on this CPU: 474 against 743 us for a 151k
# vocabulary (`bench/grammar_cost.py`).
_BYTE_MASKS = np.array([[0.0 if (b >> k) & 1 else -np.inf for k in range(8)] for b in range(256)], dtype=np.float32)
_byte_masks: dict[Any, mx.array] = {}


def _apply(bitmask: np.ndarray, logits: mx.array) -> mx.array:
    """`logits` with -inf wherever `bitmask` (bytes of 32-bit little-endian words, bit i for token i) is 0; ids past
    the mask (a padded embedding) are never allowed."""
    vocab = logits.shape[-1]
    need = (vocab + 7) // 8
    if bitmask.size < need:
        bitmask = np.pad(bitmask, (0, need - bitmask.size))
    table = _byte_masks.get(logits.dtype)
    if table is None:  # a constant, evaluated here so any thread may use it
        table = mx.array(_BYTE_MASKS).astype(logits.dtype)
        mx.eval(table)
        _byte_masks[logits.dtype] = table
    return logits + table[mx.array(bitmask[:need])].reshape(1, -1)[:, :vocab]


def processor(constraint: Constraint, tokenizer: Any) -> _Guide:
    return _Guide(_matcher(constraint, tokenizer))


def allows(constraint: Constraint, tokenizer: Any, ids: Sequence[int], complete: bool = True) -> bool:
    """Whether `ids` (an answer's tokens, the end-of-turn one left out) is a match, or with `complete` false the
    start of one (an answer max_tokens cut short)."""
    matcher = _matcher(constraint, tokenizer)
    return matcher.consume_tokens(list(ids)) and (matcher.is_accepting() or not complete)
