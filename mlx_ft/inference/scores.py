"""Scores for `eval`: a fine-tuned model's generated answers against the expected ones. Exact match, BLEU-4 and ROUGE-L
for free text, and label accuracy with a confusion table when the expected answers look like class labels.

Pure standard library on purpose: scoring must not need MLX, a tokenizer download or sacrebleu, and a test can check
every number by hand. Corpus BLEU equals sacrebleu's `BLEU(tokenize="none", smooth_method="none")` run on our own
`tokens()` (sacrebleu's default "exp" smoothing differs only when some n-gram order has no match at all). `tokens()`
splits Chinese, Japanese and Korean into characters: sacrebleu's default 13a tokenizer would leave a whole Chinese
sentence as one "word", and the fish-care sample data is Chinese."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_ORDER = 4  # BLEU-4
OTHER = "(other)"  # confusion column (and row) for text that is none of the labels

# Scripts written without spaces between words: each character is one token, as sacrebleu's `zh` tokenizer and most
# Chinese BLEU/ROUGE reports do. Full-width forms and CJK punctuation go with them so that "，" or "２" never glue to
# a neighbour.
_CHAR_TOKEN_RANGES = (
    (0x3000, 0x303F),  # CJK symbols and punctuation (U+3000 itself is whitespace and is dropped first)
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF00, 0xFFEF),  # half-width and full-width forms
    (0x20000, 0x2FA1F),  # CJK Extensions B-F, Compatibility Supplement
)


def _is_char_token(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CHAR_TOKEN_RANGES)


def _is_word_char(ch: str) -> bool:
    # Letters, digits and combining marks (so Hindi or accented text in NFD stays one word), plus "_" so that code
    # identifiers such as max_seq_length count as one word.
    return ch == "_" or unicodedata.category(ch)[0] in "LNM"


def normalize(text: str) -> str:
    """Strip and collapse every run of (Unicode) whitespace into one space; exact match compares these."""
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """Split text into the units that BLEU and ROUGE-L count, case-sensitively, in one left-to-right pass:

    - whitespace separates and is dropped;
    - every CJK ideograph, kana, Hangul syllable, CJK punctuation mark and full-width form is one token;
    - a run of letters, digits, combining marks and "_" is one word, and a "." or "," with a digit on both sides stays
      inside it, so "124.0", "1,020" and "v1.2" are single tokens (as in sacrebleu's 13a tokenizer);
    - any other character (punctuation, symbols, emoji) is a token of its own.
    """
    out: list[str] = []
    word: list[str] = []
    n = len(text)
    for i, ch in enumerate(text):
        if _is_char_token(ch) and not ch.isspace():
            if word:
                out.append("".join(word))
                word = []
            out.append(ch)
        elif _is_word_char(ch) or (ch in ".," and word and word[-1].isdigit() and i + 1 < n and text[i + 1].isdigit()):
            word.append(ch)
        else:
            if word:
                out.append("".join(word))
                word = []
            if not ch.isspace():
                out.append(ch)
    if word:
        out.append("".join(word))
    return out


def exact_match(pred: str, ref: str) -> float:
    return 1.0 if normalize(pred) == normalize(ref) else 0.0


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): one big-int update per token of `b`
    instead of a len(a) x len(b) table in Python, so that long generated answers score in milliseconds."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # a 0 bit marks a position of `a` that the LCS so far uses
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (beta = 1) over `tokens()`. Two empty texts agree (1.0); one empty text shares nothing (0.0)."""
    p, r = tokens(pred), tokens(ref)
    if not p and not r:
        return 1.0
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Bleu:
    score: float  # in [0, 1], not sacrebleu's x100
    precisions: tuple[float, float, float, float]  # clipped n-gram precision for n = 1..4, in [0, 1]
    brevity_penalty: float
    hyp_len: int  # tokens in all predictions
    ref_len: int  # tokens in all references

    @property
    def length_ratio(self) -> float:
        # Undefined without reference tokens; 0.0 then, as sacrebleu reports it, and JSON-safe unlike inf.
        return self.hyp_len / self.ref_len if self.ref_len else 0.0


def _ngram_stats(hyp: Sequence[str], ref: Sequence[str]) -> tuple[list[int], list[int]]:
    """Clipped n-gram matches and hypothesis n-gram totals for n = 1..4: each hypothesis n-gram counts at most as
    often as it occurs in the reference (so "the the the" earns one "the" against "the cat")."""
    matches, totals = [0] * MAX_ORDER, [0] * MAX_ORDER
    for n in range(1, MAX_ORDER + 1):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        matches[n - 1] = sum(min(c, r[g]) for g, c in h.items())
        totals[n - 1] = max(len(hyp) - n + 1, 0)
    return matches, totals


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0


def _bleu(matches: Sequence[float], totals: Sequence[float], hyp_len: int, ref_len: int) -> Bleu:
    p = tuple(m / t if t > 0 else 0.0 for m, t in zip(matches, totals))
    bp = _brevity_penalty(hyp_len, ref_len)
    # No smoothing here: one order without a match makes the geometric mean, and so BLEU, zero.
    score = 0.0 if min(p) == 0 else bp * math.exp(sum(math.log(x) for x in p) / MAX_ORDER)
    return Bleu(score, (p[0], p[1], p[2], p[3]), bp, hyp_len, ref_len)


def _check_lengths(preds: Sequence[Any], refs: Sequence[Any], what: str = "references") -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} {what}")


def corpus_bleu(preds: Sequence[str], refs: Sequence[str]) -> Bleu:
    """Corpus BLEU-4 with one reference per example (Papineni et al. 2002, unsmoothed): clipped n-gram counts and
    lengths summed over the corpus first, then uniform geometric mean times the brevity penalty."""
    _check_lengths(preds, refs)
    matches, totals = [0] * MAX_ORDER, [0] * MAX_ORDER
    hyp_len = ref_len = 0
    for pred, ref in zip(preds, refs):
        h, r = tokens(pred), tokens(ref)
        m, t = _ngram_stats(h, r)
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
        hyp_len += len(h)
        ref_len += len(r)
    return _bleu(matches, totals, hyp_len, ref_len)


def sentence_bleu(pred: str, ref: str) -> float:
    """BLEU-4 of one example with add-one smoothing for n = 2..4 (Lin & Och 2004, sacrebleu's "add-k" with k = 1):
    without it nearly every short answer would score 0 for lack of a matching 4-gram."""
    h, r = tokens(pred), tokens(ref)
    if not h:
        return 0.0
    matches, totals = _ngram_stats(h, r)
    smoothed_m = [matches[0]] + [m + 1 for m in matches[1:]]
    smoothed_t = [totals[0]] + [t + 1 for t in totals[1:]]
    return _bleu(smoothed_m, smoothed_t, len(h), len(r)).score


def label_set(refs: Sequence[str], max_labels: int = 20, max_label_chars: int = 40) -> list[str] | None:
    """The sorted class labels when the expected answers look like classification (few short values, each repeated),
    else None. Needs 2..max_labels distinct normalised values, each at most max_label_chars long, and fewer distinct
    values than half the number of references."""
    distinct = {normalize(r) for r in refs}
    if not 2 <= len(distinct) <= max_labels:
        return None
    if any(len(label) > max_label_chars for label in distinct):
        return None
    if len(distinct) >= len(refs) / 2:
        return None
    return sorted(distinct)


def confusion(preds: Sequence[str], refs: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts by expected label (rows) and predicted label (columns), both normalised. A prediction that is none of
    the labels counts under the column "(other)" (a reference outside `labels` likewise under the row "(other)").
    Every label has a row; only non-zero cells are present."""
    _check_lengths(preds, refs)
    known = set(labels)
    table: dict[str, dict[str, int]] = {label: {} for label in labels}
    for pred, ref in zip(preds, refs):
        p, r = normalize(pred), normalize(ref)
        row = table.setdefault(r if r in known else OTHER, {})
        col = p if p in known else OTHER
        row[col] = row.get(col, 0) + 1
    return table


def score(preds: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """All corpus-level scores: means of the per-example exact match and ROUGE-L, corpus BLEU-4 (None where no
    reference is 4 tokens long) and length ratio, and label accuracy with a confusion table when `label_set(refs)`
    finds labels."""
    _check_lengths(preds, refs)
    n = len(refs)
    if n == 0:
        return {"n": 0}
    bleu = corpus_bleu(preds, refs)
    result: dict[str, Any] = {
        "n": n,
        "exact_match": sum(exact_match(p, r) for p, r in zip(preds, refs)) / n,
        # None (not applicable) when no expected answer has MAX_ORDER tokens: with no reference 4-gram to match,
        # unsmoothed BLEU-4 is 0 even beside 100% exact match, which would contradict the rest of the table.
        "bleu4": bleu.score if any(len(tokens(r)) >= MAX_ORDER for r in refs) else None,
        "rouge_l": sum(rouge_l(p, r) for p, r in zip(preds, refs)) / n,
        "length_ratio": bleu.length_ratio,
    }
    labels = label_set(refs)
    if labels is not None:
        result["labels"] = labels
        result["label_accuracy"] = sum(normalize(p) == normalize(r) for p, r in zip(preds, refs)) / n
        result["confusion"] = confusion(preds, refs, labels)
    return result


def example_scores(pred: str, ref: str) -> dict[str, float]:
    """Per-example scores, for the eval report's rows (sentence BLEU, since corpus BLEU of one example is mostly 0)."""
    return {"exact_match": exact_match(pred, ref), "bleu4": sentence_bleu(pred, ref), "rouge_l": rouge_l(pred, ref)}


def by_group(preds: Sequence[str], refs: Sequence[str], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`score()` for each group value (e.g. a source file or category), keys sorted."""
    _check_lengths(preds, refs)
    _check_lengths(preds, groups, "group values")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return {g: score([preds[i] for i in idx], [refs[i] for i in idx]) for g, idx in sorted(members.items())}
