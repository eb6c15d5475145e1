"""Training: load the model and data, attach the adapter, then run our loop (`loop.py`) on mlx_lm's pieces.

Ours:
- a dataset of (ids, loss weights) from `chat_template`, so the loss covers every assistant turn and no system/user
  text (mlx-lm's `mask_prompt` keeps only the last message), cut into batches by token length or packed
  (`batches.py`);
- a loss normalised over the global batch, so data-parallel workers (`mlx.launch`) compute what one worker would, that
  runs the output layer only on learned positions and keeps packed examples apart (`loss.py`);
- the loop itself (`loop.py`): the compiled step, progress, metrics.jsonl, validation, checkpoints, early
  stopping and Ctrl-C, counted in global steps so a resumed run ends where an uninterrupted one does;
- the objective (`objectives.py`: SFT, DPO, ORPO; `grpo.py`: GRPO), which the loop and `train` use without asking
  which it is.
mlx_lm's: the model code and loader, the LoRA/DoRA layers (`models/adapters.py`), optimizers' schedules, gradient
checkpointing. The run folder is an mlx-lm adapter folder: `mlx_lm.load(model, adapter_path=run)` accepts it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx_lm.tuner.utils import build_schedule, print_trainable_parameters

from mlx_ft import chat_template, data, models
from mlx_ft import config as config_mod
from mlx_ft.atomic import write_json, write_text
from mlx_ft.data import stats as data_stats
from mlx_ft.errors import UserError
from mlx_ft.models import adapters
from mlx_ft.models.loader import load_model
from mlx_ft.models.run_folder import Run
from mlx_ft.resources import local_or_shipped
from mlx_ft.training import checkpoints, objectives
from mlx_ft.training import loop as training_loop
from mlx_ft.training.checkpoints import TrainerState
from mlx_ft.training.loss import check_packable
from mlx_ft.training.loss_plot import read_metrics
from mlx_ft.training.objectives import Objective


def _data_dir(spec: str) -> Path:
    path = local_or_shipped(spec)
    if not (path / "train.jsonl").is_file():
        raise UserError(f"{path}: no train.jsonl here; make one with `python -m mlx_ft prepare FILE --out {path}`")
    return path


def _optimizer(cfg: config_mod.TrainConfig) -> optim.Optimizer:
    classes = {
        "adam": optim.Adam,
        "adamw": optim.AdamW,
        "sgd": optim.SGD,
        "adafactor": optim.Adafactor,
        "muon": optim.Muon,
    }
    try:
        lr = build_schedule(cfg.lr_schedule) if cfg.lr_schedule else cfg.learning_rate
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise UserError(
            f"config key 'lr_schedule' {cfg.lr_schedule!r} is not an mlx-lm schedule ({e!r}); "
            "expected {name: cosine_decay, arguments: [1e-4, 1000], warmup: 10}"
        ) from None
    extra = cfg.optimizer_config.get(cfg.optimizer, {})
    try:
        return classes[cfg.optimizer](learning_rate=lr, **extra)
    except TypeError as e:
        raise UserError(f"config key 'optimizer_config.{cfg.optimizer}': {e}") from None


def _new_run_dir(cfg: config_mod.TrainConfig, world: Any) -> Path:
    """The run folder, made by the first worker only. Every worker must name the same one: rank 0's clock decides
    the default name."""
    if cfg.adapter_path:
        run = Path(cfg.adapter_path)
    else:
        stamp = int(time.time()) if world.rank() == 0 else 0
        if world.size() > 1:
            stamp = int(mx.distributed.all_sum(mx.array(stamp), stream=mx.cpu).item())
        run = Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.localtime(stamp))
    if world.rank() == 0:
        if run.exists() and any(run.iterdir()):
            raise UserError(
                f"{run}: run folder exists and is not empty; choose another --adapter-path, or continue "
                f"it with `train --resume {run}`"
            )
        run.mkdir(parents=True, exist_ok=True)
    return run


def _keep_metrics_until(run: Path, step: int) -> None:
    """Drop metrics rows past the checkpoint a run resumes from: those steps are about to be trained again."""
    path = Run(run).metrics_file
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: config_mod.TrainConfig, resume: bool = False) -> Path:
    """Train as `cfg` says and return the run folder (adapter, config, checkpoints, metrics, loss.png).

    With `resume`, continue the run in cfg.adapter_path from its newest checkpoint."""
    data_dir = _data_dir(cfg.data)
    train_chats = data.load_split(data_dir, "train")
    valid_chats = data.load_split(data_dir, "valid") if (data_dir / "valid.jsonl").is_file() else []
    if resume:
        run = Path(cfg.adapter_path or "")
        ckpt = checkpoints.latest(run)
        if ckpt is None:
            raise UserError(f"{run}: no checkpoint to resume from (checkpoints/step-*)")

    if cfg.init_from and not resume:
        _init_from(cfg)
    model_path = models.resolve(cfg.model)
    print(f"mlx_ft: loading {model_path}", file=sys.stderr)
    model, tokenizer = load_model(model_path, cfg.model)
    _check_model_takes(cfg, tokenizer, train_chats + valid_chats)
    objective = objectives.for_config(cfg)
    train_set, valid_set = _tokenize(cfg, objective, data_dir, tokenizer, train_chats, valid_chats)
    if cfg.pack:
        check_packable(model)
    _set_iters(cfg, objective, train_set)
    _adapt(cfg, model, objective, resume)
    print_trainable_parameters(model)
    optimizer = _optimizer(cfg)

    world = mx.distributed.init()
    if resume:
        state = _resume_state(cfg, run, ckpt, model, optimizer, world)
    else:
        state = TrainerState()
        # The run folder appears only once the model and data have loaded, so a bad input leaves nothing behind.
        run = _new_run_dir(cfg, world)
        cfg.adapter_path = str(run)
    if world.rank() == 0:
        _write_run_files(cfg, run, model_path, train_chats)
    reason = _run_loop(cfg, run, model, optimizer, state, train_set, valid_set, objective)
    if reason != "finished":
        print(f"mlx_ft: {reason}", file=sys.stderr)
    return run


# What a run started from another one takes from it: the adapter only fits the same base, type and layers.
INIT_KEYS = ("model", "fine_tune_type", "num_layers", "lora_parameters", "quantize")


def _init_from(cfg: config_mod.TrainConfig) -> None:
    """Start from the finished run cfg.init_from: its adapter (a full fine-tune's trained layers) as the starting
    weights (resume_adapter_file), and the base model and adapter shape it was trained with."""
    source = Run(Path(cfg.init_from or ""))
    if not source.is_run() or not source.has_adapter():
        raise UserError(f"{cfg.init_from}: not a finished run folder (init_from needs its adapters.safetensors)")
    if cfg.resume_adapter_file:
        raise UserError("init_from and resume_adapter_file both name the starting adapter; give one")
    theirs = source.config()
    changed = [k for k in INIT_KEYS if getattr(cfg, k) != getattr(theirs, k)]
    for key in INIT_KEYS:
        setattr(cfg, key, getattr(theirs, key))
    cfg.resume_adapter_file = str(source.adapter_file)
    took = f" (its {', '.join(changed)} too)" if changed else ""
    print(f"mlx_ft: starting from {source.path}'s adapter{took}", file=sys.stderr)


def _check_model_takes(cfg: config_mod.TrainConfig, tokenizer: Any, examples: list[data.Example]) -> None:
    """Refuse data the model cannot be trained on: chats without a chat template, tool calls without tool support."""
    chats = any(ex.text is None for ex in examples)  # plain text needs no chat template
    if chats and not chat_template.has_template(tokenizer):
        raise UserError(
            f"model {cfg.model!r} has no chat template: fine-tune an instruct/chat model on chat data "
            "(or give it plain text examples)"
        )
    data_stats.require_tool_support(tokenizer, examples, cfg.model)


def _tokenize(
    cfg: config_mod.TrainConfig,
    objective: Objective[Any],
    data_dir: Path,
    tokenizer: Any,
    train_chats: list[data.Example],
    valid_chats: list[data.Example],
) -> tuple[Any, Any]:
    """The training and validation splits as the objective reads them, with what was cut or left out said once."""
    train_set = objective.tokenize(train_chats, tokenizer, cfg.max_seq_length, "train")
    valid_set = objective.tokenize(valid_chats, tokenizer, cfg.max_seq_length, "valid")
    if note := objective.data_note(train_chats):
        print(f"mlx_ft: {data_dir} {note}", file=sys.stderr)
    for name, ds in (("train", train_set), ("valid", valid_set)):
        if note := ds.report(f"{data_dir}/{name}.jsonl", cfg.max_seq_length):
            print(f"mlx_ft: {note}", file=sys.stderr)
    if len(train_set) < cfg.batch_size:
        raise UserError(
            f"{data_dir}/train.jsonl: {len(train_set)} usable examples, fewer than batch_size {cfg.batch_size}"
        )
    if cfg.early_stopping_patience and not len(valid_set):
        raise UserError(f"early_stopping_patience needs validation data, and {data_dir} has no usable valid.jsonl")
    return train_set, valid_set


def _set_iters(cfg: config_mod.TrainConfig, objective: Objective[Any], train_set: Any) -> None:
    """Say how the batches fill up, and turn `epochs` (when given) into cfg.iters."""
    steps_per_epoch = objective.steps_per_epoch(train_set, cfg.batch_size, cfg.max_seq_length)
    if note := objective.batching_note(train_set, cfg.batch_size, cfg.max_seq_length):
        print(f"mlx_ft: {note}", file=sys.stderr)
    if cfg.epochs is not None:
        cfg.iters = max(1, math.ceil(cfg.epochs * steps_per_epoch))


def _adapt(cfg: config_mod.TrainConfig, model: nn.Module, objective: Objective[Any], resume: bool) -> None:
    """Quantize the base (QLoRA), attach the adapter, let the objective see it (DPO's reference is the model before
    any weights load), then warm-start from resume_adapter_file."""
    n_layers = len(model.layers)
    if cfg.num_layers > n_layers:
        raise UserError(f"num_layers {cfg.num_layers} is more than the model's {n_layers} layers")
    if cfg.quantize:
        n = adapters.quantize_base(model, cfg.quantize)
        print(f"mlx_ft: quantized {n} layers of the base model to {cfg.quantize} bits (QLoRA)", file=sys.stderr)
    mx.random.seed(cfg.seed)
    adapters.attach(model, cfg)
    objective.bind(cfg, model)
    if cfg.resume_adapter_file and not resume:
        if not Path(cfg.resume_adapter_file).is_file():
            raise UserError(f"{cfg.resume_adapter_file}: no such adapter file (resume_adapter_file)")
        model.load_weights(cfg.resume_adapter_file, strict=False)


def _resume_state(
    cfg: config_mod.TrainConfig, run: Path, ckpt: Path, model: nn.Module, optimizer: optim.Optimizer, world: Any
) -> TrainerState:
    """The checkpoint's weights, optimizer and counters, with the metrics rows past it dropped."""
    state = checkpoints.load(ckpt, model, optimizer)
    if state.step >= cfg.iters:
        raise UserError(
            f"{run} already trained {state.step} steps (iters {cfg.iters}); pass a larger --iters to train further"
        )
    if world.rank() == 0:
        _keep_metrics_until(run, state.step)
    print(f"mlx_ft: resuming {run} from step {state.step}", file=sys.stderr)
    return state


def _write_run_files(cfg: config_mod.TrainConfig, run: Path, model_path: str, train_chats: list[data.Example]) -> None:
    write_text(Run(run).config_file, config_mod.dump(cfg))
    # mlx-lm's adapter_config.json keys, so mlx_lm.load(..., adapter_path=run) and mlx_lm fuse work on the run.
    write_json(
        Run(run).adapter_config_file,
        {
            **cfg.to_dict(),
            "model": model_path,
            "base_model": cfg.model,
            "system_prompt": data.common_system(train_chats),
        },
    )


def _run_loop(
    cfg: config_mod.TrainConfig,
    run: Path,
    model: nn.Module,
    optimizer: optim.Optimizer,
    state: TrainerState,
    train_set: Any,
    valid_set: Any,
    objective: Objective[Any],
) -> str:
    """The loop (loop.py); on Ctrl-C, say where the checkpoint is and how to go on."""
    try:
        return training_loop.loop(cfg, run, model, optimizer, state, train_set, valid_set, objective)
    except training_loop.TrainingInterrupted as e:
        print(
            f"\nmlx_ft: interrupted after step {e.step}; checkpoint saved in {e.checkpoint}; continue with "
            f"`python -m mlx_ft train --resume {run}`",
            file=sys.stderr,
        )
        raise
