"""The rebuilt Qwen tokenizer must be byte-for-byte the real one, and the tiny
random Qwen2/Qwen3 fixtures must load in mlx-lm and transformers offline.

Fixtures live in ``$MLX_FT_HOME/fixtures`` (default ``~/.cache/mlx_ft``) so
the download + BPE derivation + weight generation happen once per machine.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import fixture_models as fm

FLAVORS = ("qwen2", "qwen3")

SAMPLES: dict[str, str] = {
    "chinese": "我的金鱼尾巴烂了，怎么办？水温应该保持在多少度？换水的时候要注意什么。",
    "english": (
        "The quick brown fox doesn't jump; it's resting. We'll see what they've "
        "decided—I'm sure you'd agree it's FINE. Isn't it?"
    ),
    "digits": "1234567 3.14159 2026-11-23 +86 138-0013-8000 ¥1,299.00 0x1F",
    "code": (
        "def feed_fish(tank: dict[str, int], grams: float = 0.5) -> None:\n"
        '    """Feed every fish."""\n'
        "    for name, count in tank.items():\n"
        "        if count <= 0:\n"
        "            continue\n"
        '        print(f"{name}: {grams * count:.2f}g")  # per tank\n'
        "\treturn None\n"
    ),
    "emoji": "🐟🐠 ok 👍🏽 👨‍👩‍👧 🇨🇳🇺🇸 ❤️",
    "whitespace": "  leading\ttabs\t\tand   spaces  \n\n\n  \r\nwindows\r\n\r\n trailing   \n \t ",
    "mixed_paragraph": (
        "金鱼（Carassius auratus）是一种常见的观赏鱼。If the tail fin looks ragged, "
        "check the water: ammonia should be 0 ppm, nitrite < 0.5 ppm, pH 7.0–8.0.\n"
        "建议每周换水 20%~30%，并使用除氯剂。\n\n"
        "```python\nppm = 0.25  # 氨含量\nassert ppm < 0.5, '水质不合格'\n```\n"
        "Don't overfeed!! 🐟 —— 祝你的鱼早日康复 😊\n"
        "Ünïcödé, naïve café, Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト, 한국어.\n"
    ),
    "chatml_literal": "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\nhm\n</think>\n\nhi<|im_end|>",
}


# ---------------------------------------------------------------- fixtures --


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return fm.fixture_home()


@pytest.fixture(scope="session")
def tok_cache(fixture_dir: Path) -> Path:
    # Same cache and folder names as conftest's qwen2_dir/qwen3_dir, so the
    # whole suite shares one copy of each model.
    return fixture_dir


@pytest.fixture(scope="session")
def qwen_ranks(tok_cache: Path) -> dict[bytes, int]:
    return fm.load_qwen_ranks(tok_cache)


class _PerFlavor(dict):
    """Session cache that builds a flavor's object on first access, so running
    only qwen3 tests never loads (or builds) the qwen2 fixture."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        super().__init__()
        self._factory = factory

    def __missing__(self, flavor: str) -> Any:
        value = self[flavor] = self._factory(flavor)
        return value


@pytest.fixture(scope="session")
def model_dirs(fixture_dir: Path, tok_cache: Path) -> _PerFlavor:
    # The model folders also hold build_qwen_tokenizer's output, so the
    # tokenizer tests reuse them instead of paying for a second build.
    return _PerFlavor(lambda flavor: fm.build_random_qwen(fixture_dir / f"{flavor}-tiny", flavor, tok_cache, seed=0))


@pytest.fixture(scope="session")
def hf_tokenizers(model_dirs: _PerFlavor) -> _PerFlavor:
    from transformers import AutoTokenizer

    return _PerFlavor(lambda flavor: AutoTokenizer.from_pretrained(model_dirs[flavor]))


@pytest.fixture(scope="session")
def raw_tokenizers(model_dirs: _PerFlavor) -> _PerFlavor:
    # transformers 5's Qwen2Tokenizer rebuilds its pipeline from vocab+merges,
    # so tokenizer.json's own normalizer/pre-tokenizer are only exercised by
    # consumers that read the file directly (tokenizers, Rust/Swift ports).
    from tokenizers import Tokenizer

    return _PerFlavor(lambda flavor: Tokenizer.from_file(str(model_dirs[flavor] / "tokenizer.json")))


@pytest.fixture(scope="session")
def tiktoken_encodings(qwen_ranks: dict[bytes, int]) -> _PerFlavor:
    import tiktoken

    return _PerFlavor(
        lambda flavor: tiktoken.Encoding(
            name=f"qwen-{flavor}",
            pat_str=fm.QWEN_PAT_STR,
            mergeable_ranks=qwen_ranks,
            special_tokens={content: tid for content, tid, _ in fm.qwen_added_tokens(flavor)},
        )
    )


@pytest.fixture(scope="session")
def mlx_models(model_dirs: _PerFlavor) -> _PerFlavor:
    import mlx_lm

    return _PerFlavor(lambda flavor: mlx_lm.load(str(model_dirs[flavor])))


# ------------------------------------------------------------- tokenizer ----


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_ids_match_tiktoken(
    name: str, flavor: str, hf_tokenizers: dict, raw_tokenizers: dict, tiktoken_encodings: dict
) -> None:
    text = SAMPLES[name]
    # Every added token (special or not) is matched atomically by HF, so the
    # reference must allow all of them too.
    expected = tiktoken_encodings[flavor].encode(text, allowed_special="all")
    tok = hf_tokenizers[flavor]
    assert tok.encode(text, add_special_tokens=False) == expected
    # No BOS/EOS is ever inserted: Qwen has no BOS and SFT masking relies on it.
    assert tok.encode(text, add_special_tokens=True) == expected
    assert raw_tokenizers[flavor].encode(text, add_special_tokens=False).ids == expected


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_decode_roundtrip(name: str, flavor: str, hf_tokenizers: dict) -> None:
    tok = hf_tokenizers[flavor]
    text = SAMPLES[name]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_random_text_matches_tiktoken(raw_tokenizers: dict, tiktoken_encodings: dict) -> None:
    # Fuzz the regex + merges with a mix of scripts, emoji, digits, quotes
    # (the case-insensitive contraction branch) and odd whitespace.
    import unicodedata

    rng = random.Random(1234)
    pools = [
        lambda: chr(rng.randrange(32, 127)),
        lambda: chr(rng.randrange(0x4E00, 0x9FFF)),
        lambda: chr(rng.randrange(0xA0, 0x3000)),
        lambda: chr(rng.randrange(0x1F300, 0x1FAFF)),
        lambda: rng.choice(["\n", "\r\n", "\t", " ", "  ", "'s", "'LL", "’", "\u3000", "\xa0"]),
        lambda: str(rng.randrange(10**6)),
    ]
    texts = [
        unicodedata.normalize("NFC", "".join(rng.choice(pools)() for _ in range(rng.randrange(1, 200))))
        for _ in range(400)
    ]
    expected = tiktoken_encodings["qwen3"].encode_batch(texts, allowed_special="all")
    got = [e.ids for e in raw_tokenizers["qwen3"].encode_batch(texts, add_special_tokens=False)]
    bad = [t for t, g, e in zip(texts, got, expected) if g != e]
    assert not bad, f"{len(bad)} mismatches, first: {bad[0]!r}"


def test_every_rank_is_a_single_token(raw_tokenizers: dict, qwen_ranks: dict[bytes, int]) -> None:
    # Guards the merge derivation: each vocab entry must be rebuilt by the
    # merges alone (ignore_merges is False, like the official files).
    model = raw_tokenizers["qwen2"].model
    wrong = [
        (tok, rank) for tok, rank in qwen_ranks.items() if [t.id for t in model.tokenize(fm._to_unicode(tok))] != [rank]
    ]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_special_tokens(flavor: str, hf_tokenizers: dict, raw_tokenizers: dict) -> None:
    tok = hf_tokenizers[flavor]
    for text, tid in (("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645)):
        assert tok.encode(text, add_special_tokens=False) == [tid]
        assert raw_tokenizers[flavor].encode(text).ids == [tid]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == fm.IM_END_ID
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == fm.ENDOFTEXT_ID
    assert tok.bos_token is None
    expected_len = 151_665 if flavor == "qwen2" else 151_669
    assert len(tok) == expected_len
    for content, tid, _special in fm.qwen_added_tokens(flavor):
        assert tok.convert_tokens_to_ids(content) == tid
    if flavor == "qwen3":
        ids = tok.encode("<think>\nx\n</think>", add_special_tokens=False)
        assert ids[0] == 151667 and ids[-1] == 151668
        # Non-special, as upstream: reasoning markers survive skip_special_tokens.
        assert tok.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>"


def test_tiktoken_file_cached(tok_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fm.qwen_tiktoken_path(tok_cache)  # fetches on a fresh cache
    assert path == tok_cache / "qwen.tiktoken"
    before = path.stat().st_mtime_ns

    def no_pip(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"pip called although qwen.tiktoken is cached: {args}")

    from mlx_ft.models import sources

    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    assert fm.qwen_tiktoken_path(tok_cache) == path
    assert path.stat().st_mtime_ns == before
    assert hashlib.sha256(path.read_bytes()).hexdigest() == fm.QWEN_TIKTOKEN_SHA256


# --------------------------------------------------------- chat template ----


USER_HELLO = [{"role": "user", "content": "你好"}]


def test_qwen2_chat_template(hf_tokenizers: dict) -> None:
    tok = hf_tokenizers["qwen2"]
    text = tok.apply_chat_template(USER_HELLO, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    custom = [{"role": "system", "content": "你是养鱼专家。"}, *USER_HELLO, {"role": "assistant", "content": "你好！"}]
    assert tok.apply_chat_template(custom, tokenize=False) == (
        "<|im_start|>system\n你是养鱼专家。<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n你好！<|im_end|>\n"
    )


def test_qwen3_chat_template(hf_tokenizers: dict) -> None:
    tok = hf_tokenizers["qwen3"]
    render = lambda msgs, **kw: tok.apply_chat_template(msgs, tokenize=False, **kw)  # noqa: E731
    assert render(USER_HELLO, add_generation_prompt=True) == (
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(USER_HELLO, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    # Reasoning of turns before the last user query is dropped...
    history = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"},
        {"role": "user", "content": "q2"},
    ]
    assert render(history, add_generation_prompt=True) == (
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
    )
    # ...while the final assistant turn always gets a (possibly empty) think block.
    assert render([*USER_HELLO, {"role": "assistant", "content": "你好！"}]) == (
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n你好！<|im_end|>\n"
    )


# ---------------------------------------------------------------- models ----


@pytest.mark.parametrize("flavor", FLAVORS)
def test_model_loads_in_mlx_lm(flavor: str, mlx_models: dict, tiktoken_encodings: dict) -> None:
    import mlx.core as mx
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    model, tokenizer = mlx_models[flavor]
    ids = tokenizer.encode(SAMPLES["chinese"])
    assert ids == tiktoken_encodings[flavor].encode(SAMPLES["chinese"])
    logits = model(mx.array([ids]))
    mx.eval(logits)
    assert tuple(logits.shape) == (1, len(ids), fm.QWEN_VOCAB_SIZE)
    assert bool(mx.all(mx.isfinite(logits)).item())
    assert isinstance(tokenizer._detokenizer, BPEStreamingDetokenizer)
    assert {fm.IM_END_ID, fm.ENDOFTEXT_ID} <= set(tokenizer.eos_token_ids)
    assert tokenizer.has_thinking == (flavor == "qwen3")
    args = model.args
    assert (args.num_hidden_layers, args.hidden_size, args.intermediate_size) == (2, 256, 512)
    assert args.rope_theta == fm.ROPE_THETA and args.tie_word_embeddings
    if flavor == "qwen2":
        assert "bias" in model.model.layers[0].self_attn.q_proj
    else:
        assert "bias" not in model.model.layers[0].self_attn.q_proj
        assert model.model.layers[0].self_attn.q_norm.weight.shape == (64,)
    # mlx-lm renders through the same template (thinking on by default).
    text = tokenizer.apply_chat_template(USER_HELLO, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_model_config_in_transformers(flavor: str, model_dirs: dict) -> None:
    # AutoModelForCausalLM needs torch, which the venv lacks; the config and
    # tokenizer are what transformers-side tooling (chat, GGUF export) reads.
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dirs[flavor])
    assert cfg.model_type == flavor
    assert cfg.vocab_size == fm.QWEN_VOCAB_SIZE and cfg.tie_word_embeddings
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 256, 512)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 64)
    assert cfg.rope_parameters["rope_theta"] == fm.ROPE_THETA
    if flavor == "qwen3":
        assert cfg.attention_bias is False


@pytest.mark.parametrize("flavor", FLAVORS)
def test_weights_layout(flavor: str, model_dirs: dict) -> None:
    from safetensors.numpy import load_file

    w = load_file(str(model_dirs[flavor] / "model.safetensors"))
    assert w["model.embed_tokens.weight"].shape == (fm.QWEN_VOCAB_SIZE, 256)
    assert all(v.dtype.name == "float32" for v in w.values())
    assert "lm_head.weight" not in w  # tied
    assert ("model.layers.1.self_attn.k_proj.bias" in w) == (flavor == "qwen2")
    assert ("model.layers.1.self_attn.k_norm.weight" in w) == (flavor == "qwen3")
    assert 0.015 < float(w["model.layers.0.mlp.up_proj.weight"].std()) < 0.025


def test_build_is_cached_and_deterministic(fixture_dir: Path, tok_cache: Path, model_dirs: dict) -> None:
    path = model_dirs["qwen3"]
    files = ("model.safetensors", "tokenizer.json", fm._MARKER)
    before = {f: (path / f).stat().st_mtime_ns for f in files}
    assert fm.build_random_qwen(path, "qwen3", tok_cache, seed=0) == path
    # Reused, not rebuilt: nothing on disk was rewritten.
    assert {f: (path / f).stat().st_mtime_ns for f in files} == before
    # Same seed -> same tensors as on disk, so cached and fresh builds agree.
    from safetensors.numpy import load_file

    name = "model.layers.1.mlp.down_proj.weight"
    on_disk = load_file(str(path / "model.safetensors"))[name]
    assert (fm.random_tensor(name, on_disk.shape, seed=0) == on_disk).all()
    assert not (fm.random_tensor(name, on_disk.shape, seed=1) == on_disk).all()
