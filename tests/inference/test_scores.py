"""Every eval metric against numbers worked out by hand (the arithmetic sits next to each expected value)."""

from __future__ import annotations

import math
import random

import pytest

from mlx_ft.inference import scores
from mlx_ft.inference.scores import (
    by_group,
    confusion,
    corpus_bleu,
    exact_match,
    example_scores,
    label_set,
    normalize,
    rouge_l,
    score,
    sentence_bleu,
    tokens,
)

FISH_PRED = "水温保持在24到28度"
FISH_REF = "水温应保持在26度"


# --- normalisation and exact match ---


def test_normalize_collapses_any_whitespace() -> None:
    assert normalize("  The\tanswer \n\n is\u00a042 ") == "The answer is 42"
    assert normalize("水温\u3000保持") == "水温 保持"  # ideographic space is whitespace too
    assert normalize(" \n ") == ""


def test_exact_match_ignores_whitespace_only() -> None:
    assert exact_match(" The  answer\tis\n42 ", "The answer is 42") == 1.0
    assert exact_match("the answer is 42", "The answer is 42") == 0.0  # case counts
    assert exact_match("The answer is 42.", "The answer is 42") == 0.0  # punctuation counts
    assert exact_match("", "  ") == 1.0


# --- tokens ---


def test_tokens_chinese_character_level() -> None:
    # One token per ideograph; the ASCII digit runs between them stay whole numbers.
    assert tokens(FISH_PRED) == ["水", "温", "保", "持", "在", "24", "到", "28", "度"]
    assert tokens(FISH_REF) == ["水", "温", "应", "保", "持", "在", "26", "度"]
    # Full-width punctuation and digits are one token each, and never glue to a neighbour.
    assert tokens("水温，保持２６度。") == ["水", "温", "，", "保", "持", "２", "６", "度", "。"]


def test_tokens_japanese_and_korean_character_level() -> None:
    assert tokens("カメは水") == ["カ", "メ", "は", "水"]
    assert tokens("물고기 먹이") == ["물", "고", "기", "먹", "이"]


def test_tokens_english_word_level() -> None:
    assert tokens("Hello, world! It's 3.5 kg.") == ["Hello", ",", "world", "!", "It", "'", "s", "3.5", "kg", "."]
    assert tokens("set max_seq_length to 1,024") == ["set", "max_seq_length", "to", "1,024"]
    assert tokens("Café naïve") == ["Café", "naïve"]
    assert tokens("Cat cat") == ["Cat", "cat"]  # case-sensitive


def test_tokens_mixed_product_line() -> None:
    # Decimal points between digits stay in the word; "-", "/" and "$" are tokens of their own.
    assert tokens("MicroBT Whatsminer M50S - 124.0th/t $1020.0") == [
        "MicroBT",
        "Whatsminer",
        "M50S",
        "-",
        "124.0th",
        "/",
        "t",
        "$",
        "1020.0",
    ]
    assert tokens("矿机M50S算力124.0TH/s") == ["矿", "机", "M50S", "算", "力", "124.0TH", "/", "s"]
    assert tokens("costs 5. Done") == ["costs", "5", ".", "Done"]  # a sentence-final point is punctuation


def test_tokens_drop_all_whitespace() -> None:
    assert tokens("") == []
    assert tokens(" \t\u3000\n") == []


# --- ROUGE-L ---


def test_rouge_l_chinese_pair() -> None:
    # LCS = 水 温 保 持 在 度 = 6 of 9 pred and 8 ref tokens: P = 6/9, R = 6/8, F1 = 2*6/(9+8) = 12/17.
    assert rouge_l(FISH_PRED, FISH_REF) == pytest.approx(12 / 17)
    assert rouge_l(FISH_REF, FISH_PRED) == pytest.approx(12 / 17)  # F1 is symmetric


def test_rouge_l_english() -> None:
    # LCS = "the cat on the mat" = 5 of 6 and 6 tokens: F1 = 2*5/(6+6) = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("same words", "same  words") == 1.0
    assert rouge_l("abc", "xyz") == 0.0


def test_rouge_l_empty_texts() -> None:
    assert rouge_l("", "  ") == 1.0
    assert rouge_l("", "a") == 0.0
    assert rouge_l("a", "") == 0.0


def test_lcs_bit_parallel_matches_table() -> None:
    def table_lcs(a: list[str], b: list[str]) -> int:
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(300):
        a = rng.choices("abcd", k=rng.randint(0, 30))
        b = rng.choices("abcde", k=rng.randint(0, 30))
        assert scores._lcs_length(a, b) == table_lcs(a, b)


# --- BLEU ---


def test_corpus_bleu_with_brevity_penalty() -> None:
    preds = ["the cat sat on the mat", "a b c d"]
    refs = ["the cat sat on a mat here", "a b c d e"]
    # Example 1 (6 vs 7 tokens), clipped matches / hypothesis n-grams:
    #   1-grams: the(clipped to 1) cat sat on mat = 5/6; 2-grams: the-cat cat-sat sat-on = 3/5;
    #   3-grams: the-cat-sat cat-sat-on = 2/4; 4-grams: the-cat-sat-on = 1/3.
    # Example 2 (4 vs 5 tokens): 4/4, 3/3, 2/2, 1/1.
    # Corpus: p1 = 9/10, p2 = 6/8, p3 = 4/6, p4 = 2/4; c = 10 < r = 12, BP = exp(1 - 12/10) = exp(-0.2).
    b = corpus_bleu(preds, refs)
    assert b.precisions == pytest.approx((0.9, 0.75, 2 / 3, 0.5))
    assert (b.hyp_len, b.ref_len) == (10, 12)
    assert b.brevity_penalty == pytest.approx(math.exp(-0.2))
    assert b.length_ratio == pytest.approx(10 / 12)
    # 0.9 * 0.75 * 2/3 * 0.5 = 0.225
    assert b.score == pytest.approx(math.exp(-0.2) * 0.225**0.25)


def test_corpus_bleu_no_brevity_penalty_when_longer() -> None:
    # 5 hypothesis vs 4 reference tokens: BP = 1; p = 4/5, 3/4, 2/3, 1/2, product = 1/5.
    b = corpus_bleu(["a b c d x"], ["a b c d"])
    assert b.brevity_penalty == 1.0
    assert b.score == pytest.approx(0.2**0.25)


def test_corpus_bleu_zero_without_4gram_match() -> None:
    # "a b c x d e f" vs "a b c y d e f": 1-grams 6/7, 2-grams 4/6, 3-grams 2/5, 4-grams 0/4 -> BLEU 0 (no smoothing).
    b = corpus_bleu(["a b c x d e f"], ["a b c y d e f"])
    assert b.precisions == pytest.approx((6 / 7, 4 / 6, 2 / 5, 0.0))
    assert b.score == 0.0


def test_corpus_bleu_clipping() -> None:
    # Papineni et al.'s example: "the" occurs at most twice in the reference, so 7 "the"s earn 2/7.
    b = corpus_bleu(["the the the the the the the"], ["the cat is on the mat"])
    assert b.precisions[0] == pytest.approx(2 / 7)
    assert b.precisions[1] == 0.0  # "the the" is not in the reference
    assert b.score == 0.0


def test_corpus_bleu_chinese_is_character_level() -> None:
    # Identical Chinese texts score 1 (a whitespace tokenizer would see one "word" each and 0 higher-order n-grams).
    assert corpus_bleu([FISH_REF], [FISH_REF]).score == pytest.approx(1.0)


def test_corpus_bleu_edge_cases() -> None:
    empty = corpus_bleu([""], ["a b"])
    assert (empty.score, empty.brevity_penalty, empty.hyp_len) == (0.0, 0.0, 0)
    assert corpus_bleu(["a"], [""]).length_ratio == 0.0  # undefined without reference tokens: 0.0, as sacrebleu
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a", "b"])


def test_sentence_bleu_add_one_smoothing() -> None:
    # Raw counts as in the corpus test's example 1: matches 5, 3, 2, 1 of 6, 5, 4, 3.
    # Smoothed: p1 = 5/6 (unsmoothed), p2 = 4/6, p3 = 3/5, p4 = 2/4; product = 1/6; BP = exp(1 - 7/6) = exp(-1/6).
    got = sentence_bleu("the cat sat on the mat", "the cat sat on a mat here")
    assert got == pytest.approx(math.exp(-1 / 6) * (1 / 6) ** 0.25)
    # No matching 4-gram (raw 6/7, 4/6, 2/5, 0/4) still scores: 6/7 * 5/7 * 3/6 * 1/5 = 3/49, BP = 1.
    assert sentence_bleu("a b c x d e f", "a b c y d e f") == pytest.approx((3 / 49) ** 0.25)


def test_sentence_bleu_edge_cases() -> None:
    assert sentence_bleu(FISH_PRED, FISH_PRED) == pytest.approx(1.0)
    assert sentence_bleu("a", "a") == pytest.approx(1.0)
    assert sentence_bleu("", "a b") == 0.0
    assert sentence_bleu("  ", "") == 0.0
    assert sentence_bleu("x y", "a b") == 0.0  # no unigram match
    # One token: p1 = 1/1, p2..4 = (0+1)/(0+1) = 1, BP = exp(1 - 2/1) = exp(-1).
    assert sentence_bleu("a", "a b") == pytest.approx(math.exp(-1))


# --- labels and confusion ---


def test_label_set_detects_classification() -> None:
    refs = ["positive", "negative", " positive", "positive\n", "negative"]
    assert label_set(refs) == ["negative", "positive"]  # 2 distinct values < 5 / 2


def test_label_set_rejects_non_classification() -> None:
    free_text = ["水温应保持在26度", "每天喂一次", "换水三分之一", "水温应保持在26度"]
    assert label_set(free_text) is None  # 3 distinct values, not fewer than 4 / 2
    assert label_set(["yes"] * 6) is None  # a single value is no classification
    assert label_set(["a", "b", "a", "b"]) is None  # 2 distinct is not fewer than 4 / 2
    assert label_set(["x" * 41, "y"] * 3) is None  # too long for a label
    assert label_set(["x" * 40, "y"] * 3) == ["x" * 40, "y"]
    many = [f"class{i}" for i in range(21)] * 3
    assert label_set(many) is None  # 21 > max_labels
    assert label_set(many, max_labels=21) == sorted(set(many))
    assert label_set([]) is None


def test_confusion_counts_other_predictions() -> None:
    preds = ["cat", "cat", "dog", " dog ", "bird"]
    refs = ["cat", "dog", "cat", "dog", "cat"]
    assert confusion(preds, refs, ["cat", "dog", "fish"]) == {
        "cat": {"cat": 1, "dog": 1, scores.OTHER: 1},
        "dog": {"cat": 1, "dog": 1},
        "fish": {},  # every label has a row
    }


def test_score_classification() -> None:
    preds = ["positive", " negative", "positive.", "negative", "negative"]
    refs = ["positive", "negative", "positive", "positive", "negative"]
    got = score(preds, refs)
    assert got["n"] == 5
    assert got["exact_match"] == pytest.approx(3 / 5)  # 1st, 2nd (after normalising), 5th
    assert got["labels"] == ["negative", "positive"]
    assert got["label_accuracy"] == pytest.approx(3 / 5)
    assert got["confusion"] == {
        "negative": {"negative": 2},
        "positive": {"positive": 1, scores.OTHER: 1, "negative": 1},
    }
    # ROUGE-L: 1, 1, "positive ." vs "positive" = 2*1/(2+1) = 2/3, 0, 1 -> mean (3 + 2/3) / 5 = 11/15.
    assert got["rouge_l"] == pytest.approx(11 / 15)
    # Tokens 1+1+2+1+1 = 6 vs 5; no reference has 4 tokens, so BLEU-4 is not applicable (not a contradicting 0).
    assert got["length_ratio"] == pytest.approx(6 / 5)
    assert got["bleu4"] is None


def test_bleu4_is_not_applicable_to_short_answers_not_zero_beside_exact_match() -> None:
    codes = ["ZX-42", "label", "a b c"]
    got = score(codes, codes)
    assert got["exact_match"] == 1.0 and got["bleu4"] is None and got["rouge_l"] == 1.0
    assert corpus_bleu(codes, codes).score == 0.0  # what the unsmoothed formula gives: no 4-grams at all
    # One reference long enough is enough for the corpus score to be defined (and 1 for a perfect match).
    assert score([*codes, "one two three four"], [*codes, "one two three four"])["bleu4"] == 1.0


def test_score_free_text() -> None:
    preds = ["the cat sat on the mat", "a b c d"]
    refs = ["the cat sat on a mat here", "a b c d e"]
    got = score(preds, refs)
    assert set(got) == {"n", "exact_match", "bleu4", "rouge_l", "length_ratio"}
    assert got["exact_match"] == 0.0
    assert got["bleu4"] == pytest.approx(corpus_bleu(preds, refs).score)
    # ROUGE-L: LCS "the cat sat on mat" = 5 -> 2*5/(6+7) = 10/13; LCS 4 -> 2*4/(4+5) = 8/9.
    assert got["rouge_l"] == pytest.approx((10 / 13 + 8 / 9) / 2)
    assert got["length_ratio"] == pytest.approx(10 / 12)


def test_score_empty_and_mismatch() -> None:
    assert score([], []) == {"n": 0}
    with pytest.raises(ValueError):
        score(["a"], [])


def test_example_scores() -> None:
    got = example_scores(FISH_PRED, FISH_REF)
    assert got["exact_match"] == 0.0
    assert got["rouge_l"] == pytest.approx(12 / 17)
    # Matches 6/9 (水温保持在度), 3/8 (水温 保持 持在), 1/7 (保持在), 0/6; smoothed p = 6/9, 4/9, 2/8, 1/7
    # -> product 2/189; BP = 1 (9 >= 8 tokens).
    assert got["bleu4"] == pytest.approx((2 / 189) ** 0.25)
    assert example_scores("same", " same ") == {"exact_match": 1.0, "bleu4": 1.0, "rouge_l": 1.0}


def test_by_group() -> None:
    preds = ["a b", "x", "c d"]
    refs = ["a b", "y", "c e"]
    got = by_group(preds, refs, ["g2", "g1", "g2"])
    assert list(got) == ["g1", "g2"]  # sorted
    assert got["g1"]["n"] == 1 and got["g1"]["exact_match"] == 0.0
    assert got["g2"]["n"] == 2 and got["g2"]["exact_match"] == 0.5
    # "a b" = 1; "c d" vs "c e": LCS 1 -> 2*1/(2+2) = 0.5; mean 0.75.
    assert got["g2"]["rouge_l"] == pytest.approx(0.75)
    assert got["g2"] == score(["a b", "c d"], ["a b", "c e"])
    with pytest.raises(ValueError):
        by_group(preds, refs, ["g1"])


def test_eval_table_says_why_bleu4_is_not_applicable(tmp_path) -> None:
    """The eval table shows n/a with the reason where BLEU-4 is undefined, never a 0.000 beside 100% exact match."""
    from mlx_ft.inference import evaluate

    codes = ["ZX-42", "Y-7", "ZX-42"]
    columns = {"base": score(["no", "no", "no"], codes), "tuned": score(codes, codes)}
    report = evaluate.EvalReport(
        "run",
        tmp_path,
        "test",
        tmp_path / "eval",
        columns,
        "task",
        {"base": {"code": columns["base"]}, "tuned": {"code": columns["tuned"]}},
    )
    text = evaluate.format_report(report)
    bleu_rows = [line.split() for line in text.splitlines() if line.startswith("BLEU-4 ") and ":" not in line]
    assert bleu_rows == [["BLEU-4", "n/a", "n/a"]] * 2  # the overall table and the task's
    assert "BLEU-4 n/a: no expected answer is 4 tokens long" in text
    assert [r for r in text.splitlines() if r.startswith("exact match")][0].split()[-2:] == ["100.0%", "+100.0%"]
