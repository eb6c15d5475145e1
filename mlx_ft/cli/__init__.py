"""Command line: parse arguments, call one function, print user errors as one line (exit 2).

One module per subcommand (or pair of close ones: `infer` and `chat`), each with its `add_parser(subparsers)` (the
arguments, helps and defaults) beside its handler; the number types and the RUN help they share are in `args`.
Handlers import MLX, Flask and the rest lazily: building the parser loads neither, so `--help` and a bad flag are
answered at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mlx_ft import __version__
from mlx_ft.cli import doctor, evaluate, export, import_gguf, infer, prepare, serve, train
from mlx_ft.cli.prepare import cmd_prepare as _cmd_prepare  # noqa: F401  (its name before cli was a package)
from mlx_ft.errors import UserError
from mlx_ft.system.blas import blas_warning

# In the order `--help` lists them.
_COMMANDS = (prepare, train, import_gguf, evaluate, infer, serve, export, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx_ft",
        description="Fine-tune a small chat model with MLX: prepare data, train LoRA/DoRA/full, import GGUF models.",
    )
    parser.add_argument("--version", action="version", version=f"mlx_ft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        if args.needs_mlx:
            from mlx_ft.system.devices import unused_gpu_warning

            for warning in (blas_warning(), unused_gpu_warning()):
                if warning:
                    print(f"mlx_ft: warning: {warning}", file=sys.stderr)
        status = func(args)  # None for success; `doctor` reports its findings as 1
    except UserError as e:
        print(f"mlx_ft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlx_ft: interrupted", file=sys.stderr)
        return 130
    return status or 0
