"""Training speed and memory of `python -m mlx_ft train` against the usual PyTorch recipe, transformers' `Trainer` with
a `peft` LoRA on torch's CPU build: real tokens/s, peak RSS and final loss of each, and their ratios (goal: mlx_ft at
least 2x PEFT's tokens/s at no higher peak RSS).

Same work on both sides: the same model folder (default the built-in SmolLM2-135M-Instruct as mlx_ft imports it:
float32 weights, tied embeddings; both load it in float32), the same data (data/fish_care/train.jsonl, train split
only, so neither side evaluates), LoRA rank 8 with PEFT's lora_alpha = mlx_lm's scale x rank (20 x 8 = 160: mlx_lm
multiplies the update by `scale`, PEFT by lora_alpha / r), dropout 0, on the same seven projections (q/k/v/o_proj,
gate/up/down_proj: mlx_lm's default for llama, written out as `lora_parameters.keys`) of the same last 8 of 30 layers
(PEFT's `layers_to_transform`), checked by equal trainable-parameter counts; batch 4, max_seq_length 512, seed 0,
Adam lr 2e-4 constant with no warmup and no gradient clipping (HF's defaults clip at 1.0 and decay the rate:
both turned off; mlx's Adam is told `bias_correction: true`, which torch's AdamW always does; AdamW's weight decay
is 0, so both are Adam), N + 1 steps (N = --steps).

Same tokens and the same loss: this process tokenizes the chats with mlx_ft's own `batches.TokenizedChats` (what
`mlx_ft train` trains on: ids of the chat template's rendering, and a 0/1 weight per id that is 1 on every assistant
turn, end-of-turn marker included, and 0 on system/user text) and hands those ids and weights to the PEFT side,
whose labels are the ids with -100 where the weight is 0. The PEFT child first checks that its own tokenizer's
`apply_chat_template` gives exactly those ids for every example, and that the learned tokens decode to the assistant
turns' text (whitespace and special tokens aside). Both losses are the mean cross-entropy over the learned tokens of
the batch. The batches differ, by design: mlx_ft sorts the examples by token length and pads each batch to a
multiple of 32 (+1), so its batches are nearly all real tokens (its advantage, kept); the Trainer draws random
batches (`train_sampling_strategy="random"`: no length grouping; a short last batch is dropped, as mlx_ft does) and
DataCollatorForSeq2Seq pads each to its longest example, with an attention mask. So the final losses are a sanity
check (same data, similar values), not equal, and the fair speed figure is real tokens per second: `real tok/s`
counts every token of every example in the timed batches (its ids, padding excluded), the same way on both sides
(mlx_ft's own metrics.jsonl `tokens`, checked against a replay of its batching here; the PEFT child counts in its
collator). `fill` = real tokens / padded positions of the timed batches, `padded tok/s` = real tok/s / fill (raw
throughput on the padded shape).

Timing as in bench/train_overhead.py: each side runs as a child process, alternating (mlx_ft, peft, mlx_ft, peft,
...; --repeats pairs). This process stamps each line as it arrives; both children print one line per step (mlx_ft
its `step k/n loss ...` progress line, the PEFT child a line from a TrainerCallback's on_log, logging every step),
and the time from step 1's line to step N + 1's is the wall time of N whole steps. Loading the model, tokenizing, and
the first step (MLX compiles it; torch warms its allocator) fall outside; they show in `start s` (process start to
the end of step 1, median of the runs). `peak RSS` is each child's own ru_maxrss (os.wait4), the whole process:
weights, tokenizer, Python and framework. `final loss` is the loss of step N + 1 (mlx_ft's metrics.jsonl; the
Trainer's logged loss). Threads: both get --threads (default 2 = this machine's cores): mlx_ft multiplies on the
OpenBLAS that `import mlx_ft` binds (OPENBLAS_NUM_THREADS), torch on its MKL with OpenMP (torch.set_num_threads,
OMP_NUM_THREADS); what each child has mapped and how many threads it runs is read from /proc at its first step
(mlx_ft's maps show the system libopenblasp it multiplies on, MLX's bundled reference libblas, loaded but bypassed,
and numpy's own libscipy_openblas64_; torch links MKL statically, so the PEFT child names its BLAS itself).
`other cpu`: the largest share of the machine's CPU time that processes outside this benchmark took during a run;
above a few percent the figures are disturbed by another job.

The PEFT side runs in its own virtual environment (--peft-venv, default bench/.venv-peft, made on first use with
`pip install torch==2.13.0 transformers==5.23.0 peft==0.21.2 accelerate==1.15.0`: torch's CPU build, which this
machine keeps on disk; the project's dependencies stay free of it). This same file is the PEFT child
(`--peft-child SPEC`); it imports only torch, transformers and peft.

--profile adds, for each side, the split of one step into forward, backward (forward + backward less a forward) and
optimizer update, on one typical batch that both sides get with the same rows and width (the 4 examples around the
median token length), median of 3 after a warm-up, in separate children after the runs. MLX's step there is not
compiled (training's is), so its sum can run a little above the training s/step.

Usage: python bench/train_vs_peft.py [--steps 20] [--repeats 2] [--threads 2] [--profile] [--peft-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PEFT_CHILD = "--peft-child"
if sys.argv[1:2] != [PEFT_CHILD]:  # the parent, in the project's venv; the PEFT child has no mlx
    import mlx_ft  # noqa: F401 -- binds MLX to OpenBLAS before anything imports mlx.core
    from mlx_ft import data as ft_data
    from mlx_ft import models
    from mlx_ft.training.batches import PAD_TO
    from mlx_ft.training.loss_plot import read_metrics

    import yaml

    from blas_sides import fast_blas, mapped, same_blas
    from train_overhead import MLX_FT_STEP, REPO, SETTINGS, Sides, run_child, train_only_copy

PEFT_PINS = ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2", "accelerate==1.15.0"]
LORA_KEYS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]  # mlx_lm's default for llama: every Linear of a block
PEFT_STEP = re.compile(r"^step (\d+)/\d+ loss (\S+) tokens (\d+) rows (\d+) width (\d+)$")
TRAINABLE = re.compile(r"Trainable parameters: [\d.]+% \(([\d.]+)M/")


# ------------------------------------------------------------------------------------------------ the PEFT child


def peft_child(spec_path: str) -> None:
    """Train as the spec says with transformers' Trainer and a peft LoRA; one line per step on stdout."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import peft
    import transformers
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    msl = spec["max_seq_length"]
    tok = AutoTokenizer.from_pretrained(spec["model"])
    rows = [json.loads(line) for line in Path(spec["rows"]).read_text().splitlines()]
    examples = []
    for k, row in enumerate(rows):
        ids = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"][: msl + 1]
        if ids != row["ids"]:
            raise SystemExit(f"example {k}: apply_chat_template gives other ids than mlx_ft trains on")
        learned = tok.decode([i for i, w in zip(ids, row["mask"]) if w], skip_special_tokens=True)
        answers = "".join(m["content"] for m in row["messages"] if m["role"] == "assistant")
        if "".join(learned.split()) != "".join(answers.split()):
            raise SystemExit(f"example {k}: the learned tokens are not the assistant turns")
        examples.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [i if w else -100 for i, w in zip(ids, row["mask"])],
            }
        )
    print(f"peft: {len(examples)} examples, ids equal to mlx_ft's, labels on the assistant turns", flush=True)

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    lora = peft.LoraConfig(
        r=spec["rank"],
        lora_alpha=spec["scale"] * spec["rank"],
        lora_dropout=0.0,
        bias="none",
        target_modules=[k.split(".")[-1] for k in spec["keys"]],
        layers_to_transform=list(range(n_layers - spec["num_layers"], n_layers)),
        layers_pattern="layers",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"peft: trainable {trainable} parameters; tied embeddings: "
        f"{model.get_output_embeddings().weight is model.get_input_embeddings().weight}",
        flush=True,
    )

    pad = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    real: list[int] = []
    shapes: list[tuple[int, int]] = []

    def collate(features: list[dict]) -> dict:
        real.append(sum(len(f["input_ids"]) for f in features))  # batches are drawn in order, one at a time
        batch = pad(features)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    iters = spec["iters"]

    class Lines(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            opt = getattr(optimizer, "optimizer", optimizer)
            groups = [g for g in opt.param_groups if g["params"]]
            about = {k: sorted({str(g[k]) for g in groups}) for k in ("lr", "betas", "eps", "weight_decay", "fused")}
            print(f"peft: optimizer {type(opt).__name__} {about}", flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                k = state.global_step
                rows_, width = shapes[k - 1]
                print(
                    f"step {k}/{iters} loss {logs['loss']} tokens {sum(real[:k])} rows {rows_} width {width}",
                    flush=True,
                )

    args = TrainingArguments(
        output_dir=spec["out"],
        max_steps=iters,
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        seed=spec["seed"],
        data_seed=spec["seed"],
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_drop_last=True,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        train_sampling_strategy="random",
        gradient_checkpointing=False,
    )
    print(
        f"peft: torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"{'MKL' if torch.backends.mkl.is_available() else 'no MKL'}, "
        f"{'OpenMP' if torch.backends.openmp.is_available() else 'no OpenMP'}), transformers "
        f"{transformers.__version__}, peft {peft.__version__}, attention {model.config._attn_implementation}, "
        f"optim {args.optim}",
        flush=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[Lines()])
    trainer.train()
    if spec.get("profile"):
        prof = profile_torch(model, trainer.optimizer, examples, spec["profile"], spec["profile_width"])
        print("profile " + json.dumps(prof), flush=True)


def profile_torch(model: Any, optimizer: Any, examples: list[dict], rows: list[int], width: int) -> dict:
    """Seconds of forward, backward and optimizer step on one batch padded to `width` positions (median of three,
    after a warm-up round)."""
    import torch

    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        n = min(len(examples[i]["input_ids"]), width)
        ids[r, :n] = torch.tensor(examples[i]["input_ids"][:n])
        labels[r, :n] = torch.tensor(examples[i]["labels"][:n])
        attention[r, :n] = 1
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    times: dict[str, list[float]] = {"forward": [], "backward": [], "update": []}
    for k in range(4):
        t0 = time.perf_counter()
        loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        if k:  # the first round warms up
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()} | {"shape": list(ids.shape)}


# --------------------------------------------------------------------------------------------- the mlx profile

MLX_PROFILE = r"""
import json, statistics, sys, time
import mlx_ft  # binds MLX to OpenBLAS before mlx.core loads
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx_ft import config
from mlx_ft.models import adapters
from mlx_ft.training import run as training_run
from mlx_ft.models.loader import load_model
from mlx_ft.training.loss import learned_positions, masked_loss

spec = json.loads(sys.argv[1])
cfg = config.build(spec["config"])
model, tokenizer = load_model(spec["model"], spec["model"])
mx.random.seed(cfg.seed)
adapters.attach(model, cfg)
opt = training_run._optimizer(cfg)
rows = [json.loads(line) for line in open(spec["rows"])]
chosen = [rows[i] for i in spec["rows_idx"]]
width = spec["width"]
ids = np.zeros((len(chosen), width), np.int32)
mask = np.zeros((len(chosen), width), np.int8)
for r, row in enumerate(chosen):
    n = min(len(row["ids"]), width)
    ids[r, :n], mask[r, :n] = row["ids"][:n], row["mask"][:n]
batch = (mx.array(ids), mx.array(mask), mx.array(float(mask[:, 1:].sum())), mx.array(learned_positions(mask)))
ids = batch[0]
grad_fn = nn.value_and_grad(model, masked_loss)
times = {"forward": [], "backward": [], "update": []}
for k in range(4):
    t0 = time.perf_counter()
    loss, _ = masked_loss(model, *batch)
    mx.eval(loss)
    t1 = time.perf_counter()
    (loss, _), grads = grad_fn(model, *batch)
    mx.eval(loss, grads)
    t2 = time.perf_counter()
    opt.update(model, grads)
    mx.eval(model.trainable_parameters(), opt.state)
    t3 = time.perf_counter()
    if k:
        times["forward"].append(t1 - t0)
        times["backward"].append((t2 - t1) - (t1 - t0))  # forward + backward, less a forward
        times["update"].append(t3 - t2)
print("profile " + json.dumps({n: statistics.median(v) for n, v in times.items()} | {"shape": list(ids.shape)}))
"""


# --------------------------------------------------------------------------------------------------- the parent


def ensure_peft_venv(venv: Path) -> Path:
    """The PEFT side's python, making its virtual environment on first use."""
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"making {venv} with {' '.join(PEFT_PINS)} (a couple of minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEFT_PINS], check=True)
    return python


def probe(pid: int) -> dict:
    """What a running child has mapped of BLAS/threading libraries, and how many threads it runs."""
    threads = "?"
    try:
        threads = re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        pass
    return {"libs": mapped(pid) or [], "threads": threads}


def write_inputs(sides: Sides, data: Path, work: Path, model_dir: str, args: argparse.Namespace) -> dict:
    """mlx_ft's training rows for the PEFT side, mlx_ft's config, and the PEFT child's spec."""
    chats = ft_data.load_split(data, "train")
    train_set = sides.mlx_ft_set(data)
    if len(train_set) != len(chats):
        raise SystemExit(f"mlx_ft left out {len(chats) - len(train_set)} examples: rows would not line up")
    rows = work / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"messages": ex.messages, "ids": ids, "mask": mask}, ensure_ascii=False) + "\n"
            for ex, (ids, mask) in zip(chats, train_set.items)
        )
    )
    lora = {**SETTINGS["lora_parameters"], "keys": LORA_KEYS}
    cfg = {
        "model": model_dir,
        "train": True,
        **SETTINGS,
        "lora_parameters": lora,
        "optimizer_config": {"adam": {"bias_correction": True}},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    spec = {
        "model": model_dir,
        "rows": str(rows),
        "threads": args.threads,
        "iters": args.steps + 1,
        "rank": lora["rank"],
        "scale": lora["scale"],
        "keys": LORA_KEYS,
        "num_layers": SETTINGS["num_layers"],
        **{k: SETTINGS[k] for k in ("batch_size", "learning_rate", "max_seq_length", "seed")},
    }
    return {"rows": rows, "config": cfg, "spec": spec}


def run_mlx(work: Path, data: Path, iters: int, env: dict, k: int) -> dict:
    run = work / f"mlx_ft-{k}"
    cmd = [
        sys.executable,
        "-m",
        "mlx_ft",
        "train",
        "-c",
        str(work / "config.yaml"),
        "--data",
        str(data),
        "--iters",
        str(iters),
        "--adapter-path",
        str(run),
    ]
    res = run_child(cmd, env, MLX_FT_STEP, probe)
    metrics = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    trainable = [float(m.group(1)) for line in res["lines"] if (m := TRAINABLE.search(line))]
    warnings = [line for line in res["lines"] if "warning" in line.lower()]
    return {
        **res,
        "tokens": [metrics[i]["tokens"] for i in range(1, iters + 1)],
        "losses": [metrics[i]["loss"] for i in range(1, iters + 1)],
        "trainable_m": trainable[0] if trainable else None,
        "notes": warnings,
    }


def run_peft(python: Path, work: Path, spec: dict, env: dict, k: int) -> dict:
    path = work / f"peft-{k}.json"
    path.write_text(json.dumps({**spec, "out": str(work / f"peft-{k}")}))
    cmd = [str(python), str(Path(__file__).resolve()), PEFT_CHILD, str(path)]
    res = run_child(cmd, env, PEFT_STEP, probe)
    steps = res["steps"]
    iters = spec["iters"]
    notes = [line for line in res["lines"] if line.startswith("peft: ")]
    trainable = [int(m.group(1)) for line in notes if (m := re.search(r"trainable (\d+)", line))]
    return {
        **res,
        "tokens": [int(steps[i][1].group(3)) for i in range(1, iters + 1)],
        "losses": [float(steps[i][1].group(2)) for i in range(1, iters + 1)],
        "shapes": [(int(steps[i][1].group(4)), int(steps[i][1].group(5))) for i in range(1, iters + 1)],
        "trainable": trainable[0] if trainable else None,
        "notes": notes,
    }


def summarize(side: str, runs: list[dict], shapes: list[tuple[int, int]], steps: int) -> dict:
    """Pooled figures of one side's runs (timed steps 2..N+1)."""
    windows = []
    for r in runs:
        if sorted(r["steps"]) != list(range(1, steps + 2)):
            raise SystemExit(f"{side}: expected a line for each of steps 1..{steps + 1}, got {sorted(r['steps'])}")
        stamps = [r["steps"][i][0] for i in range(1, steps + 2)]
        windows.append((stamps[-1] - stamps[0], stamps[0]))
    real = runs[0]["tokens"][-1] - runs[0]["tokens"][0]  # every run trains the same batches (same seed)
    for r in runs[1:]:
        if r["tokens"] != runs[0]["tokens"]:
            print(f"  warning: {side} runs saw different token counts: {r['tokens']} vs {runs[0]['tokens']}")
    padded = sum(rows * width for rows, width in shapes[1:])
    total = sum(w for w, _ in windows)
    tok_s = real * len(runs) / total
    return {
        "tok_s": tok_s,
        "s_step": total / (steps * len(runs)),
        "runs": [w / steps for w, _ in windows],
        "rss_mb": max(r["maxrss_kb"] for r in runs) * 1024 / 1e6,
        "losses": [r["losses"][-1] for r in runs],
        "start": statistics.median(s for _, s in windows),
        "fill": real / padded,
        "padded_tok_s": tok_s * padded / real,
        "real_step": real / steps,
        "other": max(r["other"] for r in runs),
    }


def main() -> None:
    if sys.argv[1:2] == [PEFT_CHILD]:
        peft_child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model source (mlx_ft alias or HF folder)")
    ap.add_argument("--data", default=str(REPO / "data" / "fish_care"), help="folder with train.jsonl (chats)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (each run trains one more, untimed)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    ap.add_argument("--threads", type=int, default=2, help="threads for each side's math library")
    ap.add_argument(
        "--peft-venv",
        default=str(REPO / "bench" / ".venv-peft"),
        help="virtual environment of the PEFT side (made on first use)",
    )
    ap.add_argument("--profile", action="store_true", help="also split one step into forward/backward/update")
    args = ap.parse_args()
    t0 = time.time()
    python = ensure_peft_venv(Path(args.peft_venv))
    model_dir = models.resolve(args.model)  # imports the built-in model on first use
    sides = Sides(model_dir)
    iters = args.steps + 1
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"model: {model_dir}\nmlx_ft BLAS: {fast_blas()} (bound by import mlx_ft); threads {args.threads} a side")
    thread_vars = {"mlx_ft": ["OPENBLAS_NUM_THREADS"], "peft": ["OMP_NUM_THREADS", "MKL_NUM_THREADS"]}
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and k not in sum(thread_vars.values(), [])}
    base.update(PYTHONUNBUFFERED="1", COLUMNS="120")
    envs = {side: {**base, **dict.fromkeys(names, str(args.threads))} for side, names in thread_vars.items()}
    with tempfile.TemporaryDirectory(prefix="mlx_ft-peft-") as tmp:
        work = Path(tmp)
        data = train_only_copy(Path(args.data), work / "data")
        inputs = write_inputs(sides, data, work, model_dir, args)
        n_examples = len(inputs["rows"].read_text().splitlines())
        plan = sides.mlx_ft_batches(data, iters)  # mlx_ft's batches replayed here: widths, real tokens
        runs: dict[str, list[dict]] = {"mlx_ft": [], "peft": []}
        for k in range(args.repeats):
            for side in runs:
                print(f"  run {k + 1}/{args.repeats}: {side} ...", flush=True)
                if side == "mlx_ft":
                    runs[side].append(run_mlx(work, data, iters, envs[side], k))
                else:
                    runs[side].append(run_peft(python, work, inputs["spec"], envs[side], k))
        mlx_real = [sum(b["real"] for b in plan[: i + 1]) for i in range(iters)]
        for r in runs["mlx_ft"]:
            if r["tokens"] != mlx_real:
                print(f"  warning: mlx_ft metrics tokens {r['tokens']}, replay says {mlx_real}")
        profiles = profile_both(python, work, inputs, envs, model_dir) if args.profile else {}

    mlx_shapes = [(b["rows"], b["width"]) for b in plan]
    fig = {
        "mlx_ft": summarize("mlx_ft", runs["mlx_ft"], mlx_shapes, args.steps),
        "peft": summarize("peft", runs["peft"], runs["peft"][0]["shapes"], args.steps),
    }
    m, p = runs["mlx_ft"][0], runs["peft"][0]
    print(
        f"\ndata: {n_examples} chats of {args.data} (same ids and loss mask on both sides); batch 4, LoRA rank 8 "
        f"on {len(LORA_KEYS)} projections of the last {SETTINGS['num_layers']} layers"
    )
    print(f"trainable parameters: mlx_ft {m['trainable_m']}M, peft {p['trainable'] / 1e6:.3f}M")
    if m["trainable_m"] is None or abs(m["trainable_m"] - p["trainable"] / 1e6) > 0.0005:
        print("  warning: the two sides train different numbers of LoRA parameters: not the same adapters")
    for note in p["notes"]:
        print(f"  {note}")
    for note in sorted({n for r in runs["mlx_ft"] for n in r["notes"]}):
        print(f"  mlx_ft: {note}")
    for side, r in (("mlx_ft", m), ("peft", p)):
        print(f"  {side} child at step 1: {r['probe']['threads']} threads; maps {', '.join(r['probe']['libs'])}")
    same_blas({"mlx_ft": m["probe"]["libs"]})  # the PEFT side multiplies on torch's own MKL by design
    print(f"\ntimed steps 2..{iters} of each run, {args.repeats} run(s) a side, alternating")
    print(
        f"  {'side':<13} {'real tok/s':>10} {'s/step':>7} {'runs':>15} {'peak RSS MB':>12} {'final loss':>11} "
        f"{'start s':>8} {'real tok/step':>14} {'fill':>5} {'padded tok/s':>13} {'other cpu':>10}"
    )
    for side, label in (("mlx_ft", "mlx_ft train"), ("peft", "HF+peft")):
        f = fig[side]
        print(
            f"  {label:<13} {f['tok_s']:>10.1f} {f['s_step']:>7.2f} {' '.join(f'{x:.2f}' for x in f['runs']):>15} "
            f"{f['rss_mb']:>12.0f} {' '.join(f'{x:.3f}' for x in f['losses']):>11} {f['start']:>8.1f} "
            f"{f['real_step']:>14.0f} {f['fill']:>5.0%} {f['padded_tok_s']:>13.1f} {f['other']:>10.0%}"
        )
    speed = fig["mlx_ft"]["tok_s"] / fig["peft"]["tok_s"]
    raw = fig["mlx_ft"]["padded_tok_s"] / fig["peft"]["padded_tok_s"]
    rss = fig["mlx_ft"]["rss_mb"] / fig["peft"]["rss_mb"]
    print(
        f"\n  mlx_ft / peft: real tok/s {speed:.2f}x (padded tok/s {raw:.2f}x: the rest is mlx_ft's length "
        f"sorting), peak RSS {rss:.2f}x"
    )
    met = speed >= 2 and rss <= 1
    print(f"  goal (>= 2x real tok/s at <= peak RSS): {'met' if met else 'NOT met'}")
    for side, prof in profiles.items():
        total = prof["forward"] + prof["backward"] + prof["update"]
        print(
            f"  profile {side:<7} batch {prof['shape'][0]}x{prof['shape'][1]}: forward {prof['forward']:.2f} s, "
            f"backward {prof['backward']:.2f} s, update {prof['update']:.3f} s (sum {total:.2f} s)"
        )
    load = os.getloadavg()
    print(f"\n({time.time() - t0:.0f} s; load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")


def profile_both(python: Path, work: Path, inputs: dict, envs: dict[str, dict], model_dir: str) -> dict:
    """Forward/backward/update seconds of each side on one typical batch: the batch_size examples around the median
    token length, padded to the width mlx_ft gives them (the PEFT side reads as many positions as mlx_ft's model
    does: width - 1)."""
    rows = [json.loads(line) for line in inputs["rows"].read_text().splitlines()]
    by_length = sorted(range(len(rows)), key=lambda i: len(rows[i]["ids"]))
    bs = SETTINGS["batch_size"]
    idx = by_length[len(rows) // 2 - bs // 2 :][:bs]
    longest = max(len(rows[i]["ids"]) for i in idx)
    width = min(PAD_TO * -(-longest // PAD_TO) + 1, SETTINGS["max_seq_length"] + 1)
    spec = {
        "config": {k: v for k, v in inputs["config"].items() if k != "train"},
        "model": model_dir,
        "rows": str(inputs["rows"]),
        "rows_idx": idx,
        "width": width,
    }
    out = {
        "mlx_ft": _profile_line(
            subprocess.run(
                [sys.executable, "-c", MLX_PROFILE, json.dumps(spec)],
                cwd=REPO,
                capture_output=True,
                text=True,
                env=envs["mlx_ft"],
            ),
            "mlx_ft",
        )
    }
    path = work / "peft-profile.json"
    path.write_text(
        json.dumps(
            {
                **inputs["spec"],
                "iters": 1,
                "out": str(work / "peft-profile"),
                "profile": idx,
                "profile_width": width - 1,
            }
        )
    )
    proc = subprocess.run(
        [str(python), str(Path(__file__).resolve()), PEFT_CHILD, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=envs["peft"],
    )
    out["peft"] = _profile_line(proc, "peft")
    return out


def _profile_line(proc: subprocess.CompletedProcess, side: str) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith("profile "):
            return json.loads(line[len("profile ") :])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    raise SystemExit(f"{side} profile failed (exit {proc.returncode}):\n{tail}")


if __name__ == "__main__":
    main()
