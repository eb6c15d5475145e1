"""Preference tuning: the DPO and ORPO losses over chosen/rejected pairs, and DPO's reference model.

Both compare whole answers: the log-probability of each answer's tokens given the prompt, summed over the final
answer's learned tokens (the prompt, and any earlier turn both sides share, are masked; `batches.TokenizedPairs`).

- DPO (Rafailov et al., 2023): reward r = beta * (log p_policy(answer) - log p_reference(answer)); the loss is
  -log sigmoid(r_chosen - r_rejected), averaged over pairs. The reference costs no second model: it is the same
  model with its adapter switched off (each LoRA/DoRA layer's own base layer), or with the weights of a given
  reference adapter; a full fine-tune keeps a frozen copy of the layers it trains (their size again in memory).
  Its log-probabilities are computed once per batch, outside the gradient.
- ORPO (Hong et al., 2024): no reference. With m = the mean log-probability per answer token, the loss is
  -m_chosen + beta * -log sigmoid(log odds(chosen) - log odds(rejected)), odds(m) = e^m / (1 - e^m): the SFT loss
  on the chosen answer plus an odds-ratio penalty (LLaMA-Factory's form; beta is the paper's lambda). Its rewards
  are beta * m, as in TRL.

Accuracy is the share of pairs whose chosen reward is above the rejected one; the margin is their mean difference.
The DPO and ORPO objectives that put these in the loop are in `objectives.py`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlx_ft.config import TrainConfig
from mlx_ft.errors import UserError
from mlx_ft.training.batches import TokenizedPairs, pair_batches
from mlx_ft.training.loss import sequence_logps, token_logps

METRICS = ("rewards_chosen", "rewards_rejected", "reward_margin", "accuracy")


def dpo_losses(
    chosen: mx.array, rejected: mx.array, ref_chosen: mx.array, ref_rejected: mx.array, beta: float
) -> tuple[mx.array, mx.array, mx.array]:
    """Per pair: DPO's loss and the two rewards, from summed answer log-probabilities."""
    r_chosen, r_rejected = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
    return -nn.log_sigmoid(r_chosen - r_rejected), r_chosen, r_rejected


def _log1m_exp(x: mx.array) -> mx.array:
    """log(1 - e^x) for x < 0, accurate near 0 (an answer the model is nearly sure of)."""
    return mx.log(-mx.expm1(mx.minimum(x, -1e-7)))


def orpo_losses(chosen_mean: mx.array, rejected_mean: mx.array, beta: float) -> tuple[mx.array, mx.array, mx.array]:
    """Per pair: ORPO's loss and the two rewards, from mean log-probabilities per answer token."""
    log_odds = (chosen_mean - rejected_mean) - (_log1m_exp(chosen_mean) - _log1m_exp(rejected_mean))
    return -chosen_mean - beta * nn.log_sigmoid(log_odds), beta * chosen_mean, beta * rejected_mean


class Reference:
    """DPO's reference model, on the policy's own weights: `logps` runs the model with its adapter switched off, or,
    given `weights`, with those in place of its trainable parameters, and puts everything back afterwards."""

    def __init__(self, model: nn.Module, weights: dict[str, mx.array] | None = None) -> None:
        self.model, self.weights = model, weights

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        model, training = self.model, self.model.training
        model.eval()  # no dropout: the reference is a fixed function
        if self.weights is None:
            adapted = [(name, m) for name, m in model.named_modules() if hasattr(m, "lora_a")]
            model.update_modules(tree_unflatten([(name, _base_layer(m)) for name, m in adapted]))
            restore = lambda: model.update_modules(tree_unflatten(adapted))  # noqa: E731
        else:
            current = tree_flatten(model.trainable_parameters())
            model.update(tree_unflatten(list(self.weights.items())))
            restore = lambda: model.update(tree_unflatten(current))  # noqa: E731
        try:
            yield
        finally:
            restore()
            model.train(training)

    def logps(self, ids: mx.array, mask: mx.array, positions: mx.array) -> mx.array:
        with self.active():
            logps, _ = sequence_logps(self.model, ids, mask, positions)
            mx.eval(logps)  # now, while the reference is the model
        return mx.stop_gradient(logps)

    def token_logps(self, ids: mx.array, mask: mx.array, positions: mx.array, temperature: float = 1.0) -> mx.array:
        """The reference's log-probability of each learned token (`loss.token_logps`), outside the gradient."""
        with self.active():
            logps, _ = token_logps(self.model, ids, mask, positions, temperature)
            mx.eval(logps)
        return mx.stop_gradient(logps)


def _base_layer(module: nn.Module) -> nn.Module:
    """The layer an mlx_lm LoRA/DoRA layer wraps (`linear`, or `embedding` for an adapted embedding)."""
    return module.linear if hasattr(module, "linear") else module.embedding


def reference_for(cfg: TrainConfig, model: nn.Module) -> Reference:
    """The reference of DPO (and of GRPO's KL penalty), built right after the adapter is attached (before any warm
    start or checkpoint loads): the base with the adapter switched off; a given reference adapter; or, for a full
    fine-tune, a frozen copy of the layers it trains."""
    trainable = dict(tree_flatten(model.trainable_parameters()))
    if cfg.reference_adapter_file:
        path = Path(cfg.reference_adapter_file)
        try:
            weights = mx.load(str(path))
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{path}: unreadable reference adapter ({e})") from None
        misfits = sorted(set(weights) ^ set(trainable)) or [
            k for k in weights if weights[k].shape != trainable[k].shape
        ]
        if misfits:
            raise UserError(
                f"{path}: the reference adapter does not fit this run's {cfg.fine_tune_type} layers (first misfit: "
                f"{misfits[0]}); give one trained with the same fine_tune_type, num_layers and lora_parameters"
            )
        print(f"mlx_ft: {cfg.train_mode.upper()} reference: the base with the adapter {path}", file=sys.stderr)
        return Reference(model, weights)
    if cfg.fine_tune_type == "full":
        size = sum(v.nbytes for v in trainable.values())
        print(
            f"mlx_ft: {cfg.train_mode.upper()} reference: a frozen copy of the trained layers "
            f"({size / 1e6:,.0f} MB more memory)",
            file=sys.stderr,
        )
        return Reference(model, trainable)  # arrays are immutable: the optimizer's updates make new ones
    print(
        f"mlx_ft: {cfg.train_mode.upper()} reference: the base model with the adapter switched off (no extra memory)",
        file=sys.stderr,
    )
    return Reference(model)


def pair_scores(model: nn.Module, pairs: TokenizedPairs, batch_size: int, max_seq_length: int) -> dict[str, Any]:
    """How a model ranks each pair's answers by itself: the share whose chosen answer has the higher summed
    log-probability, and the mean of that difference (what `eval` reports, base beside tuned)."""
    wins = margin = count = 0.0
    for ids, mask, positions, weight in pair_batches(pairs, batch_size, max_seq_length):
        logps, _ = sequence_logps(model, ids, mask, positions)
        n = ids.shape[0] // 2
        diff = logps[:n] - logps[n:]
        wins += float(((diff > 0) * weight).sum())
        margin += float((diff * weight).sum())
        count += float(weight.sum())
    return {"pairs": int(count), "preference_accuracy": wins / max(count, 1), "logp_margin": margin / max(count, 1)}
