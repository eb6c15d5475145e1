"""One loader for everything that answers: a run folder (base model + adapter), an adapter folder inside a run
(`best/`, `checkpoints/step-N/`), a fused model folder, or any plain model source `sources.resolve` accepts.

A run is rebuilt exactly as it was trained: the base resolved from the run's config, quantized when the run was a
QLoRA one, the same adapter layers attached (`adapters.attach`), then the trained weights loaded. Generation stops at
the chat template's end-of-turn token as well as at EOS.
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
from mlx_lm.utils import load as mlx_lm_load

from mlx_ft import chat_template
from mlx_ft import config as config_mod
from mlx_ft.errors import UserError
from mlx_ft.models import adapters, sources
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.models.run_folder import Run

GENERATION_CONFIG = "generation_config.json"
GENERATION_KEYS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float}


def load_model(model_path: str, source: str) -> tuple[nn.Module, Any]:
    """mlx_lm.load, with failures of a named model (hub, network, format) as one-line errors."""
    try:
        return mlx_lm_load(model_path)
    except Exception as e:  # noqa: BLE001 -- hub, network and format failures all mean "this model cannot load"
        if Path(model_path).is_dir():
            raise  # a local folder that passed our checks but fails to load is more likely our bug: keep the trace
        raise UserError(f"could not load model {source!r}: {type(e).__name__}: {e}".splitlines()[0]) from None


@dataclass
class Loaded:
    """A model ready to answer, and where it came from."""

    model: nn.Module
    tokenizer: Any
    source: str  # what the user named
    base: str  # the base model's source (the run config's `model`, or `source` itself)
    run: Path | None = None  # the run folder, when the source is (inside) one
    adapter_file: Path | None = None
    cfg: config_mod.TrainConfig | None = None
    system: str | None = None  # the system prompt every training example had, if one
    adapted: bool = False  # whether the adapter is on the model yet

    @property
    def label(self) -> str:
        if self.cfg is None:
            return self.source
        return f"{self.source} ({self.cfg.fine_tune_type} on {self.base})"

    def apply_adapter(self) -> None:
        """Put the run's adapter on the base model (a no-op for plain models and when already applied)."""
        if self.adapted or self.cfg is None or self.adapter_file is None:
            return
        adapters.attach(self.model, self.cfg)
        try:
            weights = mx.load(str(self.adapter_file))
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{self.adapter_file}: unreadable adapter ({e})") from None
        expected = dict(tree_flatten(self.model.parameters()))
        unknown = [k for k, v in weights.items() if k not in expected or expected[k].shape != v.shape]
        if unknown:
            raise UserError(
                f"{self.adapter_file}: {len(unknown)} weights do not fit {self.base} as the run's "
                f"config builds it (first: {unknown[0]})"
            )
        self.model.load_weights(list(weights.items()), strict=False)
        self.model.eval()
        mx.eval(self.model.parameters())
        self.adapted = True

    def fuse(self) -> None:
        """Merge LoRA/DoRA into the weights for generation: the same function, without the adapter's extra matmuls
        on every token (DoRA recomputes a weight norm per call). A QLoRA run stays unfused: re-quantizing the merged
        weight would change the model the adapter was trained with."""
        if not self.adapted or self.cfg is None or self.cfg.quantize or self.cfg.fine_tune_type == "full":
            return
        fused = [(name, module.fuse()) for name, module in self.model.named_modules() if hasattr(module, "fuse")]
        if fused:
            self.model.update_modules(tree_unflatten(fused))
            mx.eval(self.model.parameters())


def find_run(path: Path) -> tuple[Path, Path] | None:
    """(run folder, adapter file) when `path` is a run folder or an adapter folder inside one, else None."""
    for run in (path, path.parent, path.parent.parent):
        if Run(run).is_loadable():
            return run, path / ADAPTERS
    return None


def run_config(source: str) -> config_mod.TrainConfig | None:
    """The training config of the run `source` is (or is inside), without loading any model; None for a model."""
    path = Path(source).expanduser()
    found = find_run(path) if path.is_dir() else None
    return Run(found[0]).config() if found else None


def training_system(run: Path) -> str | None:
    """The system prompt every training example of `run` had, if one (inference defaults to it)."""
    return Run(run).system_prompt()


def generation_defaults(model_path: str) -> dict[str, float | int]:
    """The sampling settings a model's authors ship in its generation_config.json, under Hugging Face's names
    (temperature, top_p, top_k, repetition_penalty); {} when it has none. `model_path` is what `sources.resolve`
    gives: a folder, or a hub id, looked up in the local hub cache only (never downloaded for this)."""
    path = Path(model_path) / GENERATION_CONFIG
    if not path.is_file():
        path = _hub_cached(model_path, GENERATION_CONFIG)
    try:
        raw = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float | int] = {}
    for key, kind in GENERATION_KEYS.items():
        value = raw.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value)):
            out[key] = kind(value)
    if raw.get("do_sample") is False:  # transformers then decodes greedily, whatever temperature says
        out["temperature"] = 0.0
    return out


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    if repo_id.count("/") != 1 or Path(repo_id).exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - no cache, no such repo: the model ships no defaults we can see
        return None
    return Path(found) if isinstance(found, str) else None


def _saved_adapters(run: Run) -> list[Path]:
    """The adapter folders to suggest when a run has no final adapter: best/ and the newest checkpoint."""
    offered = dict(run.adapters())  # best first, then the checkpoints oldest first
    best = offered.pop("best", None)
    return [p for p in (best, *list(offered.values())[-1:]) if p is not None]


def load(source: str, adapter: bool = True, fuse: bool = True) -> Loaded:
    """Load `source` for generation (adapter fused in, when `fuse`). With adapter=False a run's base model is loaded
    bare (quantized as it was trained), and `apply_adapter()` adds the adapter later: `eval --compare-base` scores
    both from one load."""
    path = Path(source).expanduser()
    found = find_run(path) if path.is_dir() else None
    if found is None:
        model, tokenizer = load_model(sources.resolve(source), source)
        loaded = Loaded(model, tokenizer, source, source)
    else:
        run, adapter_file = found
        if not adapter_file.is_file():
            hint = " or ".join(str(p) for p in _saved_adapters(Run(run)))
            raise UserError(f"{path}: no {ADAPTERS} (did the training finish?)" + (f"; try {hint}" if hint else ""))
        cfg = Run(run).config()
        print(f"mlx_ft: loading {cfg.model} for {path}", file=sys.stderr)
        model, tokenizer = load_model(sources.resolve(cfg.model), cfg.model)
        if cfg.quantize:
            adapters.quantize_base(model, cfg.quantize)
        loaded = Loaded(model, tokenizer, source, cfg.model, run, adapter_file, cfg, training_system(run))
    if chat_template.has_template(loaded.tokenizer):
        if (eot := chat_template.end_of_turn_id(loaded.tokenizer)) is not None:
            loaded.tokenizer.add_eos_token(eot)
    if adapter:
        loaded.apply_adapter()
        if fuse:
            loaded.fuse()
    loaded.model.eval()
    return loaded
