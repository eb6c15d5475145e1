"""The proof that exported GGUF files work where users run them: llama.cpp (Ollama's engine), through llama-cpp-python.
Runs where `llama_cpp` is importable (`.ci/run` installs the `llama` extra from a cached wheel) and fails in CI when
it is not."""

import ctypes
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_ft import chat_template
from mlx_ft.export.gguf import export_gguf
from mlx_ft.models import loader
from mlx_ft.models.gguf_import import import_gguf

if os.environ.get("CI"):
    import llama_cpp  # noqa: F401  (in CI a missing llama.cpp is a failure, not a skip)
llama_cpp = pytest.importorskip("llama_cpp")

CHATS = [
    [
        {"role": "system", "content": "你是观赏鱼专家。"},
        {"role": "user", "content": "金鱼每天喂几次？水温保持在多少度？"},
    ],
    [{"role": "user", "content": "Normalise: m50s 26w 124t gtd 1020u $1020.0 - what's the model's hashrate?"}],
]


def _llama(path: Path, lora: Path | None = None):
    # An f32 KV cache: llama.cpp's default f16 cache adds its own rounding to what the file holds.
    return llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        n_ctx=256,
        logits_all=True,
        verbose=False,
        n_threads=2,
        seed=0,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )


def _cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _softmax_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module")
def f16_files(smollm2_dir, qwen2_dir, qwen3_dir, tmp_path_factory):
    out = {}
    for name, src in (("smollm2", smollm2_dir), ("qwen2", qwen2_dir), ("qwen3", qwen3_dir)):
        out[name] = (src, export_gguf(str(src), "f16", tmp_path_factory.mktemp(name) / f"{name}-f16.gguf"))
    return out


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "qwen3"])
def test_llama_cpp_tokenizes_and_computes_like_mlx(f16_files, name, tmp_path):
    """llama.cpp on the f16 file against MLX on the very same f16-rounded weights (our import of that file), and
    against MLX's float32 original: the ids are the HF tokenizer's, the logits agree, the top-1 token everywhere."""
    src, path = f16_files[name]
    original = loader.load(str(src))
    same_weights = loader.load(str(import_gguf(path, tmp_path / "back")))
    llm = _llama(path)
    for chat in CHATS:
        text = chat_template.prompt_text(original.tokenizer, chat)
        ids = chat_template.prompt_ids(original.tokenizer, chat)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, "same ids as the HF tokenizer"
        theirs = _cpp_logits(llm, ids)
        mine = np.array(same_weights.model(mx.array([ids]))[0].astype(mx.float32))
        assert np.abs(mine - theirs).max() <= 0.1, f"max |logit difference| {np.abs(mine - theirs).max():.4f}"
        assert (mine.argmax(-1) == theirs.argmax(-1)).all()
        f32 = np.array(original.model(mx.array([ids]))[0].astype(mx.float32))
        print(
            f"{name}: max |llama.cpp f16 - MLX f16 weights| {np.abs(mine - theirs).max():.4f}, "
            f"- MLX float32 original {np.abs(f32 - theirs).max():.4f} (logits up to {np.abs(f32).max():.1f})"
        )
        assert (f32.argmax(-1) == theirs.argmax(-1)).mean() > 0.95


@pytest.fixture(scope="module")
def f16_logits(f16_files) -> list[tuple[list[int], np.ndarray]]:
    """SmolLM2's f16 file's logits on each chat, computed once for every quantization compared against them."""
    src, f16 = f16_files["smollm2"]
    tok = loader.load(str(src)).tokenizer
    reference = _llama(f16)
    return [(ids, _cpp_logits(reference, ids)) for ids in (chat_template.prompt_ids(tok, chat) for chat in CHATS)]


@pytest.mark.parametrize("file_type", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k"])
def test_our_quantization_is_as_good_as_llama_quantize(f16_files, f16_logits, tmp_path, file_type):
    """Mean KL from the f16 logits: our file against llama.cpp's own quantization of the same f16 file."""
    src, f16 = f16_files["smollm2"]
    ours_path = export_gguf(str(src), file_type, tmp_path / f"ours-{file_type}.gguf")
    theirs_path = tmp_path / f"theirs-{file_type}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type.upper()}")
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(theirs_path).encode(), ctypes.byref(params)) == 0

    ours, theirs = _llama(ours_path), _llama(theirs_path)
    kl_ours = kl_theirs = 0.0
    for ids, base in f16_logits:
        kl_ours += _softmax_kl(base, _cpp_logits(ours, ids))
        kl_theirs += _softmax_kl(base, _cpp_logits(theirs, ids))
    print(f"{file_type}: mean KL ours {kl_ours / 2:.5f}, llama-quantize {kl_theirs / 2:.5f}")
    assert kl_ours <= 1.2 * kl_theirs + 1e-6


@pytest.mark.parametrize("file_type", ["f32", "bf16"])
def test_float_exports_load_and_agree(f16_files, tmp_path, file_type):
    src, f16 = f16_files["smollm2"]
    path = export_gguf(str(src), file_type, tmp_path / f"m-{file_type}.gguf")
    tok = loader.load(str(src)).tokenizer
    ids = chat_template.prompt_ids(tok, CHATS[0])
    a, b = _cpp_logits(_llama(f16), ids), _cpp_logits(_llama(path), ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.95 and _softmax_kl(a, b) < 0.01
