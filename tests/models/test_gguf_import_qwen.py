"""qwen2/qwen3 GGUF import: write the tiny Qwen fixtures as GGUF files in the layout llama.cpp's converter uses for
these architectures (Q8_0 matrices, F32 norms and biases, byte-level BPE vocab + merges + `qwen2` pre-tokenizer, vocab
padded with UNUSED `[PADn]` slots), import them back and compare with the source folder. (Token types follow the
source tokenizer's special flags, where llama.cpp would mark every <|…|> token CONTROL.)"""

import json
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load_tokenizer

from mlx_ft.errors import UserError
from mlx_ft.models.gguf_arch import BY_MODEL_TYPE, CONFIG_KEYS, hf_to_gguf
from mlx_ft.models.gguf_import import import_gguf

TEXTS = ["我的金鱼尾巴烂了，怎么办？", "Hello world, it's 2026-11-23!", "def f(x):\n    return x ** 2\n", "🐟🐠 ok"]


def _write_gguf(src: Path, dest: Path, extra_tensors: dict[str, np.ndarray] | None = None) -> None:
    cfg = json.loads((src / "config.json").read_text())
    tok_json = json.loads((src / "tokenizer.json").read_text())
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    arch = BY_MODEL_TYPE[cfg["model_type"]]
    w = gguf.GGUFWriter(str(dest), arch.gguf)
    keys = dict(CONFIG_KEYS)
    w.add_uint32(f"{arch.gguf}.block_count", cfg["num_hidden_layers"])
    w.add_uint32(f"{arch.gguf}.context_length", cfg["max_position_embeddings"])
    w.add_uint32(f"{arch.gguf}.embedding_length", cfg["hidden_size"])
    w.add_uint32(f"{arch.gguf}.feed_forward_length", cfg["intermediate_size"])
    w.add_uint32(f"{arch.gguf}.attention.head_count", cfg["num_attention_heads"])
    w.add_uint32(f"{arch.gguf}.attention.head_count_kv", cfg["num_key_value_heads"])
    w.add_uint32(f"{arch.gguf}.attention.key_length", cfg["head_dim"])
    w.add_float32(f"{arch.gguf}.rope.freq_base", cfg["rope_theta"])
    w.add_float32(f"{arch.gguf}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    assert "block_count" in keys
    vocab = {**tok_json["model"]["vocab"], **{t["content"]: t["id"] for t in tok_json["added_tokens"]}}
    by_id = {i: t for t, i in vocab.items()}
    special = {t["id"] for t in tok_json["added_tokens"] if t["special"]}
    added = {t["id"] for t in tok_json["added_tokens"]}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):  # the embedding is padded past the tokenizer, as llama.cpp writes it
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(
            gguf.TokenType.CONTROL
            if i in special
            else gguf.TokenType.USER_DEFINED
            if i in added
            else gguf.TokenType.UNUSED
            if i not in by_id
            else gguf.TokenType.NORMAL
        )
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok_json["model"]["merges"]])
    w.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    w.add_pad_token_id(vocab[tok_cfg["pad_token"]])
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(tok_cfg["chat_template"])
    for name, t in mx.load(str(src / "model.safetensors")).items():
        arr = np.array(t.astype(mx.float32))
        if arr.ndim == 2:
            w.add_tensor(
                hf_to_gguf(name),
                gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            w.add_tensor(hf_to_gguf(name), arr)
    for name, arr in (extra_tensors or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("fixture", ["qwen2_dir", "qwen3_dir"])
def test_qwen_gguf_round_trip(request, fixture, tmp_path):
    src = Path(request.getfixturevalue(fixture))
    _write_gguf(src, tmp_path / "m.gguf")
    out = import_gguf(tmp_path / "m.gguf", tmp_path / "hf")

    a, b = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
    for key in (
        "model_type",
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rope_theta",
        "rms_norm_eps",
        "vocab_size",
        "tie_word_embeddings",
    ):
        assert a[key] == b[key], key
    assert b["rope_parameters"]["rope_theta"] == a["rope_theta"]

    orig, back = mx.load(str(src / "model.safetensors")), mx.load(str(out / "model.safetensors"))
    assert set(orig) == set(back)
    for name, t in orig.items():
        x, y = np.array(t), np.array(back[name])
        if x.ndim == 1:
            assert np.array_equal(x, y), name
        else:  # Q8_0: one scale per 32 values, so the error is at most half a step of the block's absmax/127
            assert np.abs(x - y).max() <= np.abs(x).max() / 127, name

    t_src, t_out = load_tokenizer(src), load_tokenizer(out)
    for text in TEXTS:
        assert t_out.encode(text, add_special_tokens=False) == t_src.encode(text, add_special_tokens=False), text
    chat = [{"role": "user", "content": "你好"}]
    assert t_out.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == t_src.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert t_out.encode("[PAD151700]", add_special_tokens=False) != [151700], "padding slots are not real tokens"


def test_rope_scaling_it_cannot_reproduce_is_refused(qwen2_dir, tmp_path):
    """Llama 3.1+ files keep their RoPE scaling only as a rope_freqs tensor: importing without it would silently
    give a different model, so the import says so and writes nothing."""
    _write_gguf(Path(qwen2_dir), tmp_path / "m.gguf", {"rope_freqs.weight": np.ones(32, np.float32)})
    with pytest.raises(UserError, match="RoPE scaling"):
        import_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
