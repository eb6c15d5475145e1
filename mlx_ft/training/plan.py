"""A recipe's training plan (`train --recipe NAME`): its stages trained in order, each from the run before it.

Stage k writes the run folder `<base>-<stage name>` (the base is --adapter-path, default runs/<recipe>-<date>), from
its own config file in the recipe's folder with the command's flags on top; every stage after the first starts from
the one before (`init_from`, unless its config names another), and every stage knows its recipe (`recipe`: the
fields and choice rewards read its task patterns). A plan run again goes on where it stopped: a finished stage is
kept, an interrupted one resumes from its checkpoint, so Ctrl-C in the second stage never costs the first.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from mlx_ft import config as config_mod
from mlx_ft.data import recipes
from mlx_ft.errors import UserError
from mlx_ft.models.run_folder import Run
from mlx_ft.training.run import train


def stage_dirs(recipe: recipes.Recipe, base: Path) -> list[Path]:
    """Each stage's run folder: the base itself for a plan of one stage, else the base with the stage's name."""
    if len(recipe.plan) == 1:
        return [base]
    return [base.with_name(f"{base.name}-{stage.name}") for stage in recipe.plan]


def run_plan(ref: str, flags: dict[str, Any], set_items: list[str]) -> Path:
    """Train the plan of recipe `ref` with the command's `flags` and `--set` items on every stage; the last stage's
    run folder."""
    recipe = recipes.load(ref)
    if not recipe.plan:
        raise UserError(f"recipe {recipe.name} has no plan and no lora_config.yaml: give a config with -c")
    base = Path(flags.get("adapter_path") or Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    folders = stage_dirs(recipe, base)
    previous: Path | None = None
    for k, (stage, folder) in enumerate(zip(recipe.plan, folders, strict=True), 1):
        say = f"mlx_ft: stage {k}/{len(folders)} ({stage.name}, {stage.config.name}) → {folder}"
        run = Run(folder)
        if run.finished():
            print(f"{say}: already trained, kept", file=sys.stderr)
        elif run.latest_checkpoint() is not None:
            print(f"{say}: resuming", file=sys.stderr)
            resumable = {key: v for key, v in flags.items() if key in config_mod.RESUMABLE_KEYS}
            train(config_mod.for_resume(folder, resumable, []), resume=True)
        else:
            print(say, file=sys.stderr)
            cfg = config_mod.from_cli(str(stage.config), {**flags, "adapter_path": str(folder)}, set_items)
            cfg.recipe = cfg.recipe or ref
            if previous is not None and not cfg.init_from:
                cfg.init_from = str(previous)
            train(cfg)
        previous = folder
    assert previous is not None
    return previous
