"""Which GGML type each tensor gets in a GGUF file of a given file type ("q4_k_m", ...), as llama.cpp's
`llama-quantize` decides it (src/llama-quant.cpp), so that our exports match the files people download.

A file type names a default type, but llama-quantize refines it per tensor: the output projection (and the token
embedding when it doubles as the output) gets more bits, "_M" mixes give attn_v and ffn_down more bits on some layers,
and a tensor whose rows do not split into whole blocks falls back to a type whose blocks fit. Only the rules that can
fire for our architectures (llama, qwen2, qwen3: dense, separate q/k/v, never 70B-sized) and our file types are
mirrored; each names the llama.cpp branch it copies. Rules for Q2_K/Q3_K/IQ* mixes, MoE (n_expert), Falcon, fused
attn_qkv, LLaMA-70B's attn_v bump, imatrix-dependent choices and user overrides are left out on purpose.

The per-layer choices depend on counters that llama.cpp advances as it meets attn_v and ffn_down tensors in its own
order (layer number, then name: `weight_name_comparer`); `plan` walks tensors in that order, and callers choosing
tensor by tensor must too (one `Counters` per file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from mlx_ft.errors import UserError

Q = GGMLQuantizationType
FT = LlamaFileType


class FileType(NamedTuple):
    default: GGMLQuantizationType  # llama_ftype_get_default_type
    ftype: LlamaFileType  # written as general.file_type


FILE_TYPES: dict[str, FileType] = {
    "f32": FileType(Q.F32, FT.ALL_F32),
    "f16": FileType(Q.F16, FT.MOSTLY_F16),
    "bf16": FileType(Q.BF16, FT.MOSTLY_BF16),
    "q8_0": FileType(Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": FileType(Q.Q4_0, FT.MOSTLY_Q4_0),
    "q4_1": FileType(Q.Q4_1, FT.MOSTLY_Q4_1),
    "q5_0": FileType(Q.Q5_0, FT.MOSTLY_Q5_0),
    "q5_1": FileType(Q.Q5_1, FT.MOSTLY_Q5_1),
    "q4_k_s": FileType(Q.Q4_K, FT.MOSTLY_Q4_K_S),
    "q4_k_m": FileType(Q.Q4_K, FT.MOSTLY_Q4_K_M),
    "q5_k_m": FileType(Q.Q5_K, FT.MOSTLY_Q5_K_M),
    "q6_k": FileType(Q.Q6_K, FT.MOSTLY_Q6_K),
}

# tensor_type_fallback: the type used when a row (ne[0]) is not a whole number of blocks of the chosen type. Only
# 256-weight types are listed there; a 32-weight type that does not fit either (Q4_0 ... Q8_0) has no fallback and
# llama-quantize fails. If the fallback does not fit either, llama.cpp uses F16.
FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    Q.Q2_K: Q.Q4_0,
    Q.Q3_K: Q.Q4_0,
    Q.Q4_K: Q.Q5_0,
    Q.Q5_K: Q.Q5_1,
    Q.Q6_K: Q.Q8_0,
}

FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)  # ggml_is_quantized() is false: no per-tensor refinement at all


@dataclass
class Counters:
    """llama.cpp's quantize_state_impl, the part our rules read: whether the token embedding is also the output
    (llama.cpp assumes so until it sees an output.weight), and how many attn_v / ffn_down tensors it has passed
    (i_attention_wv, i_ffn_down): with one of each per layer, the layer number of the next one."""

    tied_embeddings: bool = True
    attn_v: int = 0
    ffn_down: int = 0
    n_fallback: int = 0  # tensors that needed the fallback type; llama-quantize warns with this count

    @classmethod
    def for_tensors(cls, names: Iterable[str]) -> Counters:
        """Fresh counters for a file holding `names` (init_quantize_state_counters)."""
        return cls(tied_embeddings="output.weight" not in set(names))


def tensor_type(
    file_type: str, gguf_name: str, shape: tuple[int, ...], n_layers: int, counters: Counters
) -> GGMLQuantizationType:
    """The type llama-quantize gives tensor `gguf_name` (numpy `shape`: row-major, so ggml's ne[0], the row length,
    is shape[-1]) in a `file_type` file of a model with `n_layers` blocks. Advances `counters`."""
    try:
        default = FILE_TYPES[file_type].default
    except KeyError:
        raise UserError(f"unknown GGUF type {file_type!r}; choose one of {', '.join(FILE_TYPES)}") from None

    # tensor_allows_quantization: only 2-D+ tensors named *weight, never norms. The rest keep the type they have in
    # the input file; llama.cpp's converter (and ours) stores them as F32.
    if _n_dims(shape) < 2 or not gguf_name.endswith("weight") or "_norm.weight" in gguf_name:
        return Q.F32
    # llama_tensor_get_type: float file types are not refined (the refinement sits under ggml_is_quantized)
    if default in FLOAT_TYPES:
        return default
    chosen = _mix_rule(file_type, default, gguf_name, shape[-1], n_layers, counters)
    return _fallback(chosen, gguf_name, shape[-1], counters)


def plan(file_type: str, shapes: Mapping[str, tuple[int, ...]], n_layers: int) -> dict[str, GGMLQuantizationType]:
    """Types for every tensor of a model (`shapes`: GGUF name -> numpy shape), chosen in llama.cpp's order."""
    counters = Counters.for_tensors(shapes)
    return {name: tensor_type(file_type, name, shapes[name], n_layers, counters) for name in llama_order(shapes)}


def llama_order(names: Iterable[str]) -> list[str]:
    """Names in the order llama-quantize visits them: llama_model_loader::weight_name_comparer sorts by the number
    in "blk.N." (-1 for tensors outside the blocks), then by name."""
    return sorted(names, key=lambda name: (_layer(name), name))


# ---------------------------------------------------------------- llama_tensor_get_type_impl, our branches


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    first, last = n_layers // 8, 7 * n_layers // 8
    # C's % truncates toward zero; the first test already claims every layer where the difference is negative
    return i_layer < first or i_layer >= last or (i_layer - first) % 3 == 2


def _mix_rule(
    file_type: str, chosen: GGMLQuantizationType, name: str, ne0: int, n_layers: int, counters: Counters
) -> GGMLQuantizationType:
    # output.weight, and token_embd.weight when tied: "for arches that share the same tensor between the token
    # embeddings and the output, we quantize the token embeddings with the quantization of the output tensor".
    # The divisibility test uses the *default* type's block (32 for Q4_0..Q8_0, 256 for K-quants), so a legacy type
    # can still pick Q6_K here and then fall back to Q8_0.
    if name == "output.weight" or (counters.tied_embeddings and name == "token_embd.weight"):
        if ne0 % GGML_QUANT_SIZES[chosen][0] != 0:
            return Q.Q8_0
        return chosen if chosen == Q.Q8_0 else Q.Q6_K
    if name == "token_embd.weight":
        return chosen  # untied: only IQ/Q2_0/TQ mixes change it

    category = _category(name)
    if category == "attn_v":
        # category_is_attn_v branch: "_M" mixes give Q6_K on use_more_bits layers; Q4_K_S gives Q5_K to the first 4
        i = counters.attn_v
        counters.attn_v += 1  # ++qs.i_attention_wv, whatever the outcome
        if file_type in ("q4_k_m", "q5_k_m") and use_more_bits(i, n_layers):
            return Q.Q6_K
        if file_type == "q4_k_s" and i < 4:
            return Q.Q5_K
    elif category == "ffn_down":
        # FFN_DOWN branch (non-MoE, non-Falcon): i_layer is the running count i_ffn_down, n_layer is n_layer_all
        i = counters.ffn_down
        counters.ffn_down += 1
        if file_type in ("q4_k_m", "q5_k_m") and use_more_bits(i, n_layers):
            return Q.Q6_K
        if file_type == "q4_k_s" and i < n_layers // 8:
            return Q.Q5_K
    # attn_q/attn_k/attn_output/ffn_gate/ffn_up: their rules only concern Q2_K/Q3_K/IQ mixes and MoE
    return chosen


def _fallback(chosen: GGMLQuantizationType, name: str, ne0: int, counters: Counters) -> GGMLQuantizationType:
    """tensor_type_fallback: SmolLM2-135M (hidden 576) and Qwen2-0.5B (hidden 896) rows are not multiples of 256,
    so most of their tensors land here in K-quant files."""
    if ne0 % GGML_QUANT_SIZES[chosen][0] == 0:
        return chosen
    counters.n_fallback += 1
    if chosen not in FALLBACK:
        raise UserError(
            f"{name}: rows of {ne0} values do not fit {chosen.name} blocks and llama.cpp has no fallback for it; "
            "choose a k-quant or a float type (f16, bf16, f32)"
        )
    fallback = FALLBACK[chosen]
    return fallback if ne0 % GGML_QUANT_SIZES[fallback][0] == 0 else Q.F16


def _category(name: str) -> str:
    """tensor_get_category, reduced to the kinds that have rules above; same substring tests, same order."""
    if "attn_v.weight" in name:
        return "attn_v"
    if any(s in name for s in ("attn_k.weight", "attn_q.weight", "attn_output.weight", "ffn_up", "ffn_gate")):
        return "other"
    return "ffn_down" if "ffn_down" in name else "other"


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing ggml dimensions of size 1 (leading ones in numpy order) do not count."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return len(dims)


_LAYER = re.compile(r"blk\.(\d+)\.")


def _layer(name: str) -> int:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else -1
