"""How much of each training batch is real tokens rather than padding, over one epoch, for three ways of cutting
batches: file order (what mlx_lm's length sort amounts to on chat data: it sorts records by `len()` of the JSON
object, 1 for every `{"messages": ...}`), mlx_ft's token-length sort (the default), and packing (`pack: true`, rows
of max_seq_length tokens). The same numbers `python -m mlx_ft train` prints when it starts; here for several data
folders and batch sizes at once, with the steps one epoch takes (packing fits more examples in a step).

Tokenizer: the model's (default the built-in SmolLM2-135M-Instruct), chat template and prompt masking as training
does them (`batches.TokenizedChats`).

Usage: python bench/batching.py [--data data/fish_care data/miners/prepared] [--batch-size 4 8 16]
       [--max-seq-length 512] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlx_ft import data, models  # noqa: E402
from mlx_ft.models.loader import load_model  # noqa: E402
from mlx_ft.training.batches import TokenizedChats, batch_rows, real_token_share  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["data/fish_care", "data/miners/prepared"])
    ap.add_argument("--batch-size", nargs="+", type=int, default=[4, 8, 16])
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    _, tokenizer = load_model(models.resolve(args.model), args.model)
    msl = args.max_seq_length
    print(f"model {args.model}, max_seq_length {msl}; real tokens / padded positions over one epoch")
    print(
        f"{'data':<24} {'examples':>8} {'batch':>5} {'file order':>10} {'by length':>10} {'packed':>8} "
        f"{'steps':>6} {'packed steps':>12}"
    )
    for folder in args.data:
        chats = TokenizedChats(data.load_split(Path(folder), "train"), tokenizer, True, msl, "train")
        for bs in args.batch_size:
            shares = [f"{real_token_share(chats, bs, msl, order):.1%}" for order in ("file", "length", "packed")]
            steps = len(batch_rows(chats, bs, msl, loop=True))
            packed_steps = len(batch_rows(chats, bs, msl, loop=True, pack=True))
            print(
                f"{folder:<24} {len(chats):>8} {bs:>5} {shares[0]:>10} {shares[1]:>10} {shares[2]:>8} {steps:>6} "
                f"{packed_steps:>12}"
            )


if __name__ == "__main__":
    main()
