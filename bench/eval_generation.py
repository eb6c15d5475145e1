"""How `eval` generates: one batched pass (`generation.answer_many`: the decode core's scheduler, mlx_lm's
BatchGenerator with continuous batching, up to 32 answers at once) against answering the same prompts one at a time
(`generation.answer`: the same core with one answer in the batch, what a loop of `infer` calls does minus the model
load), greedy, in one process on one loaded model.

Default: the built-in SmolLM2-135M-Instruct on the shipped fish-care test split, at most --max-tokens per answer.
Both sides must produce the same answers (greedy); the script checks it and prints answers/s, generated tokens/s
and the ratio batched / sequential. The sequential side runs first once untimed on two prompts to warm up.
"""

from __future__ import annotations

import argparse
import time

import mlx_ft  # noqa: F401  (binds MLX to OpenBLAS on Linux before mlx.core loads)
from mlx_ft import data
from mlx_ft.inference import evaluate, generation
from mlx_ft.models import loader
from mlx_ft.resources import local_or_shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="data/fish_care")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    loaded = loader.load(args.model)
    prompts = [t.prompt for t in evaluate.targets(data.load_split(local_or_shipped(args.data), args.split))]
    sampling = generation.Sampling(max_tokens=args.max_tokens)
    for p in prompts[:2]:
        generation.answer(loaded.model, loaded.tokenizer, p, sampling)
    generation.answer_many(loaded.model, loaded.tokenizer, prompts[:2], sampling)

    t0 = time.perf_counter()
    one_by_one = [generation.answer(loaded.model, loaded.tokenizer, p, sampling) for p in prompts]
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = generation.answer_many(loaded.model, loaded.tokenizer, prompts, sampling)
    t_batch = time.perf_counter() - t0

    n_tokens = sum(len(loaded.tokenizer.encode(a, add_special_tokens=False)) for a in batched)
    same = sum(a == b for a, b in zip(one_by_one, batched))
    print(
        f"{args.model} on {args.data}/{args.split}.jsonl: {len(prompts)} prompts, max {args.max_tokens} tokens, "
        f"{n_tokens} tokens generated; identical answers {same}/{len(prompts)}"
    )
    print(f"{'':12}{'seconds':>9}{'answers/s':>11}{'tokens/s':>10}")
    for name, t in (("one by one", t_seq), ("batched", t_batch)):
        print(f"{name:12}{t:9.1f}{len(prompts) / t:11.2f}{n_tokens / t:10.1f}")
    print(f"batched / one by one: {t_seq / t_batch:.2f}x")


if __name__ == "__main__":
    main()
