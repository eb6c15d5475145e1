"""`mlx_ft infer` (one prompt streamed, or a file of prompts batched) and `mlx_ft chat` (a terminal chat): both
generate from a run with the same sampling flags and the same default system prompt."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_ft.cli.args import RUN_HELP, Subparsers, integer, number
from mlx_ft.errors import UserError
from mlx_ft.inference.sampling import CHAT_TEMPERATURE, MAX_TOKENS

if TYPE_CHECKING:
    from mlx_ft.inference.sampling import Sampling
    from mlx_ft.models.loader import Loaded


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "infer",
        help="answer one prompt (streamed), or a JSONL file of prompts (batched)",
        description="Answer TEXT, streaming the answer as it is generated, or every line of --file "
        "(JSONL/JSON/CSV rows with `messages`, or a `prompt`/`input`/`question`/`instruction` field) "
        "into --out, each row with an `output` field added.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("text", nargs="?", help="the prompt")
    p.add_argument("--file", metavar="FILE", help="prompts to answer in batches")
    p.add_argument("--out", metavar="FILE", help="where --file's answers go (JSONL)")
    p.add_argument(
        "--task",
        metavar="RECIPE[:TASK]",
        help="wrap the input in a recipe task's template, as its training data was (e.g. miners, "
        "router:scene; in --file, a line's own `task` field picks the task), and hold the answer to the task's "
        "pattern where the recipe says so, as `serve --task` does",
    )
    p.add_argument(
        "--no-constrain",
        action="store_true",
        help="with --task: the model's own answer, not held to the task's pattern",
    )
    _add_sampling_flags(p, temp=0.0)
    p.set_defaults(func=cmd_infer, needs_mlx=True)

    p = sub.add_parser(
        "chat",
        help="talk to a run in the terminal",
        description="A multi-turn chat in the terminal. Commands: /clear, /system TEXT, /save FILE, "
        "/help, /exit. Ctrl-D quits; Ctrl-C stops an answer, or quits at the prompt.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    _add_sampling_flags(p, temp=CHAT_TEMPERATURE)
    p.set_defaults(func=cmd_chat, needs_mlx=True)


def _add_sampling_flags(p: argparse.ArgumentParser, temp: float) -> None:
    p.add_argument(
        "--temp", type=number(0, 10), default=temp, help=f"sampling temperature; 0 is greedy (default {temp})"
    )
    p.add_argument(
        "--top-p",
        type=number(0, 1, lo_open=True),
        default=1.0,
        help="nucleus sampling: keep the most likely tokens whose probabilities sum to this (default 1.0: all)",
    )
    p.add_argument(
        "--max-tokens",
        type=integer(1, 1 << 20),
        default=MAX_TOKENS,
        help=f"longest answer in tokens (default {MAX_TOKENS})",
    )
    p.add_argument("--seed", type=integer(0, (1 << 64) - 1), help="random seed, for repeatable sampled answers")
    p.add_argument(
        "--system", help="system prompt (default: the one every training example had, if any; --system '' for none)"
    )


def _sampling(args: argparse.Namespace) -> Sampling:
    from mlx_ft.inference.sampling import Sampling

    return Sampling(temp=args.temp, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)


def _system(args: argparse.Namespace, loaded: Loaded) -> str | None:
    """--system, else the system prompt the run was trained with (answers match training best under it)."""
    if args.system is not None:
        return args.system or None
    if loaded.system:
        print(f"mlx_ft: using the run's training system prompt: {loaded.system}", file=sys.stderr)
    return loaded.system


def cmd_infer(args: argparse.Namespace) -> None:
    from mlx_ft.inference import infer
    from mlx_ft.models import loader

    if (args.text is None) == (args.file is None):
        raise UserError("give either a TEXT to answer or --file FILE")
    if args.file and not args.out:
        raise UserError("--file needs --out FILE for the answers")
    if args.no_constrain and not args.task:
        raise UserError("--no-constrain goes with --task (only a task's pattern holds answers)")
    ref = infer.TaskRef.parse(args.task, hold=not args.no_constrain) if args.task else None
    text = args.text
    if ref and text is not None:
        try:  # before the model loads: a recipe with several tasks needs one named
            text = ref.render(text)
        except ValueError:
            raise UserError(
                f"recipe {ref.recipe.name} has several tasks; name one: --task "
                f"{ref.recipe.name}:{next(iter(ref.recipe.tasks))}"
            ) from None
    loaded = loader.load(args.run)
    if args.file:
        n = infer.run_file(loaded, Path(args.file), Path(args.out), _sampling(args), _system(args, loaded), ref)
        print(f"answered {n} prompts into {args.out}", file=sys.stderr)
    else:
        sampling = _sampling(args)
        if ref is not None:
            sampling = dataclasses.replace(sampling, constraint=ref.held(None, loaded.tokenizer))
        infer.run_one(loaded, text, sampling, _system(args, loaded))


def cmd_chat(args: argparse.Namespace) -> None:
    from mlx_ft.inference import chat_repl
    from mlx_ft.models import loader

    loaded = loader.load(args.run)
    chat_repl.run(chat_repl.Session(loaded, _sampling(args), _system(args, loaded)))
