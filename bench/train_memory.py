"""Peak memory of one training step with LoRA, DoRA, QLoRA (4- and 8-bit base) and a full fine-tune of the last
layers, through `mlx_ft.training.run.train`, on the built-in SmolLM2-135M-Instruct: what each choice costs in memory,
side by side with its ratio to LoRA.

Every variant trains with the settings of bench/train_overhead.py (rank 8, scale 20, dropout 0, num_layers 8, batch
4, Adam lr 2e-4, max_seq_length 512, seed 0, prompt masking) for --iters steps, on a train.jsonl alone (no
validation); the variants differ only in `fine_tune_type` and `quantize`. With the same seed every variant sees the
same batches (mlx_ft's batch order depends on the seed and the token lengths only). The default data is
train_overhead.py's equal-length set (64 chats of 54 tokens: every batch 4 x 65), because on this CPU one QLoRA step
on fish_care's batches (4 x ~300) takes ~3 minutes; `--data data/fish_care` measures on real batches (measured once,
2 steps, load average ~2: LoRA 2.23 GB train peak, QLoRA-4 1.90 GB at 188 s a step), where activations weigh more.

Each variant runs in a fresh child process, so peaks never mix. The child wraps our training loop
(`mlx_ft.training.loop.loop`): when it is entered (model loaded, quantized, adapters attached) it evaluates the model's
parameters, notes MLX's active memory (`weights`: base model + adapters) and the peak so far (`load peak`: loading
and quantizing), and resets the peak (mx.reset_peak_memory). The `train peak` is the last `peak_memory_gb` in the
run's metrics.jsonl (mx.get_peak_memory after the last step, reported every step): weights, gradients, optimizer
state and activations of the largest batch.
`s/step` is the wall time per step after the first (from metrics.jsonl `time`); on CPU, MLX's quantized matmul is
slow, so QLoRA is slower here, not faster.

Usage: python bench/train_memory.py [--iters 2] [--data equal-length|DIR] [--variants lora dora qlora4 qlora8 full]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlx_ft import models

from train_overhead import REPO, SETTINGS, Sides, equal_length_set, train_only_copy

VARIANTS = {
    "lora": {"fine_tune_type": "lora"},
    "dora": {"fine_tune_type": "dora"},
    "qlora4": {"fine_tune_type": "lora", "quantize": 4},
    "qlora8": {"fine_tune_type": "lora", "quantize": 8},
    "full": {"fine_tune_type": "full"},
}

CHILD = r"""
import json, sys
import mlx_ft  # binds MLX to OpenBLAS before mlx.core loads
import mlx.core as mx
from mlx_ft import config
from mlx_ft.training import loop as training_loop, run as training_run
from mlx_ft.training.loss_plot import read_metrics

out = {}
loop = training_loop.loop

def measured(cfg, run, model, *rest):
    mx.eval(model.parameters())  # quantization is lazy: finish it before the peak is reset
    out["weights_gb"] = mx.get_active_memory() / 1e9
    out["load_peak_gb"] = mx.get_peak_memory() / 1e9
    mx.reset_peak_memory()
    return loop(cfg, run, model, *rest)

training_loop.loop = measured
run = training_run.train(config.build(json.loads(sys.argv[1])))
rows = [r for r in read_metrics(run / "metrics.jsonl") if "peak_memory_gb" in r]
out["peak_gb"] = [r["peak_memory_gb"] for r in rows]
out["time"] = [r["time"] for r in rows]
print(json.dumps(out))
"""
TRAINABLE = re.compile(r"Trainable parameters: ([\d.]+)% \(([\d.]+M)/")


def measure(values: dict, model: str, data: Path, run: Path, iters: int) -> dict:
    cfg = {**SETTINGS, **values, "model": model, "data": str(data), "iters": iters, "adapter_path": str(run)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{values} failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    trainable = TRAINABLE.search(proc.stdout + proc.stderr)
    out["trainable"] = f"{trainable.group(2)} ({trainable.group(1)}%)" if trainable else "?"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model source (mlx_ft alias, folder, repo id)")
    ap.add_argument("--iters", type=int, default=2, help="training steps per variant")
    ap.add_argument(
        "--data",
        default="equal-length",
        help="'equal-length' (generated, see train_overhead.py) or a folder with train.jsonl",
    )
    ap.add_argument("--examples", type=int, default=64, help="size of the equal-length dataset")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = ap.parse_args()
    t0 = time.time()
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    model_dir = models.resolve(args.model)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlx_ft-bench-") as tmp:
        if args.data == "equal-length":
            n = equal_length_set(Sides(model_dir), Path(tmp) / "data", args.examples)
            data, about = Path(tmp) / "data", f"equal-length: {args.examples} chats of {n} tokens"
        else:
            data, about = train_only_copy(Path(args.data), Path(tmp) / "data"), f"{args.data}/train.jsonl"
        print(f"model {model_dir}\ndata {about}; {args.iters} steps per variant, each in its own process")
        for name in args.variants:
            results[name] = measure(VARIANTS[name], model_dir, data, Path(tmp) / name, args.iters)
    base = results.get("lora")
    print(
        f"{'variant':<8} {'trainable':>16} {'weights GB':>11} {'load peak GB':>13} {'train peak GB':>14} "
        f"{'vs LoRA':>8} {'s/step':>7}"
    )
    for name, r in results.items():
        peak = r["peak_gb"][-1]
        ratio = f"{peak / base['peak_gb'][-1]:.2f}x" if base else "-"
        times = r["time"]
        s_step = f"{(times[-1] - times[0]) / (len(times) - 1):.1f}" if len(times) > 1 else "-"
        print(
            f"{name:<8} {r['trainable']:>16} {r['weights_gb']:>11.3f} {r['load_peak_gb']:>13.3f} {peak:>14.3f} "
            f"{ratio:>8} {s_step:>7}"
        )
    load = os.getloadavg()
    print(f"({time.time() - t0:.0f} s; load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")


if __name__ == "__main__":
    main()
