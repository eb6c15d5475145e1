"""`mlx_ft prepare`: raw files → train/valid/test chat JSONL (`mlx_ft.data.prepare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlx_ft import data
from mlx_ft.cli.args import Subparsers, integer, number
from mlx_ft.data import recipes
from mlx_ft.data import stats as data_stats
from mlx_ft.errors import UserError


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn raw chat / instruction / text files into train/valid/test JSONL",
        description="Convert raw examples (.json array, .jsonl, .csv with a header row, .txt with "
        'one text per line; or LLaMA-Factory\'s dataset_info.json) into {"messages": […]} chat JSONL (or {"text": …} '
        "for continued pre-training) split into train/valid/test. Formats: "
        + ", ".join(data.FORMATS)
        + "; detected per example unless --format is given. Every problem "
        "is reported as FILE:LINE before anything is written. Then prints token lengths per split "
        "under the model's chat template and how many examples max_seq_length would cut.",
    )
    _add_input_flags(p)
    _add_split_flags(p)
    _add_stats_flags(p)
    p.set_defaults(func=cmd_prepare, needs_mlx=False)


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    """What to read and how to turn each record into a conversation."""
    p.add_argument(
        "inputs", nargs="+", metavar="FILE", help="raw data files (.json, .jsonl, .csv, .txt) or a dataset_info.json"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write train/valid/test.jsonl into")
    p.add_argument("--format", choices=list(data.FORMATS), help="format of plain input files (default: detect)")
    p.add_argument(
        "--dataset",
        action="append",
        metavar="NAME",
        help="entry of dataset_info.json to use (repeatable; default: every supported entry whose file is "
        "here, the others listed as skipped with the reason)",
    )
    p.add_argument("--system", help="system prompt to put at the start of every conversation that has none")
    p.add_argument("--instruction", help="text put before every input (io format)")
    p.add_argument(
        "--recipe",
        metavar="NAME|DIR",
        help="wrap every input (io format) in its task's template from this recipe (a folder with "
        "recipe.yaml, or a shipped recipe: miners, router); its system prompt applies unless --system",
    )
    p.add_argument(
        "--keep-field",
        action="append",
        metavar="NAME",
        help="carry this field of each record (a label such as a category) into the prepared splits, "
        "for `eval --by-field NAME` (repeatable; `task` is always carried)",
    )


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--valid", type=number(0, 0.9), default=0.1, help="fraction for the validation split (default 0.1)")
    p.add_argument("--test", type=number(0, 0.9), default=0.1, help="fraction for the test split (default 0.1)")
    p.add_argument("--seed", type=integer(0, (1 << 32) - 1), default=0, help="seed of the split (default 0)")
    p.add_argument(
        "--group-field",
        metavar="NAME",
        help="keep the examples that share this field's value in one split (e.g. one product's listings), "
        "so the test split holds only unseen groups",
    )
    p.add_argument("--skip-invalid", action="store_true", help="skip bad examples (and count them) instead of failing")


def _add_stats_flags(p: argparse.ArgumentParser) -> None:
    """Token lengths under a model's chat template, and what to do with the examples too long for training."""
    p.add_argument("--model", help="model whose tokenizer measures the token lengths (default: the config's model)")
    p.add_argument(
        "--max-seq-length",
        type=integer(1, 1 << 20),
        metavar="N",
        help="count the examples longer than this (default: the config's max_seq_length)",
    )
    p.add_argument(
        "--truncate",
        choices=data_stats.TRUNCATE,
        default="none",
        help="how training fits an example longer than max_seq_length: none (cut its end, as always) or prompt "
        "(cut the prompt's start, keeping the whole answer); recorded with the set, which training then follows",
    )
    p.add_argument(
        "--skip-long", action="store_true", help="leave out every example longer than max_seq_length (counted)"
    )
    p.add_argument("--no-stats", action="store_true", help="skip the token-length statistics (no tokenizer load)")


def cmd_prepare(args: argparse.Namespace) -> None:
    recipe = recipes.load(args.recipe) if args.recipe else None
    if recipe and args.instruction:
        raise UserError("--instruction and --recipe both wrap the input; the recipe's task templates decide it")
    report = data.prepare(
        [Path(p) for p in args.inputs],
        Path(args.out),
        fmt=args.format,
        opts=data.Options(
            system=args.system or (recipe.system if recipe else None),
            instruction=args.instruction,
            recipe=recipe,
            keep=tuple(dict.fromkeys(["task", *(args.keep_field or [])])),
        ),
        valid=args.valid,
        test=args.test,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
        datasets=args.dataset,
        stats=None
        if args.no_stats
        else data_stats.settings(args.model, args.max_seq_length, args.truncate, args.skip_long),
        group=args.group_field,
    )
    print(report.summary())
