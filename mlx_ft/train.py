"""Training: a thin layer over mlx_lm's tuner.

We call `mlx_lm.tuner.trainer.train` with three things of our own:
- a dataset of (ids, loss mask) from `chat_template.training_tokens`, so the loss covers every assistant turn and no
  system/user text (mlx-lm's `mask_prompt` keeps only the last message);
- a batch iterator that sorts by *token* length (mlx-lm sorts chat records by `len()` of the JSON object, i.e. not at
  all, so batches are padded far more than needed);
- a callback that writes `metrics.jsonl` in the run folder.
The adapter is written in mlx-lm's format, so `mlx_lm.load(model, adapter_path=run)` accepts the run folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import TrainingArgs
from mlx_lm.tuner.trainer import train as mlx_lm_train
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers, print_trainable_parameters
from mlx_lm.utils import load as mlx_lm_load
from tqdm import tqdm

from mlx_ft import chat_template, config as config_mod, data, models
from mlx_ft.atomic import write_json, write_text
from mlx_ft.errors import UserError
from mlx_ft.resources import resource

PAD_TO = 32  # pad batch lengths to a multiple of this: few distinct shapes, so mx.compile retraces rarely


class TokenizedChats:
    """Conversations as (ids, mask) pairs, tokenized once up front."""

    def __init__(self, conversations: Sequence[list[dict[str, str]]], tokenizer: Any, mask_prompt: bool,
                 desc: str) -> None:
        self.items: list[tuple[list[int], list[int]]] = [
            chat_template.training_tokens(tokenizer, c, mask_prompt)
            for c in tqdm(conversations, desc=f"tokenizing {desc}", unit="ex", leave=False, disable=None)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[list[int], list[int]]:
        return self.items[idx]


def masked_loss(model: nn.Module, batch: mx.array, weights: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the positions whose target token is marked for learning."""
    logits = model(batch[:, :-1])
    w = weights[:, 1:].astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, batch[:, 1:]) * w
    ntoks = w.sum()
    return ce.astype(mx.float32).sum() / mx.maximum(ntoks, 1), ntoks


def iterate_batches(dataset: TokenizedChats, batch_size: int, max_seq_length: int, loop: bool = False,
                    seed: int | None = None, comm_group: Any = None) -> Iterator[tuple[mx.array, mx.array]]:
    """Batches of similar token length in a seeded random order; signature of mlx_lm's iterate_batches."""
    rank, world = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
    if batch_size % world:
        raise UserError(f"batch_size {batch_size} must be divisible by the number of workers ({world})")
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i][0]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if loop:  # training: only full batches, so every step sees batch_size examples
        batches = [b for b in batches if len(b) == batch_size]
    if not batches:
        raise UserError(f"the dataset has {len(dataset)} examples, fewer than batch_size={batch_size}")
    rng = np.random.default_rng(seed)
    while True:
        for b in rng.permutation(len(batches)) if loop else range(len(batches)):
            rows = [dataset[j] for j in batches[b][rank::world]]
            longest = min(max(len(ids) for ids, _ in rows), max_seq_length + 1)
            width = min(PAD_TO * -(-longest // PAD_TO) + 1, max_seq_length + 1)
            ids_arr = np.zeros((len(rows), width), np.int32)
            mask_arr = np.zeros((len(rows), width), np.int8)
            for r, (ids, mask) in enumerate(rows):
                n = min(len(ids), width)
                ids_arr[r, :n] = ids[:n]
                mask_arr[r, :n] = mask[:n]
            yield mx.array(ids_arr), mx.array(mask_arr)
        if not loop:
            return


class MetricsLog(TrainingCallback):
    """Appends one JSON line per report to metrics.jsonl (whole lines only, so a reader never sees half of one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.time()
        self.last_step = 0

    def _write(self, row: dict[str, Any]) -> None:
        row = {"time": round(time.time() - self.t0, 3), **row}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_loss_report(self, info: dict) -> None:
        self.last_step = info["iteration"]
        self._write({"step": info["iteration"], "loss": info["train_loss"], "lr": info["learning_rate"],
                     "tokens_per_s": info["tokens_per_second"], "trained_tokens": info["trained_tokens"],
                     "peak_memory_gb": info["peak_memory"]})

    def on_val_loss_report(self, info: dict) -> None:
        self._write({"step": info["iteration"], "val_loss": info["val_loss"], "val_time": info["val_time"]})


def _data_dir(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists() and not path.is_absolute():
        try:
            path = resource(spec)  # the shipped sample data, when run outside a checkout
        except FileNotFoundError:
            pass
    if not (path / "train.jsonl").is_file():
        raise UserError(f"{path}: no train.jsonl here; make one with `python -m mlx_ft prepare FILE --out {path}`")
    return path


def _optimizer(cfg: config_mod.TrainConfig) -> optim.Optimizer:
    lr = build_schedule(cfg.lr_schedule) if cfg.lr_schedule else cfg.learning_rate
    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor,
               "muon": optim.Muon}
    return classes[cfg.optimizer](learning_rate=lr, **cfg.optimizer_config.get(cfg.optimizer, {}))


def _run_dir(cfg: config_mod.TrainConfig) -> Path:
    run = Path(cfg.adapter_path) if cfg.adapter_path else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if run.exists() and any(run.iterdir()):
        raise UserError(f"{run}: run folder exists and is not empty; choose another --adapter-path")
    run.mkdir(parents=True, exist_ok=True)
    return run


def save_adapter(model: nn.Module, run: Path) -> Path:
    dest = run / "adapters.safetensors"
    tmp = run / ".adapters.partial.safetensors"  # mlx appends .safetensors to other names
    mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())))
    os.replace(tmp, dest)
    return dest


def train(cfg: config_mod.TrainConfig) -> Path:
    """Train as `cfg` says and return the run folder, which holds the adapter, its config and the metrics."""
    data_dir = _data_dir(cfg.data)
    train_chats = data.load_split(data_dir, "train")
    valid_chats = data.load_split(data_dir, "valid") if (data_dir / "valid.jsonl").is_file() else []
    if len(train_chats) < cfg.batch_size:
        raise UserError(f"{data_dir}/train.jsonl has {len(train_chats)} examples, fewer than batch_size "
                        f"{cfg.batch_size}; lower --batch-size")

    model_path = models.resolve(cfg.model)
    print(f"mlx_ft: loading {model_path}", file=sys.stderr)
    model, tokenizer = mlx_lm_load(model_path)
    train_set = TokenizedChats(train_chats, tokenizer, cfg.mask_prompt, "train")
    valid_set = TokenizedChats(valid_chats, tokenizer, cfg.mask_prompt, "valid") if valid_chats else None
    too_long = sum(len(ids) > cfg.max_seq_length for ids, _ in train_set.items)
    if too_long:
        print(f"mlx_ft: {too_long} of {len(train_set)} training examples are longer than max_seq_length "
              f"{cfg.max_seq_length} and will be truncated", file=sys.stderr)

    n_layers = len(model.layers)
    if cfg.num_layers > n_layers:
        raise UserError(f"num_layers {cfg.num_layers} is more than the model's {n_layers} layers")
    mx.random.seed(cfg.seed)
    model.freeze()
    if cfg.fine_tune_type == "full":
        for layer in model.layers[-cfg.num_layers if cfg.num_layers > 0 else 0 :]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(model, cfg.num_layers, cfg.lora_parameters, use_dora=cfg.fine_tune_type == "dora")
    print_trainable_parameters(model)

    # The run folder appears only once the model and data have loaded, so a bad input leaves nothing behind.
    run = _run_dir(cfg)
    cfg.adapter_path = str(run)
    write_text(run / "config.yaml", config_mod.dump(cfg))
    # mlx-lm's adapter_config.json keys, so mlx_lm.load(..., adapter_path=run) and mlx_lm fuse work on the run.
    write_json(run / "adapter_config.json", {**cfg.to_dict(), "model": model_path, "base_model": cfg.model})
    (run / "checkpoints").mkdir(exist_ok=True)
    args = TrainingArgs(
        batch_size=cfg.batch_size,
        iters=cfg.iters,
        val_batches=cfg.val_batches,
        steps_per_report=cfg.steps_per_report,
        steps_per_eval=cfg.steps_per_eval,
        steps_per_save=cfg.save_every,
        max_seq_length=cfg.max_seq_length,
        adapter_file=str(run / "checkpoints" / "adapters.safetensors"),
        grad_checkpoint=cfg.grad_checkpoint,
        grad_accumulation_steps=cfg.grad_accumulation_steps,
    )
    log = MetricsLog(run / "metrics.jsonl")

    def batches(dataset: TokenizedChats, batch_size: int, max_seq_length: int, loop: bool = False,
                comm_group: Any = None) -> Iterator[tuple[mx.array, mx.array]]:
        return iterate_batches(dataset, batch_size, max_seq_length, loop, seed=cfg.seed, comm_group=comm_group)

    try:
        mlx_lm_train(model=model, optimizer=_optimizer(cfg), train_dataset=train_set, val_dataset=valid_set,
                     args=args, loss=masked_loss, iterate_batches=batches, training_callback=log)
    except KeyboardInterrupt:
        save_adapter(model, run)
        print(f"\nmlx_ft: interrupted after step {log.last_step}; adapter so far saved in {run}", file=sys.stderr)
        raise
    save_adapter(model, run)
    return run
