"""`export hf`: the adapter fused into its base, saved as a plain Hugging Face model folder (safetensors, sharded when
large; config.json; tokenizer files with the chat template) that transformers, mlx_lm and the GGUF export read.

A QLoRA run is dequantized on the way out: the fused weight is the dequantized base plus the adapter's update, the
function the adapter was trained on, stored in the base's float type (no MLX-packed uint32, scales or biases).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import dequantize_model, save

from mlx_ft import models, progress
from mlx_ft.atomic import atomic_dir
from mlx_ft.errors import UserError
from mlx_ft.models import loader

QUANTIZATION_KEYS = ("quantization", "quantization_config")


@dataclass
class Fused:
    """A run (or model) as one plain float model: what every export writes."""

    model: nn.Module
    tokenizer: Any
    config: dict[str, Any]  # the base's config.json, without MLX quantization keys
    base_dir: Path
    label: str
    system: str | None  # the run's training system prompt, if one


def fuse(source: str) -> Fused:
    """Load `source` (run folder, adapter folder or model), fold its adapter into the weights, dequantize."""
    return to_fused(loader.load(source, fuse=False))


def to_fused(loaded: loader.Loaded, adapter: bool = True) -> Fused:
    """`loaded` (adapter attached, unfused) as one plain float model: the adapter folded in, or with adapter=False
    taken off again, leaving the base exactly as the adapter was trained on it (a QLoRA base quantized, then
    dequantized)."""
    model = loaded.model
    if adapter:
        layers = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    else:
        layers = [(name, m.linear) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if layers:
        model.update_modules(tree_unflatten(layers))
    model = dequantize_model(model)
    base_dir = Path(models.resolve(loaded.base))
    label = loaded.label if adapter else loaded.base
    return Fused(model, loaded.tokenizer, read_config(base_dir), base_dir, label, loaded.system)


def read_config(base_dir: Path) -> dict[str, Any]:
    """A base model's config.json, without MLX quantization keys."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    for key in QUANTIZATION_KEYS:
        config.pop(key, None)
    return config


def export_hf(source: str, out: Path) -> Path:
    """Write `source` as a fused, dequantized HF folder at `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{out}: exists and is not a model folder; choose another --out")
    f = fuse(source)
    print(f"mlx_ft: writing {f.label} fused into {out}", file=sys.stderr)
    reporter, mb = compute_weights(f.model, "writing HF folder")
    with atomic_dir(out) as tmp:
        save(tmp, f.base_dir, f.model, f.tokenizer, f.config, donate_model=False)
    reporter.finish(mb)  # the last line once the folder is in place
    return out


def compute_weights(model: nn.Module, stage: str) -> tuple[progress.Reporter, float]:
    """Compute every weight of `model` now, one tensor at a time, with progress lines in tensors and MB/s: MLX is
    lazy, so the adapter's fold and the dequantization would otherwise all run inside the save without a word.
    Returns the stage's reporter (its last line is the caller's, once written) and the MB computed."""
    weights = [v for _, v in tree_flatten(model.parameters())]
    all_mb = max(sum(v.nbytes for v in weights) / 1e6, 1e-9)
    reporter = progress.Reporter(stage, len(weights), "tensors", "MB/s")
    mb = 0.0
    for i, v in enumerate(weights):
        mx.eval(v)  # the model holds this same array: it keeps the computed value
        mb += v.nbytes / 1e6
        reporter.update(i + 1, mb, mb / all_mb)
    return reporter, mb
