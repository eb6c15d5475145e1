"""Argument helpers every subcommand may share: number types that check as the config and the server do, and the
help of a RUN argument."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mlx_ft import checks

RUN_HELP = (
    "a run folder (base model + adapter; also RUN/best or RUN/checkpoints/step-N), a fused model folder, "
    "a .gguf file, a built-in model or a Hugging Face repo id"
)


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type that checks as the config and the server do (`mlx_ft.checks`), in the same words."""

    def parse(text: str) -> int:
        try:
            return checks.integer(text, "it", lo, hi, text=True)
        except checks.FieldError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("it ")) from None

    return parse


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """A finite number in bounds, as argparse's type (NaN and inf are floats to `float()`, never here)."""

    def parse(text: str) -> float:
        try:
            return checks.number(text, "it", lo, hi, lo_open=lo_open, text=True)
        except checks.FieldError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("it ")) from None

    return parse


# What `add_subparsers` returns, which every subcommand module's `add_parser` adds its parser to.
Subparsers = argparse._SubParsersAction
