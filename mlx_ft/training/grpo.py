"""GRPO: learning from rewards on the model's own sampled answers (Shao et al., 2024, DeepSeekMath), in the shape of
every objective (`objectives.Objective`), so the loop runs it as it runs SFT.

Each step, every worker takes its share of `batch_size` prompts and samples `group_size` answers to each
(`temperature`, at most `max_completion_tokens`) on the decode core that serves them (`generation.answers`: the same
batching and samplers as `serve`). Every answer has its own seed, a function of (seed, step, prompt, answer), so a
resumed run samples exactly what an uninterrupted one would, and an answer's random draws are its own whatever is
sampled beside it (the logits still carry the floating-point noise of the batch they were computed in).

The rewards (`rewards.py`) score each answer; its advantage is its reward minus its group's mean, over the group's
standard deviation (the sample one, plus 1e-4, as TRL has it). A group whose answers all earn the same has no signal
and teaches nothing: its share is logged as `no_signal`.

The loss, at each answer token (the clipped surrogate of PPO, Schulman et al. 2017; the KL estimator "k3" of
Schulman 2020, never negative and 0 where the policy is the reference):

    ratio  = exp(logp - logp_old)                 1 at the first update: logp_old is logp, outside the gradient
    policy = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)
    kl     = exp(ref - logp) - (ref - logp) - 1
    loss   = sum over the answer tokens of (policy + beta * kl) / (answer tokens in the global batch)

with every log-probability taken under the distribution the answers were sampled from (the logits divided by the
temperature, as TRL does), normalised as SFT's loss is (`loss.masked_loss`): over the global batch's answer tokens,
so workers compute what one would, and a long answer's tokens count as much as a short one's (DAPO's token-level
mean). The reference is DPO's (`preference.Reference`: the base with the adapter off, or reference_adapter_file);
beta 0 skips it. `grpo_updates` > 1 reuses a batch of answers for that many updates, each ratio taken against the
policy that sampled them.

Validation answers the validation prompts greedily and reports their mean reward; its "loss" is minus that mean, so
best/ and early stopping keep the adapter that earns the most.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_ft import chat_template, data
from mlx_ft.config import TrainConfig
from mlx_ft.inference import generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.training import rewards as rewards_mod
from mlx_ft.training.batches import Prompt, TokenizedPrompts, learned_positions, padded, prompt_batches
from mlx_ft.training.loss import token_logps
from mlx_ft.training.preference import Reference, reference_for

Batch = tuple[mx.array, ...]
STD_EPS = 1e-4
SAMPLES_SHOWN = 4  # sampled answers kept in each training row of metrics.jsonl, for the studio to show


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """(prompts, group_size) rewards → advantages: each reward minus its group's mean, over the group's sample
    standard deviation + STD_EPS; 0 for every answer of a group whose rewards are all equal."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, ddof=1, keepdims=True)
    return (rewards - mean) / (std + STD_EPS)


def token_losses(
    logp: mx.array, old: mx.array, ref: mx.array, adv: mx.array, beta: float, eps: float
) -> tuple[mx.array, mx.array, mx.array]:
    """Per answer token: the loss (clipped policy term + beta x KL), the KL to the reference, and whether the ratio
    was clipped (the update would have pushed it further out of 1 +- eps)."""
    ratio = mx.exp(logp - old)
    policy = -mx.minimum(ratio * adv, mx.clip(ratio, 1 - eps, 1 + eps) * adv)
    kl = mx.exp(ref - logp) - (ref - logp) - 1 if beta else mx.zeros_like(logp)
    clipped = ((ratio < 1 - eps) & (adv < 0)) | ((ratio > 1 + eps) & (adv > 0))
    return policy + beta * kl, kl, clipped


def answer_seed(seed: int, step: int, prompt: int, answer: int) -> int:
    """The sampling seed of one answer: a function of the run's seed, the batch, the prompt and the answer only."""
    return ((seed * 1_000_003 + step) * 1_000_033 + prompt) * 1_031 + answer


class GRPO:
    """Group relative policy optimisation on prompts (`TokenizedPrompts`); see the module's docstring."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.beta, self.eps, self.group = cfg.beta, cfg.clip_epsilon, cfg.group_size
        self.updates = cfg.grpo_updates
        self.prune = True  # leave answers of advantage 0 out of the update when beta is 0 (the same gradient)
        self.rewards: rewards_mod.Rewards | None = None
        self.metrics: tuple[str, ...] = ()
        self.tokenizer: Any = None
        self.model: nn.Module | None = None
        self.reference: Reference | None = None
        self.train_set: TokenizedPrompts | None = None
        self.on_batch: Callable[[list[int], int], None] | None = None
        self.samples: list[dict[str, Any]] = []
        self.end_ids: list[int] = []

    # -------------------------------------------------------------------------------------------- data and batches

    def tokenize(
        self, examples: Sequence[data.Example], tokenizer: Any, max_seq_length: int, desc: str
    ) -> TokenizedPrompts:
        if self.rewards is None:  # checked before the run folder exists: a bad reward leaves nothing behind
            cfg = self.cfg
            self.rewards = rewards_mod.build(cfg.rewards, cfg.recipe, cfg.reward_file, tokenizer)
            names = tuple(f"reward_{n}" for n in self.rewards.names)
            self.metrics = ("reward", "reward_std", *names, "answer_tokens", "no_signal", "sample_s", "kl", "clipped")
            self.tokenizer = tokenizer
            end = chat_template.end_of_turn_id(tokenizer)
            if end is None:
                end = getattr(chat_template.hf_tokenizer(tokenizer), "eos_token_id", None)
            self.end_ids = [end] if end is not None else []
        return TokenizedPrompts(examples, tokenizer, max_seq_length, self.cfg.max_completion_tokens, desc)

    def data_note(self, examples: Sequence[data.Example]) -> str | None:
        assert self.rewards is not None
        return f"grpo: {rewards_mod.describe(self.rewards)}"

    def steps_per_epoch(self, prompts: TokenizedPrompts, batch_size: int, max_seq_length: int) -> int:
        return len(prompts) // batch_size

    def batching_note(self, prompts: TokenizedPrompts, batch_size: int, max_seq_length: int) -> str | None:
        return (
            f"grpo: {batch_size} prompts x {self.group} answers per step (at most {self.cfg.max_completion_tokens} "
            f"tokens each, temperature {self.cfg.temperature:g})"
        )

    def bind(self, cfg: TrainConfig, model: nn.Module) -> None:
        self.model = model
        if self.beta:
            self.reference = reference_for(cfg, model)

    def batches(self, prompts: TokenizedPrompts, batch_size: int, max_seq_length: int, **order: Any) -> Iterator[Batch]:
        """Each step's prompts, as (step number, this worker's prompt indices): `prepare` samples their answers."""
        self.train_set = prompts
        self.on_batch = order.pop("on_batch", None)
        for k, mine in prompt_batches(prompts, batch_size, **order):
            yield mx.array([k]), mx.array(mine)

    # ----------------------------------------------------------------------------------------------------- the step

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int] | None, temp: float) -> list[generation.Answer]:
        """`group_size` answers to each prompt (seeded), or with `seeds` None one greedy answer each; the model
        answers in eval mode (no dropout) and is left in eval mode."""
        assert self.model is not None
        self.model.eval()
        n = self.group if seeds is not None else 1
        ids = [p.ids for p in prompts for _ in range(n)]
        sampling = Sampling(temp=temp, max_tokens=self.cfg.max_completion_tokens)
        return generation.answers(self.model, self.tokenizer, ids, sampling, seeds=seeds)

    def prepare(self, batch: Batch) -> Batch:
        """Sample, score and lay out one step: (ids, mask, positions, advantages, reference and old log-probabilities
        per answer token, normaliser, this step's statistics)."""
        assert self.model is not None and self.rewards is not None and self.train_set is not None
        cfg, model, g = self.cfg, self.model, self.group
        step, indices = batch[0].item(), batch[1].tolist()
        prompts = [self.train_set.items[i] for i in indices]
        tic = time.perf_counter()
        seeds = [answer_seed(cfg.seed, step, i, j) for i in indices for j in range(g)]
        answers = self.sample(prompts, seeds, cfg.temperature)
        sample_s = time.perf_counter() - tic
        model.train()

        scores = [self.rewards.score(p.text, a.text, p.reference) for p, a in zip(_repeat(prompts, g), answers)]
        totals = np.array([self.rewards.total(s) for s in scores], np.float64).reshape(len(prompts), g)
        advantages = group_advantages(totals)
        completions = [a.tokens + (self.end_ids if a.finish_reason == "stop" else []) for a in answers]
        rows = [(p.ids + c, [0] * len(p.ids) + [1] * len(c)) for p, c in zip(_repeat(prompts, g), completions)]
        row_adv = advantages.reshape(-1)
        answer_tokens = sum(len(c) for c in completions)  # the normaliser counts every answer, updated on or not
        if self.prune and not self.beta:
            # Without a KL term an answer of advantage 0 adds nothing to the loss or its gradient: it is left out of
            # the update (a tuned model's groups often all earn the same, and the update costs what sampling does).
            keep = [i for i in range(len(rows)) if row_adv[i] != 0] or [0]
            rows, row_adv = [rows[i] for i in keep], row_adv[keep]
        ids_np, mask_np = padded(rows, cfg.max_seq_length, (np.int32, np.int8))
        ids, mask = mx.array(ids_np), mx.array(mask_np)
        positions_np = learned_positions(mask_np)
        width = mask_np.shape[1] - 1
        padded_adv = np.append(row_adv, 0.0)  # the padding index reads the appended 0
        adv = mx.array(padded_adv[np.minimum(positions_np // width, len(rows))].astype(np.float32))
        positions = mx.array(positions_np)
        if self.on_batch is not None:
            self.on_batch([len(r[0]) for r in rows], int(mask_np[:, 1:].sum()))

        world = mx.distributed.init()
        count = mx.array(float(answer_tokens))
        if world.size() > 1:
            count = mx.distributed.all_sum(count, stream=mx.cpu)
        norm = mx.maximum(count, 1) / world.size()
        temp = cfg.temperature
        ref = self.reference.token_logps(ids, mask, positions, temp) if self.reference else mx.zeros(adv.shape)
        old = mx.zeros(adv.shape)
        if self.updates > 1:
            model.eval()
            old = mx.stop_gradient(token_logps(model, ids, mask, positions, temp)[0])
            mx.eval(old)
            model.train()

        per_reward = np.array(scores, np.float64).mean(axis=0)
        stats = [
            totals.mean(),
            totals.std(axis=1, ddof=1).mean(),
            *per_reward,
            np.mean([len(c) for c in completions]),
            float(np.mean(totals.max(axis=1) == totals.min(axis=1))),
            sample_s,
        ]
        self.samples = [
            {"prompt": p.text[:300], "answer": a.text[:300], "reward": round(float(t), 4)}
            for p, a, t in list(zip(_repeat(prompts, g), answers, totals.reshape(-1)))[:: max(1, g // 2)][
                :SAMPLES_SHOWN
            ]
        ]
        return ids, mask, positions, adv, ref, old, norm, mx.array(stats, mx.float32)

    def loss(
        self,
        model: nn.Module,
        ids: mx.array,
        mask: mx.array,
        positions: mx.array,
        adv: mx.array,
        ref: mx.array,
        old: mx.array,
        norm: mx.array,
        stats: mx.array,
    ) -> tuple[mx.array, mx.array]:
        """The compiled step's loss, and `metrics`: the step's statistics from `prepare`, then the mean KL and the
        share of clipped tokens."""
        logp, w = token_logps(model, ids, mask, positions, self.cfg.temperature)
        if self.updates == 1:  # the policy that sampled is this one: the ratio is 1, its gradient the policy's
            old = mx.stop_gradient(logp)
        per, kl, clipped = token_losses(logp, old, ref, adv, self.beta, self.eps)
        tokens = mx.maximum(w.sum(), 1)
        extra = mx.stack([(kl * w).sum() / tokens, (clipped.astype(mx.float32) * w).sum() / tokens])
        return (per * w).sum() / norm, mx.stop_gradient(mx.concatenate([stats, extra]))

    def extras(self) -> dict[str, Any]:
        """What a training row of metrics.jsonl shows beside the numbers: a few answers of the last step."""
        return {"samples": self.samples} if self.samples else {}

    # -------------------------------------------------------------------------------------------------- validation

    def evaluate(
        self,
        model: nn.Module,
        prompts: TokenizedPrompts,
        batch_size: int,
        max_seq_length: int,
        num_batches: int,
        clear_cache_threshold: int = 0,
        on_batch: Any = None,
        after_batch: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """The mean reward of greedy answers to the validation prompts (up to num_batches x batch_size of them, in a
        fixed shuffled order; -1: all), each reward's mean, and "loss": minus the mean reward. Leaves the model in
        eval mode."""
        assert self.rewards is not None
        world = mx.distributed.init()
        order = np.random.default_rng(0).permutation(len(prompts)).tolist()
        if num_batches > 0:
            order = order[: num_batches * batch_size]
        mine = [prompts.items[i] for i in order[world.rank() :: world.size()]]
        sums = np.zeros(1 + len(self.rewards.names))
        for start in range(0, len(mine), batch_size * self.group):
            part = mine[start : start + batch_size * self.group]
            answers = self.sample(part, None, 0.0)
            for p, a in zip(part, answers):
                values = self.rewards.score(p.text, a.text, p.reference)
                sums += [self.rewards.total(values), *values]
            if after_batch is not None:
                after_batch()
        totals = mx.array([*sums, len(mine)], mx.float32)
        if world.size() > 1:
            totals = mx.distributed.all_sum(totals, stream=mx.cpu)
        *summed, count = totals.tolist()
        means = [s / max(count, 1) for s in summed]
        return {
            "loss": -means[0],
            "reward": means[0],
            **{f"reward_{n}": v for n, v in zip(self.rewards.names, means[1:])},
        }

    def describe(self, row: dict[str, Any], prefix: str = "") -> str:
        if "reward" not in row:
            return ""
        assert self.rewards is not None
        text = f"  {prefix}reward {row['reward']:.3f}"
        if len(self.rewards.names) > 1:
            text += " (" + ", ".join(f"{n} {row.get(f'reward_{n}', 0):.2f}" for n in self.rewards.names) + ")"
        if "kl" in row:
            text += (
                f"  kl {row['kl']:.4f}  answer {row['answer_tokens']:.0f} tok  no signal {row['no_signal']:.0%}"
                f"  sampling {row['sample_s']:.1f} s"
            )
        return text


def _repeat(items: Sequence[Any], n: int) -> Iterator[Any]:
    """Each item `n` times in a row: the prompt of each answer of its group."""
    for item in items:
        for _ in range(n):
            yield item
