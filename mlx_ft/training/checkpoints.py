"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder `RUN/checkpoints/step-NNNNNNN/` holding
- `adapters.safetensors`: the trainable parameters (the adapter, or the unfrozen layers of a full fine-tune);
- `optimizer.safetensors`: the optimizer's state (moments, step counter, learning rate);
- `state.json`: the step and the trainer's own counters (tokens seen, best validation loss, evaluations without
  improvement).
The data order and the random stream need no saving: both are functions of (seed, step) (see `loop.py`).
Each folder is written under a temporary name and renamed when complete, so a crash never leaves half of one.
Where they are and their order (by step) is the run folder's business: `models.run_folder.Run`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlx_ft.atomic import atomic_dir, atomic_path
from mlx_ft.errors import UserError
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.models.run_folder import Run


@dataclass
class TrainerState:
    step: int = 0
    tokens: int = 0  # real (non-padding) tokens processed so far
    trained_tokens: int = 0  # tokens the loss was taken on
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


def save_weights(model: nn.Module, dest: Path) -> None:
    """The model's trainable parameters, in mlx-lm's adapter format, written atomically."""
    with atomic_path(dest) as tmp:
        # mx.save_safetensors appends ".safetensors" to any other name, so give the temporary file that suffix.
        real = tmp.with_name(tmp.name + ".safetensors")
        try:
            mx.save_safetensors(str(real), dict(tree_flatten(model.trainable_parameters())))
            real.replace(tmp)
        finally:
            real.unlink(missing_ok=True)


def checkpoint_dir(run: Path, step: int) -> Path:
    return Run(run).checkpoint_dir(step)


def save(run: Path, model: nn.Module, optimizer: optim.Optimizer, state: TrainerState) -> Path:
    dest = checkpoint_dir(run, state.step)
    with atomic_dir(dest) as tmp:
        mx.save_safetensors(str(tmp / ADAPTERS), dict(tree_flatten(model.trainable_parameters())))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
    return dest


def latest(run: Path) -> Path | None:
    return Run(run).latest_checkpoint()


def load(folder: Path, model: nn.Module, optimizer: optim.Optimizer) -> TrainerState:
    """Restore the weights and optimizer state saved in `folder`; return the trainer's counters."""
    try:
        state = TrainerState(**json.loads((folder / "state.json").read_text(encoding="utf-8")))
        model.load_weights(str(folder / ADAPTERS), strict=False)
        opt_state: dict[str, Any] = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{folder}: unreadable checkpoint ({e})") from None
    optimizer.state = opt_state
    # Fill in anything the optimizer expects but did not save (an optimizer without moments saves only its step).
    optimizer.init(model.trainable_parameters())
    return state


def prune(run: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0: keep them all)."""
    if keep <= 0:
        return
    for old in Run(run).checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
