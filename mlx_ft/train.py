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
from mlx_ft.resources import local_or_shipped

PAD_TO = 32  # pad batch lengths to a multiple of this: few distinct shapes, so mx.compile retraces rarely


class TokenizedChats:
    """Conversations as (ids, mask) pairs, tokenized once up front.

    Ids are cut to max_seq_length + 1 (the model reads max_seq_length of them and predicts the next); an example
    whose answer lies wholly past that cut would teach nothing, so it is left out and counted.
    """

    def __init__(self, examples: Sequence[data.Example], tokenizer: Any, mask_prompt: bool, max_seq_length: int,
                 desc: str) -> None:
        self.items: list[tuple[list[int], list[int]]] = []
        self.truncated = 0
        self.dropped = 0
        problems = []
        for ex in tqdm(examples, desc=f"tokenizing {desc}", unit="ex", leave=False, disable=None):
            try:
                ids, mask = chat_template.training_tokens(tokenizer, ex.messages, mask_prompt)
            except ValueError as e:
                problems.append(f"{ex.where}: {e}")
                continue
            if len(ids) > max_seq_length + 1:
                self.truncated += 1
                ids, mask = ids[: max_seq_length + 1], mask[: max_seq_length + 1]
            if not any(mask[1:]):
                self.dropped += 1
                continue
            self.items.append((ids, mask))
        if problems:
            raise data.DataError(problems)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[list[int], list[int]]:
        return self.items[idx]

    def report(self, name: str, max_seq_length: int) -> str | None:
        if not (self.truncated or self.dropped):
            return None
        return (f"{name}: {self.truncated} examples longer than max_seq_length {max_seq_length} are truncated; "
                f"{self.dropped} of them keep no answer token and are left out")


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
        # Evaluation (loop=False) may stop after val_batches batches: a fixed shuffled order scores a fair sample
        # rather than only the shortest examples.
        order_of_batches = rng.permutation(len(batches)) if loop else np.random.default_rng(0).permutation(len(batches))
        for b in order_of_batches:
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
        # mlx_lm counts the tokens our loss returns: the learned (assistant) tokens, not every token processed.
        self._write({"step": info["iteration"], "loss": info["train_loss"], "lr": info["learning_rate"],
                     "trained_tokens_per_s": info["tokens_per_second"], "trained_tokens": info["trained_tokens"],
                     "peak_memory_gb": info["peak_memory"]})

    def on_val_loss_report(self, info: dict) -> None:
        self._write({"step": info["iteration"], "val_loss": info["val_loss"], "val_time": info["val_time"]})


def _data_dir(spec: str) -> Path:
    path = local_or_shipped(spec)
    if not (path / "train.jsonl").is_file():
        raise UserError(f"{path}: no train.jsonl here; make one with `python -m mlx_ft prepare FILE --out {path}`")
    return path


def _optimizer(cfg: config_mod.TrainConfig) -> optim.Optimizer:
    classes = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor,
               "muon": optim.Muon}
    try:
        lr = build_schedule(cfg.lr_schedule) if cfg.lr_schedule else cfg.learning_rate
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise UserError(f"config key 'lr_schedule' {cfg.lr_schedule!r} is not an mlx-lm schedule ({e!r}); "
                        "expected {name: cosine_decay, arguments: [1e-4, 1000], warmup: 10}") from None
    extra = cfg.optimizer_config.get(cfg.optimizer, {})
    try:
        return classes[cfg.optimizer](learning_rate=lr, **extra)
    except TypeError as e:
        raise UserError(f"config key 'optimizer_config.{cfg.optimizer}': {e}") from None


def _run_dir(cfg: config_mod.TrainConfig) -> Path:
    run = Path(cfg.adapter_path) if cfg.adapter_path else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if run.exists() and any(run.iterdir()):
        raise UserError(f"{run}: run folder exists and is not empty; choose another --adapter-path")
    run.mkdir(parents=True, exist_ok=True)
    return run


def save_adapter(model: nn.Module, run: Path) -> Path:
    dest = run / "adapters.safetensors"
    tmp = run / ".adapters.partial.safetensors"  # mlx appends .safetensors to other names
    try:
        mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _load(model_path: str, source: str) -> tuple[nn.Module, Any]:
    try:
        return mlx_lm_load(model_path)
    except Exception as e:  # noqa: BLE001 -- hub, network and format failures all mean "this model cannot load"
        if Path(model_path).is_dir():
            raise  # a local folder that passed our checks but fails to load is more likely our bug: keep the trace
        raise UserError(f"could not load model {source!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


def train(cfg: config_mod.TrainConfig) -> Path:
    """Train as `cfg` says and return the run folder, which holds the adapter, its config and the metrics."""
    data_dir = _data_dir(cfg.data)
    train_chats = data.load_split(data_dir, "train")
    valid_chats = data.load_split(data_dir, "valid") if (data_dir / "valid.jsonl").is_file() else []

    model_path = models.resolve(cfg.model)
    print(f"mlx_ft: loading {model_path}", file=sys.stderr)
    model, tokenizer = _load(model_path, cfg.model)
    if not chat_template.has_template(tokenizer):
        raise UserError(f"model {cfg.model!r} has no chat template: fine-tune an instruct/chat model")
    train_set = TokenizedChats(train_chats, tokenizer, cfg.mask_prompt, cfg.max_seq_length, "train")
    valid_set = TokenizedChats(valid_chats, tokenizer, cfg.mask_prompt, cfg.max_seq_length, "valid")
    for name, ds in (("train", train_set), ("valid", valid_set)):
        if note := ds.report(f"{data_dir}/{name}.jsonl", cfg.max_seq_length):
            print(f"mlx_ft: {note}", file=sys.stderr)
    if len(train_set) < cfg.batch_size:
        raise UserError(f"{data_dir}/train.jsonl: {len(train_set)} usable examples, fewer than batch_size "
                        f"{cfg.batch_size}")

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
    if cfg.resume_adapter_file:
        if not Path(cfg.resume_adapter_file).is_file():
            raise UserError(f"{cfg.resume_adapter_file}: no such adapter file (resume_adapter_file)")
        model.load_weights(cfg.resume_adapter_file, strict=False)
    print_trainable_parameters(model)
    optimizer = _optimizer(cfg)

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
        clear_cache_threshold=cfg.clear_cache_threshold,
    )
    log = MetricsLog(run / "metrics.jsonl")

    def batches(dataset: TokenizedChats, batch_size: int, max_seq_length: int, loop: bool = False,
                comm_group: Any = None) -> Iterator[tuple[mx.array, mx.array]]:
        return iterate_batches(dataset, batch_size, max_seq_length, loop, seed=cfg.seed, comm_group=comm_group)

    try:
        mlx_lm_train(model=model, optimizer=optimizer, train_dataset=train_set, val_dataset=valid_set or None,
                     args=args, loss=masked_loss, iterate_batches=batches, training_callback=log)
    except KeyboardInterrupt:
        save_adapter(model, run)
        print(f"\nmlx_ft: interrupted after step {log.last_step}; adapter so far saved in {run}", file=sys.stderr)
        raise
    save_adapter(model, run)
    return run
