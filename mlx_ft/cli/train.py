"""`mlx_ft train`: a run from the config file and its flags (`mlx_ft.training.run`), or `--resume RUN`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlx_ft import config as config_mod
from mlx_ft.cli.args import Subparsers
from mlx_ft.errors import UserError


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "train",
        help="train a LoRA/DoRA adapter (or a full fine-tune) from lora_config.yaml",
        description="Train with mlx_lm's tuner. Settings come from the config file (default: "
        "./lora_config.yaml, else the shipped one); every flag below overrides its key. Writes a run "
        "folder with config.yaml, adapter_config.json, adapters.safetensors, metrics.jsonl, loss.png, "
        "best/ (the best validation loss) and checkpoints/. Ctrl-C saves a checkpoint after the current step; "
        "`--resume RUN` continues. `--recipe NAME` without -c trains the recipe's plan (e.g. SFT, then GRPO "
        "from it: one run folder per stage, <adapter-path>-<stage>; run it again to go on where it stopped). "
        "Data-parallel over several Macs: mlx.launch --hosts A,B python -m mlx_ft train …",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its newest checkpoint, exactly as if it had "
        "never stopped (only when-to-stop/report/save keys may change, e.g. --iters)",
    )
    config_mod.add_arguments(p)
    p.set_defaults(func=cmd_train, needs_mlx=True)


def cmd_train(args: argparse.Namespace) -> None:
    from mlx_ft.training.run import train

    flags = config_mod.flags_of(args)
    if args.recipe and not args.config and not args.resume:
        from mlx_ft.training.plan import run_plan

        run = run_plan(args.recipe, {k: v for k, v in flags.items() if k != "recipe"}, args.set or [])
        print(f"adapter written to {run}")
        return
    if args.resume:
        if args.config:
            raise UserError("--resume reads the run's own config.yaml; leave out --config")
        run = train(config_mod.for_resume(Path(args.resume), flags, args.set or []), resume=True)
    else:
        run = train(config_mod.from_cli(args.config, flags, args.set or []))
    print(f"adapter written to {run}")
