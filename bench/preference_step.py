"""What a preference step costs against an SFT step on the same pairs: time per step and peak memory of SFT (the
chosen answers), ORPO (both answers, no reference) and DPO (both answers, plus the reference's forward pass with the
adapter switched off), through mlx_ft's own compiled step (`training.loop.compiled_step`), one process.

The pairs are built from a prepared chat set (default data/fish_care, the shipped Chinese Q&A): each example's
answer is `chosen`, the next example's answer `rejected`, so both sides have real lengths. Settings are those of
bench/train_overhead.py (LoRA rank 8, scale 20, the last 8 layers, batch 4 pairs, Adam lr 2e-4, max_seq_length
512). The same --steps batches (in the training order of seed 0) go through each variant after one warm-up step
(compilation); the peak is MLX's peak memory over those steps (mx.reset_peak_memory before each variant), so it
holds the weights, the adapter's gradients and optimizer state, and the activations of the largest batch.

An SFT step reads 4 rows; ORPO and DPO read 8 (each pair's two answers), and DPO runs 8 more rows forward for the
reference (eagerly, outside the compiled step, and evaluated before it, so its activations are freed before the
policy's forward and backward pass: it adds time, not peak memory). Measured on the 2-core CPU (--steps 2, load
~1.5): SFT 6.03 s/step 2.00 GB, ORPO 12.10 s (2.01x) 2.92 GB (1.47x), DPO 21.18 s (3.51x) 2.93 GB (1.47x). The
reference costs 9.1 s, ~3/4 of ORPO's whole step: on this CPU MLX's forward pass takes about two thirds of a
training step (README, "Training speed against transformers + PEFT"), and the reference's runs uncompiled.

Usage: python bench/preference_step.py [--data DIR] [--steps 3] [--model smollm2-135m-instruct] [--batch-size 4]
"""

# ruff: noqa: I001  (mlx_ft first: importing it binds MLX to a fast BLAS before mlx.core loads)
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import mlx_ft  # noqa: F401
import mlx.core as mx
import mlx.optimizers as optim
from mlx_lm import load

from mlx_ft import config, data, models
from mlx_ft.models import adapters
from mlx_ft.training.batches import TokenizedChats, TokenizedPairs, iterate_batches, pair_batches
from mlx_ft.training.loop import compiled_step
from mlx_ft.training.loss import masked_loss
from mlx_ft.training.objectives import pair_objective
from mlx_ft.training.preference import Reference

from blas_sides import fast_blas

REPO = Path(__file__).resolve().parent.parent


def pairs_from_chats(examples: list[data.Example]) -> list[data.Example]:
    """Each chat's answer chosen over the next chat's answer."""
    out = []
    for ex, other in zip(examples, examples[1:] + examples[:1]):
        rejected = other.messages[-1]
        if rejected["content"] != ex.messages[-1]["content"]:
            out.append(data.Example(ex.where, ex.messages, rejected=rejected))
    return out


def measure(name: str, step_fn, step_state, batches, prepare, steps: int) -> dict:
    grad = None
    for k in range(steps + 1):
        if k == 1:  # after the warm-up step, which compiles
            mx.reset_peak_memory()
            tic = time.perf_counter()
        batch = prepare(next(batches))
        loss, aux, grad = step_fn(batch, grad, True)
        mx.eval(step_state, loss, aux)
    seconds = (time.perf_counter() - tic) / steps
    return {"name": name, "s_step": seconds, "peak_gb": mx.get_peak_memory() / 1e9, "loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(REPO / "data" / "fish_care"), help="prepared chat folder (train.jsonl)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per variant (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-seq-length", type=int, default=512)
    args = ap.parse_args()
    load_avg = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}")
    blas = fast_blas() or "the platform's"
    print(f"BLAS: {blas} (every variant runs in this process)")
    model, tok = load(models.resolve(args.model))
    cfg = config.build(
        {"fine_tune_type": "lora", "num_layers": 8, "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}}
    )
    mx.random.seed(0)
    adapters.attach(model, cfg)
    chats = [ex for ex in data.load_split(Path(args.data), "train") if ex.text is None]
    pairs = pairs_from_chats(chats)
    n = args.max_seq_length
    sft_set = TokenizedChats(pairs, tok, True, n, "sft")  # the chosen conversations, as SFT would learn them
    pair_set = TokenizedPairs(pairs, tok, n, "pairs")
    print(f"model {args.model}; {len(pairs)} pairs from {args.data}; batch {args.batch_size} pairs; {args.steps} steps")
    order = dict(loop=True, seed=0)
    results = []
    for name in ("sft", "orpo", "dpo"):
        optimizer = optim.Adam(learning_rate=2e-4)
        model.load_weights(
            [(k, mx.zeros_like(v) if "lora_b" in k else v) for k, v in _flat(model.trainable_parameters())],
            strict=False,
        )  # every variant from the same (untrained) adapter
        if name == "sft":
            step_fn, state = compiled_step(model, optimizer, 1, masked_loss)
            batches = iterate_batches(sft_set, args.batch_size, n, **order)
            prepare = lambda b: b  # noqa: E731
        else:
            objective = pair_objective(name, 0.1, Reference(model) if name == "dpo" else None)
            step_fn, state = compiled_step(model, optimizer, 1, objective.loss)
            batches = pair_batches(pair_set, args.batch_size, n, **order)
            prepare = objective.prepare
        model.train()
        results.append(measure(name, step_fn, state, batches, prepare, args.steps))
    sft = results[0]
    print(f"{'step':<6} {'s/step':>8} {'vs SFT':>7} {'peak GB':>8} {'vs SFT':>7}")
    for r in results:
        print(
            f"{r['name']:<6} {r['s_step']:>8.2f} {r['s_step'] / sft['s_step']:>6.2f}x {r['peak_gb']:>8.3f} "
            f"{r['peak_gb'] / sft['peak_gb']:>6.2f}x"
        )
    load_avg = os.getloadavg()
    print(f"(load average now {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f})")


def _flat(tree: dict) -> list:
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


if __name__ == "__main__":
    main()
