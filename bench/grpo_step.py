"""What a GRPO step costs against an SFT step on the same prompts: seconds per step split into sampling (the decode
core generating `group_size` answers to each prompt, `generation.answers` as `GRPO.sample` calls it) and the update
(the reference's pass when beta > 0, then mlx_ft's compiled step: forward, backward and the optimizer on the sampled
rows), through mlx_ft's own objectives (`training.grpo.GRPO`, `training.objectives.SFT`'s loss) and compiled step
(`training.loop.compiled_step`), one process.

Data: data/miners/listings.jsonl prepared with the miners recipe in a temporary folder (what
`python -m mlx_ft prepare data/miners/listings.jsonl --recipe miners --group-field group` writes), its train split.
Reward: the recipe's `fields` (recipes/miners/grpo_config.yaml). Settings: the built-in SmolLM2-135M-Instruct, LoRA
rank 16 scale 20 dropout 0 on the last 12 layers (recipes/miners/lora_config.yaml), batch 4 prompts, temperature
1.0, max_completion_tokens 40, max_seq_length 256, Adam lr 5e-5, seed 0. Every variant starts from the same adapter
(fresh LoRA, its B zero: the base model; or --adapter, e.g. the SFT run the recipe's GRPO stage starts from) with a
fresh optimizer, runs one warm-up step (it compiles), then --steps measured ones.

The prompts are the same for every variant: GRPO's k-th batch of seed 0 (`batches.prompt_batches`). The SFT step learns
those prompts' reference answers (batch 4 rows, prompt masked); a GRPO step of group size g samples 4 x g answers and
learns from 4 x g rows. Columns, seconds per measured step:
- sample: `GRPO.sample` (prefill and decode of all the answers, eval mode);
- ref: the reference's log-probabilities (the base with the adapter off; beta > 0 only, evaluated eagerly);
- step: the compiled step on the prepared rows (evaluated); a width not seen before in that variant (rows are
  padded to a multiple of 32, so answer lengths change it) retraces the compiled step inside the timing, as it does
  in a real run: `retraced` counts those measured steps;
- other: the rest of `GRPO.prepare` (rewards, advantages, padding);
- update = ref + step; total = sample + update + other; `vs SFT` = total / the SFT step; `sample share` =
  sample / total; `gen tok/s`: tokens the decode core produced (answer tokens plus the end-of-turn token of each
  answer that stopped) per second of sampling.
An untrained adapter answers the listings with whatever the base model says, often until max_completion_tokens;
the reference answers are 21-28 tokens, so an adapter that answers like them (--adapter) samples fewer tokens per
step: `ans tok` is the mean answer length, `reward` the mean reward of the sampled answers.

Timings on a 2-core CPU scatter by ~10% even on an idle machine; the load average is printed before and after.
Measured on the 2-core CPU with defaults while another training job ran (load average 5-6: this process got about
half the CPU; 451 s in all, 5.2 CPU-minutes): SFT 5.11 s/step (4 rows x 96); GRPO g4 52.6 s (10.3x; sampling 24.0 s,
46%, 26.5 tok/s; step 28.7 s on 16 x 128), g8 92.7 s (18.1x; sampling 36.4 s, 39%, 34.6 tok/s; step 56.2 s on
32 x 128). The untrained adapter's answers ran to the 40-token limit and earned reward 0 (no signal).

Usage: python bench/grpo_step.py [--steps 2] [--batch 4] [--groups 4,8] [--beta 0] [--max-completion-tokens 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx_ft  # noqa: F401 -- binds MLX to OpenBLAS before anything imports mlx.core
from mlx_ft import config, data, models
from mlx_ft.data import recipes
from mlx_ft.models import adapters
from mlx_ft.models.loader import load_model
from mlx_ft.training.batches import TokenizedChats, iterate_batches, prompt_batches
from mlx_ft.training.grpo import GRPO
from mlx_ft.training.loop import compiled_step, seed_for_step
from mlx_ft.training.loss import masked_loss
from mlx_ft.training.objectives import clear_cache

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from blas_sides import fast_blas

REPO = Path(__file__).resolve().parent.parent
SEED = 0
# The miners recipe's adapter and run settings (recipes/miners/lora_config.yaml, grpo_config.yaml).
SETTINGS = {
    "model": "smollm2-135m-instruct",
    "fine_tune_type": "lora",
    "num_layers": 12,
    "lora_parameters": {"rank": 16, "scale": 20.0, "dropout": 0.0},
    "max_seq_length": 256,
    "learning_rate": 5e-5,
    "seed": SEED,
}
GRPO_SETTINGS = {"train_mode": "grpo", "recipe": "miners", "rewards": [{"name": "fields", "weight": 1.0}]}


def miners_chats(tmp: Path) -> list[data.Example]:
    """The miners listings prepared with their recipe (as `mlx_ft prepare ... --recipe miners --group-field group`
    writes them), train split."""
    recipe = recipes.load("miners")
    out = tmp / "miners"
    opts = data.Options(system=recipe.system, recipe=recipe, keep=("task", "group"))
    data.prepare([REPO / "data" / "miners" / "listings.jsonl"], out, opts=opts, group="group")
    return list(data.load_split(out, "train"))


class Timed:
    """Wraps a function: the seconds and results of each call since the last `take`."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.results = fn, 0.0, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tic = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds += time.perf_counter() - tic
        self.results.append(out)
        return out

    def take(self) -> tuple[float, list[Any]]:
        seconds, results = self.seconds, self.results
        self.seconds, self.results = 0.0, []
        return seconds, results


def run_grpo(
    model: nn.Module, tok: Any, chats: list[data.Example], cfg: config.TrainConfig, order: list[list[int]]
) -> list[dict[str, Any]]:
    """The GRPO steps of the prompt batches `order` (a warm-up one, then the measured ones) as the loop runs them;
    per step its parts' seconds and sizes."""
    objective = GRPO(cfg)
    prompts = objective.tokenize(chats, tok, cfg.max_seq_length, "train")
    objective.bind(cfg, model)
    sample = objective.sample = Timed(objective.sample)
    ref = None
    if objective.reference is not None:
        ref = objective.reference.token_logps = Timed(objective.reference.token_logps)
    step_fn, state = compiled_step(model, optim.Adam(learning_rate=cfg.learning_rate), 1, objective.loss)
    batches = objective.batches(prompts, cfg.batch_size, cfg.max_seq_length, loop=True, seed=SEED)
    model.train()
    out = []
    for k, indices in enumerate(order):
        mx.random.seed(seed_for_step(SEED, k + 1))
        batch = next(batches)
        if batch[1].tolist() != indices:
            raise SystemExit(f"GRPO's batch {k} holds other prompts than SFT's: not the same work")
        tic = time.perf_counter()
        batch = objective.prepare(batch)
        prepare_s = time.perf_counter() - tic
        tic = time.perf_counter()
        loss, aux, _ = step_fn(batch, None, True)
        mx.eval(state, loss, aux)
        step_s = time.perf_counter() - tic
        clear_cache(cfg.clear_cache_threshold)
        sample_s, [answers] = sample.take()
        ref_s = ref.take()[0] if ref is not None else 0.0
        made = sum(len(a.tokens) + (a.finish_reason == "stop") for a in answers)
        out.append(
            {
                "sample": sample_s,
                "ref": ref_s,
                "other": prepare_s - sample_s - ref_s,
                "step": step_s,
                "shape": tuple(batch[0].shape),
                "generated": made,
                "answer_tokens": statistics.mean(len(a.tokens) for a in answers),
                "reward": aux[0].item(),
            }
        )
    return out


def sft_batches(tok: Any, chats: list[data.Example], order: list[list[int]], msl: int) -> Iterator[tuple]:
    """SFT's batch of each prompt batch in `order`: those examples' reference answers, prompt masked."""
    for indices in order:
        chosen = TokenizedChats([chats[i] for i in indices], tok, True, msl, "sft")
        if len(chosen) != len(indices):
            raise SystemExit(f"SFT left out {len(indices) - len(chosen)} of the batch's examples: not the same prompts")
        yield next(iterate_batches(chosen, len(indices), msl))


def run_sft(model: nn.Module, cfg: config.TrainConfig, batches: list[tuple], steps: int) -> list[dict[str, Any]]:
    """Warm-up plus `steps` SFT steps on the prepared `batches`."""
    step_fn, state = compiled_step(model, optim.Adam(learning_rate=cfg.learning_rate), 1, masked_loss)
    model.train()
    out = []
    for k in range(steps + 1):
        mx.random.seed(seed_for_step(SEED, k + 1))
        tic = time.perf_counter()
        loss, aux, _ = step_fn(batches[k], None, True)
        mx.eval(state, loss, aux)
        out.append({"sample": 0.0, "ref": 0.0, "other": 0.0, "step": time.perf_counter() - tic})
        out[-1]["shape"] = tuple(batches[k][0].shape)
        clear_cache(cfg.clear_cache_threshold)
    return out


def summary(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the measured steps (the first, warm-up, step left out)."""
    seen = {rows[0]["shape"][1]}
    retraced = 0
    for r in rows[1:]:
        retraced += r["shape"][1] not in seen
        seen.add(r["shape"][1])
    timed = rows[1:]
    s = {key: statistics.mean(r[key] for r in timed) for key in ("sample", "ref", "other", "step")}
    s["update"] = s["ref"] + s["step"]
    s["total"] = s["sample"] + s["update"] + s["other"]
    s["totals"] = [r["sample"] + r["ref"] + r["other"] + r["step"] for r in timed]
    s["warmup"] = sum(rows[0][k] for k in ("sample", "ref", "other", "step"))
    s["rows"] = rows[0]["shape"][0]
    s["widths"] = sorted({r["shape"][1] for r in timed})
    s["retraced"] = retraced
    s["name"] = name
    if "generated" in timed[0]:
        s["tok_s"] = sum(r["generated"] for r in timed) / max(sum(r["sample"] for r in timed), 1e-9)
        s["answer_tokens"] = statistics.mean(r["answer_tokens"] for r in timed)
        s["reward"] = statistics.mean(r["reward"] for r in timed)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SETTINGS["model"])
    ap.add_argument("--steps", type=int, default=2, help="measured steps per variant (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=4, help="prompts per step (SFT: examples per step)")
    ap.add_argument("--groups", default="4,8", help="GRPO group sizes, comma-separated (answers per prompt)")
    ap.add_argument("--beta", type=float, default=0.0, help="KL weight; above 0 adds the reference's pass")
    ap.add_argument("--max-completion-tokens", type=int, default=40)
    ap.add_argument("--adapter", help="adapters.safetensors to start every variant from (e.g. the miners SFT run's)")
    args = ap.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g.strip()]
    if args.steps < 1 or not groups:
        raise SystemExit("--steps must be at least 1 and --groups name at least one group size")
    t0 = time.time()
    load = os.getloadavg()
    print(f"cpu cores: {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    blas = fast_blas() or "the platform's"
    print(f"BLAS: {blas} (every variant runs in this process)")

    model_dir = models.resolve(args.model)
    model, tok = load_model(model_dir, args.model)
    with tempfile.TemporaryDirectory(prefix="mlx_ft-bench-") as tmp:
        chats = miners_chats(Path(tmp))
    base = {**SETTINGS, "model": args.model, "batch_size": args.batch}
    sft_cfg = config.build(base)
    mx.random.seed(SEED)
    adapters.attach(model, sft_cfg)
    if args.adapter:
        model.load_weights(args.adapter, strict=False)
    start = tree_flatten(model.trainable_parameters())

    def cfg_for(group: int) -> config.TrainConfig:
        extra = {"group_size": group, "beta": args.beta, "max_completion_tokens": args.max_completion_tokens}
        return config.build({**base, **GRPO_SETTINGS, **extra})

    # The prompts of the first steps + 1 GRPO batches (the same for every group size), and SFT's batches of them.
    prompts = GRPO(cfg_for(groups[0])).tokenize(chats, tok, sft_cfg.max_seq_length, "train")
    if len(prompts) != len(chats):
        raise SystemExit(f"{len(chats) - len(prompts)} prompts left out: GRPO's and SFT's examples would differ")
    order = [mine for _, (_, mine) in zip(range(args.steps + 1), prompt_batches(prompts, args.batch, True, SEED))]
    sft_set = list(sft_batches(tok, chats, order, sft_cfg.max_seq_length))
    print(
        f"model {args.model}; {len(chats)} miners prompts (train split); batch {args.batch} prompts; LoRA r16 on the "
        f"last 12 layers; max_completion_tokens {args.max_completion_tokens}; beta {args.beta:g}; "
        f"{args.steps} measured steps after 1 warm-up step per variant"
        + (f"; from {args.adapter}" if args.adapter else "")
    )

    results = []
    for group in [None, *groups]:
        model.load_weights(start, strict=False)  # every variant from the same adapter, with a fresh optimizer
        if group is None:
            results.append(summary("sft", run_sft(model, sft_cfg, sft_set, args.steps)))
        else:
            results.append(summary(f"grpo g{group}", run_grpo(model, tok, chats, cfg_for(group), order)))
        r = results[-1]
        print(f"  {r['name']}: warm-up step {r['warmup']:.2f} s; measured {' '.join(f'{x:.2f}' for x in r['totals'])}")

    sft = results[0]
    print(
        f"\n{'variant':<9} {'rows':>4} {'widths':>10} {'sample':>7} {'ref':>6} {'step':>6} {'update':>7} {'other':>6} "
        f"{'total':>7} {'SFT':>6} {'vs SFT':>7} {'sample share':>12} {'gen tok/s':>9} {'ans tok':>7} {'reward':>6} "
        f"{'retraced':>8}"
    )
    for r in results:
        widths = ",".join(str(w - 1) for w in r["widths"])  # positions the model reads (the +1 is the last target)
        line = f"{r['name']:<9} {r['rows']:>4} {widths:>10} "
        if r is sft:
            line += f"{'-':>7} {'-':>6} {r['step']:>6.2f} {r['update']:>7.2f} {'-':>6} {r['total']:>7.2f} "
            line += f"{r['total']:>6.2f} {'1.00x':>7} {'-':>12} {'-':>9} {'-':>7} {'-':>6} "
        else:
            ref = f"{r['ref']:>6.2f}" if args.beta else f"{'-':>6}"
            line += (
                f"{r['sample']:>7.2f} {ref} {r['step']:>6.2f} {r['update']:>7.2f} {r['other']:>6.2f} "
                f"{r['total']:>7.2f} {sft['total']:>6.2f} {r['total'] / sft['total']:>6.2f}x "
                f"{r['sample'] / r['total']:>12.0%} {r['tok_s']:>9.1f} {r['answer_tokens']:>7.1f} {r['reward']:>6.3f} "
            )
        print(line + f"{r['retraced']:>8}")
    print(
        "seconds per measured step (means); update = ref + step; vs SFT = total / the SFT step on the same prompts; "
        "gen tok/s = tokens decoded per second of sampling"
    )
    load = os.getloadavg()
    print(f"({time.time() - t0:.0f} s; load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")


if __name__ == "__main__":
    main()
