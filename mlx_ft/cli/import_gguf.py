"""`mlx_ft import-gguf`: a .gguf model → a Hugging Face style folder (`mlx_ft.models.gguf_import`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlx_ft.cli.args import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "import-gguf",
        help="turn a llama/qwen2/qwen3 .gguf file into a Hugging Face style folder",
        description="Dequantize a GGUF model (F32/F16/BF16/Q8_0/Q4_x/Q5_x/K-quants) into "
        "config.json + model.safetensors + tokenizer files that mlx_lm and transformers load.",
    )
    p.add_argument("file", help="the .gguf file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="weight type to store (default float32: exact, and fastest on CPU)",
    )
    p.set_defaults(func=cmd_import_gguf, needs_mlx=True)


def cmd_import_gguf(args: argparse.Namespace) -> None:
    from mlx_ft.models.gguf_import import import_gguf

    out = import_gguf(Path(args.file), Path(args.out), dtype=args.dtype)
    print(f"imported {args.file} into {out}")
