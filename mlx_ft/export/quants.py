"""Numpy quantizers for GGUF tensors: Q4_K, Q5_K and Q6_K written here, every other type delegated to gguf-py.

gguf-py (`gguf.quants`) can dequantize the K-quants but not produce them, and they are what Q4_K_M and friends are
made of. These follow ggml's *reference* quantizers (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`,
`quantize_row_q6_K_ref` in ggml/src/ggml-quants.c; no importance matrix) step for step, so that the bytes are the
ones ggml writes, not merely close to them. That constrains how the numpy is written:

- every quantity is float32 and computed in the order the C code computes it: `a*b*c` is `(a*b)*c`;
- sums over a group run strictly left to right (see `_seqsum`);
- `nearest_int` is ggml's bit trick, reproduced bit for bit (round half to even);
- the fp16 block scales are rounded half to even, as ggml's FP32->FP16 conversion does.

What "the bytes ggml writes" means depends on how ggml was compiled: ggml-quants.c belongs to the ggml-base library,
which ggml's CMake builds without -march flags, so on x86-64 there is no fused multiply-add and plain IEEE float32
arithmetic is exactly what llama-quantize runs (no imatrix: `quantize_q4_K` calls `quantize_row_q4_K_ref`). We match
that bit for bit (tests/export/test_quants.py). A compiler allowed to fuse `a*b + c` (clang on arm64 does so by default,
gcc with -march=native) rounds some sums differently: against such a build a minority of blocks differ by a level
here and there (gcc -O3 -march=native, Gaussian weights: 6% of Q4_K, 30% of Q5_K, 0.3% of Q6_K blocks), with the
same error statistics: neither side is better, they just round differently.

Work is vectorised over blocks: the only Python loops run over the handful of candidate scales each search tries
and the weights of one group (sequential sums), and a tensor is processed in chunks of super-blocks so that the
temporaries stay small.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType
from gguf import quants as gguf_quants

Q = GGMLQuantizationType

# Types `quantize` can write: ours (the K-quants) plus those gguf-py quantizes itself.
K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)
SUPPORTED = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1) + K_QUANTS

# Super-blocks per numpy pass: 1 MB per float32 temporary, near the fastest on a 2-core x86 box (measured 256 to
# 8192): large enough that numpy's per-call overhead does not dominate, small enough to stay in cache.
CHUNK_BLOCKS = 1024

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)  # ggml-quants.c: below this a group counts as all zero


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """`data` (float32, any shape) in `qtype`: uint8 bytes shaped (*shape[:-1], bytes per row) for quantized types,
    as `gguf.quants.quantize` returns them; F32/F16 come back as float arrays, as gguf-py gives them."""
    qtype = Q(qtype)
    if qtype not in K_QUANTS:
        if qtype not in SUPPORTED:
            raise ValueError(f"cannot quantize to {qtype.name}; supported: {', '.join(t.name for t in SUPPORTED)}")
        return gguf_quants.quantize(data, qtype)
    data = np.asarray(data)
    if data.ndim == 0 or data.shape[-1] % QK_K != 0:
        raise ValueError(f"{qtype.name} needs rows whose length is a multiple of {QK_K}; got shape {data.shape}")
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = np.ascontiguousarray(data, dtype=F32).reshape(-1, block_size)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    quantize_blocks = _QUANTIZERS[qtype]
    for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
        out[start : start + CHUNK_BLOCKS] = quantize_blocks(blocks[start : start + CHUNK_BLOCKS])
    return out.reshape(*data.shape[:-1], data.shape[-1] // block_size * type_size)


# ---------------------------------------------------------------- helpers shared by the K-quants
#
# Layout: a group of weights that shares one scale is a *column*: arrays are (weights per group, n_groups). Per-group
# values are then (n_groups,) rows that broadcast without reshaping, and a sequential sum over a group is a handful
# of whole-row additions, which numpy does at full speed (a cumsum along a short last axis is ~25x slower).


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int`: add 1.5*2^23 in float32 and read the low mantissa bits. That is round-half-to-even for
    |v| < 2^22; beyond that ggml returns wrapped garbage (its assert is compiled out), and so do we."""
    bits = (np.asarray(v, dtype=F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _levels(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """MAX(lo, MIN(hi, nearest_int(v))) as float32 (small integers are exact in float32 and stay so in products)."""
    return np.clip(_nearest_int(v), lo, hi).astype(F32)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 strictly in order, as ggml's `for (i...) s += a[i]` does. np.sum's pairwise summation rounds
    differently and would now and then flip a later rounding decision, and with it a byte."""
    total = a[0].copy()
    for row in a[1:]:
        total += row
    return total


def _fp16(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> fp16 (round half to even, as GGML_FP32_TO_FP16): its bits and the float32 value they stand for."""
    h = np.asarray(v, dtype=F32).astype(np.float16)
    return h.view(np.uint16), h.astype(F32)


def _make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's `make_qkx2_quants` for each column of `x` with weights `w`: fit x ~ scale*L - the_min, L in 0..nmax,
    trying nstep+1 candidate scales around nmax/(max-min) and keeping the weighted least-squares best.
    Returns (scale, the_min, L) per column; L is float32."""
    mn = np.minimum(x.min(axis=0), F32(0))  # `if (min > 0) min = 0`: the offset is never positive
    mx = x.max(axis=0)
    flat = mx == mn  # ggml returns at once: scale 0, L 0, the_min -min
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)

    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(nmax) / (mx - mn)
        scale = F32(1) / iscale
        L = _levels(iscale * (x - mn), 0, nmax)  # ggml takes the difference first, then scales
        diff = (scale * L + mn) - x
        best_error = _seqsum(w * (diff * diff))
        # When a candidate wins, `min` moves to its offset, and later candidates measure both the range (max - min)
        # and the offsets (x - min) from the new value.
        cur_min = mn
        for step in range(nstep + 1):
            # (rmin + rdelta*is + nmax)/(max - min), each operation rounded to float32 as in C
            iscale = ((F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)) / (mx - cur_min)
            laux = _levels(iscale * (x - cur_min), 0, nmax)
            wl = w * laux
            sum_l = _seqsum(wl)
            sum_l2 = _seqsum(wl * laux)
            sum_xl = _seqsum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0  # a positive offset is not representable: refit the scale alone
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            diff = (this_scale * laux + this_min) - x
            cur_error = _seqsum(w * (diff * diff))
            better = (D > 0) & (cur_error < best_error) & ~flat
            L = np.where(better, laux, L)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            cur_min = np.where(better, this_min, cur_min)

    scale = np.where(flat, F32(0), scale)
    L = np.where(flat, F32(0), L)
    return scale, -cur_min, L


def _make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)` (symmetric, weights x^2) for each column of `x`:
    tries scales -(nmax + 0.1*is)/max for is in -9..9 and keeps the best. Returns (scale, L in 0..2*nmax-1)."""
    ax = np.abs(x)
    first = np.argmax(ax, axis=0)[None]  # ggml keeps the first element of largest magnitude (strict `>`)
    amax = np.take_along_axis(ax, first, axis=0)[0]
    mx = np.take_along_axis(x, first, axis=0)[0]
    zero = amax < GROUP_MAX_EPS  # ggml: L = 0 (not nmax) and scale 0
    w = x * x
    wx = w * x

    def attempt(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        l = _levels(iscale * x, -nmax, nmax - 1)
        return l, _seqsum(wx * l), _seqsum((w * l) * l)

    with np.errstate(divide="ignore", invalid="ignore"):
        l, sumlx, suml2 = attempt(F32(-nmax) / mx)
        L = l + F32(nmax)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            l, sumlx, suml2 = attempt(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better, l + F32(nmax), L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)

    return np.where(zero, F32(0), scale), np.where(zero, F32(0), L)


# ---------------------------------------------------------------- Q4_K / Q5_K: 8 groups of 32, 6-bit scales and mins


def _qkx_superblocks(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """What Q4_K and Q5_K share (`quantize_row_q{4,5}_K_ref`): per 32-weight group a scale and a min from
    make_qkx2_quants, both re-quantized to 6 bits against the block's largest, then every weight re-quantized
    against those. `x` is (n, 256). Returns (d bits, dmin bits, 12 packed scale bytes, L (n, 256) uint8)."""
    n = x.shape[0]
    g = np.ascontiguousarray(x.reshape(n * 8, 32).T)  # (32, n*8): one group per column
    sum_x2 = _seqsum(g * g)
    av_x = np.sqrt(sum_x2 / F32(32))
    weights = av_x + np.abs(g)
    scales, mins, L = _make_qkx2_quants(g, weights, nmax, rmin, 0.1, nstep)
    scales = scales.reshape(n, 8)
    mins = mins.reshape(n, 8)
    L = L.T.reshape(n, 8, 32)

    # `if (scale > max_scale)` starting from 0: the block maxima are never negative
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    # ggml stores nearest_int in a uint8_t (wrapping) before MIN(63, .)
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)

    # 12 bytes in get_scale_min_k4's layout: groups 0-3 whole in bytes 0-3 (scales) and 4-7 (mins); groups 4-7 as a
    # low nibble in bytes 8-11 plus their top two bits in the spare top bits of bytes 0-7.
    packed = np.empty((n, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)

    d_bits, d = _fp16(max_scale / F32(63))
    dmin_bits, dmin = _fp16(max_min / F32(63))
    dj = (d[:, None] * ls.astype(F32))[:, :, None]  # each group's step and offset as the dequantizer sees them
    dmj = (dmin[:, None] * lm.astype(F32))[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = _levels((x.reshape(n, 8, 32) + dmj) / dj, 0, nmax)
    # a group whose step is 0 keeps make_qkx2_quants' levels (`if (!d) continue;`)
    L = np.where(dj != 0, requant, L).astype(np.uint8)
    return d_bits, dmin_bits, packed, L.reshape(n, QK_K)


def _d_dmin_bytes(d_bits: np.ndarray, dmin_bits: np.ndarray) -> np.ndarray:
    return np.stack([d_bits, dmin_bits], axis=1).astype("<u2").view(np.uint8)


def _quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """block_q4_K: d, dmin (fp16), scales[12], qs[128]; 4.5 bits per weight."""
    d_bits, dmin_bits, packed, L = _qkx_superblocks(x, nmax=15, rmin=-1.0, nstep=20)
    # qs: for each 64 weights, byte l holds weight l (low nibble) and weight l+32 (high nibble)
    L = L.reshape(-1, 4, 2, 32)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_d_dmin_bytes(d_bits, dmin_bits), packed, qs], axis=1)


def _quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """block_q5_K: d, dmin (fp16), scales[12], qh[32], qs[128]; 5.5 bits per weight."""
    d_bits, dmin_bits, packed, L = _qkx_superblocks(x, nmax=31, rmin=-0.5, nstep=15)
    groups = L.reshape(-1, 8, 32)
    # qh: bit g of byte j is the fifth bit of weight j of group g
    qh = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for g in range(8):
        qh |= (groups[:, g] >> 4) << g
    low = (groups & 0xF).reshape(-1, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_d_dmin_bytes(d_bits, dmin_bits), packed, qh, qs], axis=1)


# ---------------------------------------------------------------- Q6_K: 16 groups of 16, signed 8-bit scales


def _quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """block_q6_K (`quantize_row_q6_K_ref`): ql[128], qh[64], scales[16] (int8), d (fp16); 6.5625 bits per weight."""
    n = x.shape[0]
    g = np.ascontiguousarray(x.reshape(n * 16, 16).T)  # (16, n*16): one group per column
    scales, L = _make_qx_quants_rmse1(g, nmax=32)
    scales = scales.reshape(n, 16)
    L = L.T.reshape(n, 16, 16)

    abs_scales = np.abs(scales)
    first = np.argmax(abs_scales, axis=1)[:, None]  # the first largest |scale| sets d (and its sign)
    max_abs = np.take_along_axis(abs_scales, first, axis=1)[:, 0]
    max_scale = np.take_along_axis(scales, first, axis=1)[:, 0]
    zero = max_abs < GROUP_MAX_EPS  # ggml memsets such a block: every byte 0

    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        d_bits, d = _fp16(F32(1) / iscale)
        sc = np.minimum(_nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        dj = (d[:, None] * sc.astype(F32))[:, :, None]
        requant = _levels(x.reshape(n, 16, 16) / dj, -32, 31) + F32(32)
    # a group whose step is 0 keeps make_qx_quants' levels (`if (!d) continue;`)
    L = np.where(dj != 0, requant, L).astype(np.uint8).reshape(n, 2, 4, 32)

    # per 128 weights (quarters q0..q3 of 32): ql[0:32] = q0 | q2<<4 and ql[32:64] = q1 | q3<<4 (low 4 bits each);
    # qh[0:32] = the four quarters' top 2 bits at shifts 0, 2, 4, 6
    low = L & 0xF
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    high = L >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    d_bytes = d_bits.astype("<u2").view(np.uint8).reshape(n, 2)
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d_bytes], axis=1)
    out[zero] = 0
    return out


_QUANTIZERS = {Q.Q4_K: _quantize_q4_k, Q.Q5_K: _quantize_q5_k, Q.Q6_K: _quantize_q6_k}
