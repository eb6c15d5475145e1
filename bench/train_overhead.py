"""Training speed of `python -m mlx_ft train` against bare `python -m mlx_lm lora`: what our layer over mlx_lm's
tuner (token-length batching, masks on every assistant turn, our loop with metrics/checkpoints/progress) costs per
step, and what its token-length sorting buys on real chat data.

Both commands read one shared YAML file (mlx_lm's key names, which `mlx_ft train` accepts as they are): the model
(default the built-in SmolLM2-135M-Instruct), LoRA rank 8 scale 20 dropout 0 on the last 8 layers, batch 4, Adam
lr 2e-4, max_seq_length 512, seed 0, prompt masking (mlx_lm's `--mask-prompt`), a report every step and no
checkpoint inside the timed steps. Each data folder holds only train.jsonl, so neither command evaluates. mlx_lm runs
with LD_PRELOAD of the OpenBLAS that `import mlx_ft` binds MLX to, so both multiply on the same BLAS.

Timing: each command runs as a child process, alternating (mlx_lm, mlx_ft, mlx_lm, mlx_ft, ...; --repeats pairs),
for N + 1 iterations (N = --steps, or --fish-steps on fish_care). This process stamps every line the child prints
as it arrives (both print one line per step: mlx_lm its `iter train_loss tok/s tokens` row, mlx_ft its
`step k/n loss ...` line), and the time from the line of step 1 to the line of step N + 1 is the wall time of N whole
loop turns (batch making, the compiled step, reporting, our hooks). Loading, tokenizing and the compile of step 1
fall outside it; they show in the `start` column (process start to the end of step 1, median of the runs). A batch
of a width not seen before retraces the compiled step inside the window too (fish_care only; both sides pay it).
The alternative, running N and 2N iterations and subtracting wall times, costs three times the steps for the same
number of timed ones. `s/step` pools the runs (their own figures under `runs`); `time ratio` is mlx_ft's s/step over
mlx_lm's, `tok/s ratio` mlx_ft's real tok/s over mlx_lm's.

Datasets:
- equal-length: generated arithmetic Q/A chats that all tokenize (chat template, both sides' tokenizations
  checked equal) to the same number of tokens, so every batch of both commands has the same shape and the same
  real tokens: the per-step difference is our overhead alone (goal: within 3%).
- fish_care: data/fish_care/train.jsonl as it is. Here the two commands form different batches: mlx_lm sorts chat
  records by `len()` of the JSON object (1 for every record), i.e. it batches in file order and pads each batch to
  its longest example (rounded up to 32); mlx_ft sorts by token length first. Real (non-padding) tokens per step are
  counted by replaying each side's own batching code in this process on the same tokenizer: mlx_lm's
  `tuner.trainer.iterate_batches` over its `CacheDataset(ChatDataset)` after `np.random.seed(seed)` (what
  `mlx_lm.lora.run` does), and `mlx_ft.training.batches.iterate_batches` over `TokenizedChats`. A real token is a
  position holding a token of the example (input or last target), the count both `on_batch` and mlx_lm's `lengths` give.
  The replay is checked against what the children report: mlx_ft's metrics.jsonl `tokens` column, and mlx_lm's printed
  running count of loss tokens. `real tok/s` = real tokens of the timed steps / their wall time; `fill` = real tokens /
  padded positions (batch x width) of the timed steps, `epoch fill` the same over one whole pass of the data (a few
  timed batches are a small sample of it).

`other cpu`: the largest share of the machine's CPU time (/proc/stat) that processes outside this benchmark took
during one of the runs; above a few percent, the figures are disturbed by another job.

Step times scatter by ~10% even on an idle machine, so the defaults (4 timed equal-length steps, 2 timed fish_care
steps, 2 runs of each: ~5 minutes on 2 idle cores) know the overhead only to about +-5%, as the printed standard
error says; `--datasets equal-length --steps 30` (~5.5 minutes) narrows it to about +-2%.
Usage: python bench/train_overhead.py [--steps 4] [--fish-steps 2] [--repeats 2] [--datasets equal-length fish_care]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx_ft  # noqa: F401 -- binds MLX to OpenBLAS before anything imports mlx.core
from mlx_ft import data as ft_data
from mlx_ft import models
from mlx_ft.training import batches as ft_batches
from mlx_ft.training.loss_plot import read_metrics

import numpy as np
import yaml
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.tuner.trainer import iterate_batches as mlx_lm_batches
from mlx_lm.utils import load_tokenizer

from blas_sides import fast_blas, mapped, same_blas

REPO = Path(__file__).resolve().parent.parent
# The settings both commands train with (mlx_lm's key names; `mlx_ft train` reads the same file).
SETTINGS = {
    "fine_tune_type": "lora",
    "num_layers": 8,
    "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0},
    "batch_size": 4,
    "learning_rate": 2e-4,
    "optimizer": "adam",
    "max_seq_length": 512,
    "mask_prompt": True,
    "seed": 0,
    "steps_per_report": 1,
    "save_every": 100_000,
}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MLX_LM_STEP = re.compile(r"^\s*(\d+)\s+\d+\.\d+\s*[▼▲]\s+[\d,]+\s+([\d.]+)k\s*$")  # iter, loss, tok/s, tokens
MLX_FT_STEP = re.compile(r"^step (\d+)/\d+\s+loss")


def train_only_copy(src: Path, dest: Path) -> Path:
    """A data folder holding only `src`'s train.jsonl (no valid.jsonl: no evaluation)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "train.jsonl", dest / "train.jsonl")
    return dest


def write_config(path: Path, model: str) -> Path:
    path.write_text(yaml.safe_dump({"model": model, "train": True, **SETTINGS}, sort_keys=False))
    return path


class Sides:
    """The tokenizer and both commands' datasets and batching, replayed here to count each side's tokens."""

    def __init__(self, model_dir: str) -> None:
        self.tok = load_tokenizer(Path(model_dir))
        self.msl, self.bs, self.seed = SETTINGS["max_seq_length"], SETTINGS["batch_size"], SETTINGS["seed"]

    def mlx_lm_set(self, records: list[dict]) -> CacheDataset:
        return CacheDataset(create_dataset(records, self.tok, SimpleNamespace(mask_prompt=True)))

    def mlx_ft_set(self, folder: Path) -> ft_batches.TokenizedChats:
        chats = ft_data.load_split(folder, "train")
        return ft_batches.TokenizedChats(chats, self.tok, True, self.msl, "train")

    def mlx_lm_batches(self, records: list[dict], n: int) -> list[dict]:
        """mlx_lm's first n training batches: width, real tokens, loss tokens (its default_loss mask)."""
        np.random.seed(self.seed)  # mlx_lm.lora.run seeds numpy's global state; iterate_batches draws from it
        out = []
        batches = mlx_lm_batches(self.mlx_lm_set(records), self.bs, self.msl, loop=True)
        for _, (batch, lengths) in zip(range(n), batches):
            off, length = np.array(lengths)[:, :1], np.array(lengths)[:, 1:]
            steps = np.arange(1, batch.shape[1])[None, :]
            loss = int(((steps >= off) & (steps <= length)).sum())
            out.append({"width": batch.shape[1], "real": int(length.sum()), "loss": loss, "rows": batch.shape[0]})
        return out

    def mlx_ft_batches(self, folder: Path, n: int) -> list[dict]:
        """mlx_ft's first n training batches: width and real tokens, from its own iterate_batches."""
        real: list[int] = []
        batches = ft_batches.iterate_batches(
            self.mlx_ft_set(folder),
            self.bs,
            self.msl,
            loop=True,
            seed=self.seed,
            on_batch=lambda lengths, _: real.append(sum(lengths)),
        )
        return [
            {"width": ids.shape[1], "real": real[k], "rows": ids.shape[0]}
            for k, (ids, *_rest) in zip(range(n), batches)
        ]


def equal_length_set(sides: Sides, dest: Path, count: int) -> int:
    """`count` arithmetic Q/A chats that all have the same token length on both sides; returns that length."""
    rng = random.Random(0)
    pool = []
    for _ in range(count * 6):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        pool.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                ]
            }
        )
    lm_set = sides.mlx_lm_set(pool)
    lengths = [len(lm_set[i][0]) for i in range(len(pool))]
    common = Counter(lengths).most_common(1)[0][0]
    keep = [r for r, n in zip(pool, lengths) if n == common][:count]
    if len(keep) < count:
        raise SystemExit(f"only {len(keep)} generated chats have {common} tokens; ask for fewer (--examples)")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    ours = sides.mlx_ft_set(dest)
    theirs = sides.mlx_lm_set(keep)
    if any(ours[i][0] != list(theirs[i][0]) for i in range(count)):
        raise SystemExit("mlx_ft and mlx_lm tokenize the equal-length chats differently: not the same work")
    return common


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds busy on the whole machine (/proc/stat; 0 where there is none) and used by this process and its
    finished children."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except OSError:
        busy = 0.0
    ours = sum(
        resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return busy, ours


def run_child(
    cmd: list[str], env: dict[str, str], pattern: re.Pattern, probe: Callable[[int], Any] | None = None
) -> dict:
    """Run one training command: the arrival time of each step line (seconds since start) and its match, every line
    it printed, its peak RSS (kB, its own: os.wait4's rusage), the share of the machine's CPU time that other
    processes took meanwhile, and `probe(pid)` called when the first step line arrives (the child still running)."""
    t0, (busy0, ours0) = time.perf_counter(), cpu_seconds()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    steps: dict[int, tuple[float, re.Match]] = {}
    lines: list[str] = []
    probed = None
    assert proc.stdout is not None
    for raw in proc.stdout:
        now = time.perf_counter() - t0
        for line in ANSI.sub("", raw.decode("utf-8", "replace")).split("\r"):
            lines.append(line.rstrip())
            if m := pattern.match(line.strip("\n")):
                steps[int(m.group(1))] = (now, m)
                if probe is not None and probed is None:
                    probed = probe(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)  # Popen.wait would drop the child's rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}):\n" + "\n".join(lines[-15:]))
    total, (busy1, ours1) = time.perf_counter() - t0, cpu_seconds()
    other = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (total * (os.cpu_count() or 1)) if busy1 else float("nan")
    return {
        "steps": steps,
        "total": total,
        "other": other,
        "lines": lines,
        "maxrss_kb": usage.ru_maxrss,
        "probe": probed,
    }


def time_pair(cfg: Path, data: Path, work: Path, iters: int, k: int) -> dict[str, dict]:
    """One run of each command on `data`; per side: wall time of steps 2..iters, start time, the child's counts."""
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    base.update(PYTHONUNBUFFERED="1", COLUMNS="120")
    lm_env = {**base, "LD_PRELOAD": fast_blas() or ""}  # mlx_lm cannot bind it itself
    common = ["-c", str(cfg), "--data", str(data), "--iters", str(iters)]
    out = {}
    for side in ("mlx_lm", "mlx_ft"):
        run = work / f"{side}-{k}"
        if side == "mlx_lm":
            cmd = [sys.executable, "-m", "mlx_lm", "lora", "--train", *common, "--adapter-path", str(run)]
            res = run_child(cmd, lm_env, MLX_LM_STEP, mapped)
        else:
            cmd = [sys.executable, "-m", "mlx_ft", "train", *common, "--adapter-path", str(run)]
            res = run_child(cmd, base, MLX_FT_STEP, mapped)
        steps = res["steps"]
        if sorted(steps) != list(range(1, iters + 1)):
            raise SystemExit(f"{side}: expected a line for each of steps 1..{iters}, got {sorted(steps)}")
        stamps = [steps[i][0] for i in range(1, iters + 1)]
        out[side] = {
            "window": stamps[-1] - stamps[0],
            "start": stamps[0],
            "other": res["other"],
            "step_times": np.diff(stamps).tolist(),
            "blas": res["probe"],  # what the child had mapped at step 1
        }
        if side == "mlx_lm":  # its running count of loss tokens, printed as e.g. 3.1k
            out[side]["loss_k"] = [float(steps[i][1].group(2)) for i in range(1, iters + 1)]
        else:
            rows = [r for r in read_metrics(run / "metrics.jsonl") if "tokens" in r]
            out[side]["tokens"] = [r["tokens"] for r in rows]
        shutil.rmtree(run, ignore_errors=True)
    print(f"  run {k + 1}: {same_blas({side: r['blas'] for side, r in out.items()})}")
    return out


def bench_dataset(
    name: str, about: str, data: Path, sides: Sides, cfg: Path, work: Path, steps: int, repeats: int
) -> None:
    iters = steps + 1
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
    epoch = len(records) // sides.bs  # the first `epoch` batches of either side are one pass over the data
    n = max(iters, epoch)
    plan = {"mlx_lm": sides.mlx_lm_batches(records, n), "mlx_ft": sides.mlx_ft_batches(data, n)}
    runs = {"mlx_lm": [], "mlx_ft": []}
    for k in range(repeats):
        for side, res in time_pair(cfg, data, work, iters, k).items():
            runs[side].append(res)
    # The replay must match what the children did, or the token counts below would be wrong.
    lm_loss = np.cumsum([b["loss"] for b in plan["mlx_lm"][:iters]]) / 1000
    for res in runs["mlx_lm"]:
        if np.abs(np.array(res["loss_k"]) - lm_loss).max() > 0.051:
            print(f"  warning: mlx_lm printed loss tokens {res['loss_k']}k, replay says {lm_loss.round(1).tolist()}k")
    ft_real = np.cumsum([b["real"] for b in plan["mlx_ft"][:iters]]).tolist()
    for res in runs["mlx_ft"]:
        if res["tokens"] != ft_real:
            print(f"  warning: mlx_ft metrics tokens {res['tokens']}, replay says {ft_real}")

    print(f"\n{name}: {len(records)} {about}; timed steps 2..{iters} of each run, {repeats} run(s) per command")
    print(
        f"  {'command':<13} {'s/step':>7} {'runs':>15} {'start s':>8} {'real tok/step':>14} {'fill':>5} "
        f"{'real tok/s':>11} {'time ratio':>11} {'tok/s ratio':>12} {'epoch fill':>11} {'other cpu':>10}"
    )
    figures = {}
    for side, label in (("mlx_lm", "mlx_lm lora"), ("mlx_ft", "mlx_ft train")):
        timed = plan[side][1:iters]
        real = sum(b["real"] for b in timed)
        fill, epoch_fill = (
            sum(b["real"] for b in bs) / sum(b["rows"] * b["width"] for b in bs) for bs in (timed, plan[side][:epoch])
        )
        per_run = [r["window"] / steps for r in runs[side]]
        s_step = sum(r["window"] for r in runs[side]) / (steps * repeats)
        figures[side] = (s_step, real / steps / s_step)
        ratios = " " * 24
        if side == "mlx_ft":
            t, v = s_step / figures["mlx_lm"][0], figures[side][1] / figures["mlx_lm"][1]
            ratios = f"{t:>10.3f}x {v:>11.3f}x"
        start = statistics.median(r["start"] for r in runs[side])
        print(
            f"  {label:<13} {s_step:>7.2f} {' '.join(f'{x:.2f}' for x in per_run):>15} {start:>8.1f} "
            f"{real / steps:>14.0f} {fill:>5.0%} {figures[side][1]:>11.1f} {ratios} {epoch_fill:>11.0%} "
            f"{max(r['other'] for r in runs[side]):>10.0%}"
        )
    t = figures["mlx_ft"][0] / figures["mlx_lm"][0]
    # Step times scatter by ~10% even on an idle machine: say how well the ratio is known.
    rel = [
        np.std(x, ddof=1) / np.mean(x) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
        for x in ([d for r in runs[side] for d in r["step_times"]] for side in ("mlx_lm", "mlx_ft"))
    ]
    se = t * np.hypot(*rel)
    print(
        f"  mlx_ft vs mlx_lm, time per step: {t - 1:+.1%} +- {f'{se:.1%}' if se == se else '?'} (standard error of "
        f"{steps * repeats} step times a side)"
    )
    print(
        "  same batches on both sides: the difference is our overhead (goal: at most +3%)"
        if name == "equal-length"
        else "  different batches on the two sides: compare real tok/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model source (mlx_ft alias, folder, repo id)")
    ap.add_argument(
        "--steps", type=int, default=4, help="timed steps per equal-length run (each run trains one more, untimed)"
    )
    ap.add_argument(
        "--fish-steps", type=int, default=2, help="timed steps per fish_care run (~8x the work of an equal-length step)"
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs of each command per dataset, alternating")
    ap.add_argument("--examples", type=int, default=64, help="size of the equal-length dataset")
    ap.add_argument(
        "--datasets", nargs="+", choices=["equal-length", "fish_care"], default=["equal-length", "fish_care"]
    )
    args = ap.parse_args()
    t0 = time.time()
    model_dir = models.resolve(args.model)
    sides = Sides(model_dir)
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"model: {model_dir}\nBLAS: {fast_blas()} (mlx_ft binds it, mlx_lm gets it by LD_PRELOAD)")
    with tempfile.TemporaryDirectory(prefix="mlx_ft-bench-") as tmp:
        work = Path(tmp)
        cfg = write_config(work / "config.yaml", model_dir)
        for name in args.datasets:
            if name == "equal-length":
                data = work / "equal-length"
                n = equal_length_set(sides, data, args.examples)
                about = f"chats of exactly {n} tokens (identical ids on both sides)"
            else:
                data = train_only_copy(REPO / "data" / "fish_care", work / "fish_care")
                about = "chats as shipped"
            steps = args.steps if name == "equal-length" else args.fish_steps
            bench_dataset(name, about, data, sides, cfg, work, steps, args.repeats)
    load = os.getloadavg()
    print(f"\n({time.time() - t0:.0f} s; load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")


if __name__ == "__main__":
    main()
