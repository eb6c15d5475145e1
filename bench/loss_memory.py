"""Peak memory and time of one training step's loss and gradients: the plain masked cross-entropy (the output layer
on every position, the whole logits tensor kept for the backward pass; what mlx_lm's default loss does) against
mlx_ft's (the output layer on learned positions only, chunked and recomputed past `loss.CHUNK_ELEMENTS` logits).

Same model, same batch, same process, alternating (plain, ours, plain, ours ...), LoRA r16 on every projection of
every layer, so the backward pass reaches the whole model. The batch is random token ids with a realistic chat mask:
each row a prompt of 40% of its length (not learned), an answer, and 10% padding. Peak memory is MLX's own
allocator peak (`mx.get_peak_memory`) over the step, after the model's weights; time is the wall time of the step
(evaluated), median of the repeats. Models: the tiny random-weight Qwen3 test fixture (2 layers, but the real Qwen
vocabulary of 151,936 words, where the logits dominate) and the built-in SmolLM2-135M (49,152 words).

Usage: python bench/loss_memory.py [--rows 8] [--length 512] [--repeats 3] [--models qwen3-tiny smollm2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx_ft  # noqa: E402,F401  (before mlx: it binds MLX to OpenBLAS)
from mlx_ft import models  # noqa: E402
from mlx_ft.training.loss import learned_positions, masked_loss  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers  # noqa: E402

from blas_sides import fast_blas  # noqa: E402


def model_dir(name: str) -> str:
    if name == "smollm2":
        return models.resolve("smollm2-135m-instruct")
    from tests.fixture_models import build_random_qwen, fixture_home

    return str(build_random_qwen(fixture_home() / "qwen3-tiny", "qwen3", fixture_home()))


def batch(rows: int, length: int, vocab: int) -> tuple[mx.array, mx.array]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    weights = np.zeros((rows, length + 1), np.int8)
    weights[:, int(0.4 * length) : int(0.9 * length)] = 1
    return mx.array(ids), mx.array(weights)


def step(model: nn.Module, arrays: tuple[mx.array, ...]) -> tuple[float, float, float]:
    """(loss, seconds, peak bytes above the weights) of one loss-and-gradient evaluation."""
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    t = time.perf_counter()
    value, grads = nn.value_and_grad(model, lambda m, *a: masked_loss(m, *a)[0])(model, *arrays)
    mx.eval(value, grads)
    seconds = time.perf_counter() - t
    return float(value), seconds, mx.get_peak_memory() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["qwen3-tiny", "smollm2"])
    args = ap.parse_args()
    blas = fast_blas() or "the platform's"  # both losses run in this process: one BLAS, checked fast
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"device {mx.default_device()} (BLAS: {blas}), batch {args.rows} x {args.length}, LoRA r16 on all projections"
    )
    print(f"{'model':<12} {'vocab':>7} {'loss':<8} {'peak MB':>9} {'s/step':>8} {'value':>9}")
    for name in args.models:
        model, _ = load(model_dir(name))
        model.freeze()
        keys = [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ]
        linear_to_lora_layers(model, len(model.layers), {"rank": 16, "scale": 20.0, "dropout": 0.0, "keys": keys})
        mx.eval(model.parameters())
        ids, weights = batch(args.rows, args.length, model.args.vocab_size)
        w = np.asarray(weights)
        ours_args = (ids, weights, mx.array(float(w[:, 1:].sum())), mx.array(learned_positions(w)))
        runs: dict[str, list[tuple[float, float, float]]] = {"plain": [], "mlx_ft": []}
        step(model, (ids, weights))  # warm-up: first-use allocations and kernels
        for _ in range(args.repeats):
            runs["plain"].append(step(model, (ids, weights)))
            runs["mlx_ft"].append(step(model, ours_args))
        summary = {}
        for kind, rs in runs.items():
            value = rs[0][0]
            secs = statistics.median(r[1] for r in rs)
            peak = max(r[2] for r in rs) / 2**20
            summary[kind] = (secs, peak)
            print(f"{name:<12} {model.args.vocab_size:>7} {kind:<8} {peak:>9,.0f} {secs:>8.2f} {value:>9.4f}")
        (ps, pm), (os_, om) = summary["plain"], summary["mlx_ft"]
        print(f"{name:<12} mlx_ft / plain: peak memory {om / pm:.2f}x, time {os_ / ps:.2f}x")
        del model


if __name__ == "__main__":
    main()
