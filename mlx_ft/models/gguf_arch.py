"""Tables that map Hugging Face model folders to llama.cpp's GGUF naming, per architecture.

One table serves both directions (GGUF import and GGUF export), so a name is spelled in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Arch:
    gguf: str  # general.architecture in a GGUF file
    model_type: str  # config.json "model_type"
    hf_class: str  # config.json "architectures"[0]
    # llama.cpp's converter reorders llama's Q/K rows from HF's rotate-half layout to interleaved RoPE pairs.
    permute_qk: bool
    attention_bias: bool  # q/k/v projections carry biases (qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k (qwen3)


ARCHS: dict[str, Arch] = {
    a.gguf: a
    for a in (
        Arch("llama", "llama", "LlamaForCausalLM", permute_qk=True, attention_bias=False, qk_norm=False),
        Arch("qwen2", "qwen2", "Qwen2ForCausalLM", permute_qk=False, attention_bias=True, qk_norm=False),
        Arch("qwen3", "qwen3", "Qwen3ForCausalLM", permute_qk=False, attention_bias=False, qk_norm=True),
    )
}

BY_MODEL_TYPE: dict[str, Arch] = {a.model_type: a for a in ARCHS.values()}

# (HF name, GGUF name); "{i}" is the block index. Tensors an architecture lacks are simply absent from its files.
TENSOR_NAMES: tuple[tuple[str, str], ...] = (
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    ("model.layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias"),
    ("model.layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias"),
    ("model.layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias"),
    ("model.layers.{i}.self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight"),
    ("model.layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight"),
    ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
)

# (GGUF key without the "<arch>." prefix, config.json key)
CONFIG_KEYS: tuple[tuple[str, str], ...] = (
    ("block_count", "num_hidden_layers"),
    ("context_length", "max_position_embeddings"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("rope.freq_base", "rope_theta"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
)

# Which of a layer's projections llama.cpp permutes, and which head count goes with each.
PERMUTED = {"attn_q.weight": "num_attention_heads", "attn_k.weight": "num_key_value_heads"}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order for llama: HF's rotate-half halves → interleaved RoPE pairs (per head)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk`: interleaved pairs → HF's rotate-half layout."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


_GGUF_TO_HF = [(_template_regex(g), h) for h, g in TENSOR_NAMES]
_HF_TO_GGUF = [(_template_regex(h), g) for h, g in TENSOR_NAMES]


def _translate(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(i=m.group("i")) if "i" in m.groupdict() else target
    return None


def gguf_to_hf(name: str) -> str | None:
    return _translate(name, _GGUF_TO_HF)


def hf_to_gguf(name: str) -> str | None:
    return _translate(name, _HF_TO_GGUF)
