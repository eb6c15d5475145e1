"""Training objectives, in one shape, so that the loop and `train` never ask which one they run.

An objective says
- how it tokenizes a split (`tokenize`; `data_note`: what it makes of the data it is given),
- how it cuts training and validation batches (`batches`), how many make an epoch (`steps_per_epoch`) and how
  much of them is padding (`batching_note`),
- what it needs once the adapter is on the model (`bind`: DPO's reference),
- what a step needs beyond its batch, computed outside the gradient (`prepare`: DPO's reference log-probabilities),
- its loss for the compiled step (`loss(model, *batch) -> (loss, aux)`) and the names of the metrics in `aux`
  (`metrics`; SFT has none beyond the loss),
- how it scores a split (`evaluate`: "loss" and those metrics, means over all workers), and how its metrics read
  on the progress line (`describe`).

- how many optimizer updates a prepared batch makes (`updates`: GRPO may reuse its sampled answers), and what a
  training row of metrics.jsonl shows beside the numbers (`extras`: GRPO's sampled answers).

SFT, DPO and ORPO implement it here, GRPO in `grpo.py`; `for_config` picks one by the config's train_mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import mlx.core as mx
import mlx.nn as nn

from mlx_ft import data
from mlx_ft.config import TrainConfig
from mlx_ft.training.batches import (
    TokenizedChats,
    TokenizedPairs,
    TokenizedPrompts,
    batch_rows,
    batching_note,
    iterate_batches,
    pair_batches,
)
from mlx_ft.training.grpo import GRPO
from mlx_ft.training.loss import masked_loss, sequence_logps
from mlx_ft.training.preference import METRICS, Reference, dpo_losses, orpo_losses, reference_for

Batch = tuple[mx.array, ...]
OnBatch = Callable[[list[int], int], None]
D = TypeVar("D", TokenizedChats, TokenizedPairs, TokenizedPrompts)


class Objective(Protocol[D]):
    """What a run learns from its data; `D` is its tokenized split."""

    metrics: tuple[str, ...]  # what `loss`'s aux holds, in order, and `evaluate` reports beside "loss"
    updates: int  # optimizer updates per prepared batch (GRPO may reuse its sampled answers; others: 1)

    def tokenize(self, examples: Sequence[data.Example], tokenizer: Any, max_seq_length: int, desc: str) -> D: ...

    def data_note(self, examples: Sequence[data.Example]) -> str | None: ...

    def steps_per_epoch(self, dataset: D, batch_size: int, max_seq_length: int) -> int: ...

    def batching_note(self, dataset: D, batch_size: int, max_seq_length: int) -> str | None: ...

    def bind(self, cfg: TrainConfig, model: nn.Module) -> None: ...

    def batches(self, dataset: D, batch_size: int, max_seq_length: int, **order: Any) -> Iterator[Batch]: ...

    def prepare(self, batch: Batch) -> Batch: ...

    def loss(self, model: nn.Module, *batch: mx.array) -> tuple[mx.array, mx.array]: ...

    def evaluate(
        self,
        model: nn.Module,
        dataset: D,
        batch_size: int,
        max_seq_length: int,
        num_batches: int,
        clear_cache_threshold: int = 0,
        on_batch: OnBatch | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> dict[str, float]: ...

    def describe(self, row: dict[str, Any], prefix: str = "") -> str: ...

    def extras(self) -> dict[str, Any]: ...


def for_config(cfg: TrainConfig) -> SFT | Preference | GRPO:
    """The objective of cfg.train_mode."""
    if cfg.train_mode == "sft":
        return SFT(cfg.mask_prompt, cfg.pack)
    if cfg.train_mode == "grpo":
        return GRPO(cfg)
    return pair_objective(cfg.train_mode, cfg.beta)


def pair_objective(mode: str, beta: float, reference: Reference | None = None) -> Preference:
    """DPO (with `reference`, or the one `bind` builds) or ORPO, by train_mode."""
    if mode == "dpo":
        return DPO(beta, reference)
    if mode == "orpo":
        return ORPO(beta)
    raise ValueError(f"unknown preference mode {mode!r}")


def clear_cache(threshold: int) -> None:
    """Hand MLX's cached buffers back once they pass `threshold` bytes (as mlx_lm does: 0 frees them every step)."""
    if mx.get_cache_memory() > threshold:
        mx.clear_cache()


def weighted_sums(
    batches: Iterable[Batch],
    num_batches: int,
    score: Callable[[Batch], tuple[mx.array, mx.array]],
    totals: mx.array,
    clear_cache_threshold: int,
    after_batch: Callable[[], None] | None = None,
) -> tuple[mx.array, mx.array]:
    """Over `num_batches` batches (-1: all) and all workers: the sum of each batch's values x weight (`score` gives
    both) added to `totals`, and the sum of the weights. `after_batch` runs once a batch is scored."""
    count = mx.array(0.0)
    limit = range(num_batches) if num_batches > 0 else itertools.count()
    for _, batch in zip(limit, batches):
        values, weight = score(batch)
        totals, count = totals + values * weight, count + weight
        mx.eval(totals, count)
        clear_cache(clear_cache_threshold)
        if after_batch is not None:
            after_batch()
    return mx.distributed.all_sum(totals, stream=mx.cpu), mx.distributed.all_sum(count, stream=mx.cpu)


class SFT:
    """Supervised fine-tuning: cross-entropy over every learned token (`loss.masked_loss`), batches by token length
    or packed."""

    metrics: tuple[str, ...] = ()
    updates = 1
    loss = staticmethod(masked_loss)  # the compiled step's own function: nothing in between

    def __init__(self, mask_prompt: bool = True, pack: bool = False) -> None:
        self.mask_prompt, self.pack = mask_prompt, pack

    def tokenize(
        self, examples: Sequence[data.Example], tokenizer: Any, max_seq_length: int, desc: str
    ) -> TokenizedChats:
        return TokenizedChats(examples, tokenizer, self.mask_prompt, max_seq_length, desc)

    def data_note(self, examples: Sequence[data.Example]) -> str | None:
        if any(ex.rejected is not None for ex in examples):
            return "holds preference pairs; train_mode sft learns their chosen answers"
        return None

    def steps_per_epoch(self, chats: TokenizedChats, batch_size: int, max_seq_length: int) -> int:
        return len(batch_rows(chats, batch_size, max_seq_length, loop=True, pack=self.pack))

    def batching_note(self, chats: TokenizedChats, batch_size: int, max_seq_length: int) -> str | None:
        return batching_note(chats, batch_size, max_seq_length, self.pack)

    def bind(self, cfg: TrainConfig, model: nn.Module) -> None:
        pass

    def batches(self, chats: TokenizedChats, batch_size: int, max_seq_length: int, **order: Any) -> Iterator[Batch]:
        return iterate_batches(chats, batch_size, max_seq_length, pack=self.pack, **order)

    def prepare(self, batch: Batch) -> Batch:
        return batch

    def evaluate(
        self,
        model: nn.Module,
        chats: TokenizedChats,
        batch_size: int,
        max_seq_length: int,
        num_batches: int,
        clear_cache_threshold: int = 0,
        on_batch: OnBatch | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """Mean loss per learned token. Leaves the model in eval mode. `on_batch` sees each batch's lengths as it is
        made (iterate_batches'); eval batches are never packed, and normalised by their own learned tokens."""
        model.eval()
        world = mx.distributed.init()
        batches = iterate_batches(chats, batch_size, max_seq_length, comm_group=world, on_batch=on_batch)
        total, count = weighted_sums(
            batches, num_batches, lambda b: masked_loss(model, *b), mx.array(0.0), clear_cache_threshold, after_batch
        )
        return {"loss": (total / count).item()}

    def describe(self, row: dict[str, Any], prefix: str = "") -> str:
        return ""

    def extras(self) -> dict[str, Any]:
        return {}


class Preference:
    """What DPO and ORPO share: chosen/rejected pairs (`batches.TokenizedPairs`), batches of pairs, and a loss over
    the pairs' summed answer log-probabilities whose rewards give METRICS. Subclasses give `pair_losses`."""

    metrics: tuple[str, ...] = METRICS
    updates = 1

    def __init__(self, beta: float) -> None:
        self.beta = beta

    @staticmethod
    def tokenize(examples: Sequence[data.Example], tokenizer: Any, max_seq_length: int, desc: str) -> TokenizedPairs:
        return TokenizedPairs(examples, tokenizer, max_seq_length, desc)

    def data_note(self, examples: Sequence[data.Example]) -> str | None:
        return None

    def steps_per_epoch(self, pairs: TokenizedPairs, batch_size: int, max_seq_length: int) -> int:
        return len(pairs) // batch_size

    def batching_note(self, pairs: TokenizedPairs, batch_size: int, max_seq_length: int) -> str | None:
        return None

    def bind(self, cfg: TrainConfig, model: nn.Module) -> None:
        pass

    def batches(self, pairs: TokenizedPairs, batch_size: int, max_seq_length: int, **order: Any) -> Iterator[Batch]:
        return pair_batches(pairs, batch_size, max_seq_length, **order)

    def prepare(self, batch: Batch) -> Batch:
        return batch

    def pair_losses(
        self, logps: mx.array, counts: mx.array, ref: mx.array | None
    ) -> tuple[mx.array, mx.array, mx.array]:
        """Per pair: the loss and the chosen and rejected rewards, from each row's summed log-probability and
        learned-token count (chosen rows first) and the reference's log-probabilities, if any."""
        raise NotImplementedError

    def loss(
        self,
        model: nn.Module,
        ids: mx.array,
        mask: mx.array,
        positions: mx.array,
        weight: mx.array,
        ref: mx.array | None = None,
    ) -> tuple[mx.array, mx.array]:
        """The differentiable mean loss over the batch's pairs, and METRICS (means over the pairs)."""
        logps, counts = sequence_logps(model, ids, mask, positions)
        losses, r_chosen, r_rejected = self.pair_losses(logps, counts, ref)
        pairs = mx.maximum(weight.sum(), 1)

        def mean(x: mx.array) -> mx.array:
            return (x.astype(mx.float32) * weight).sum() / pairs

        metrics = mx.stack([mean(r_chosen), mean(r_rejected), mean(r_chosen - r_rejected), mean(r_chosen > r_rejected)])
        return mean(losses), mx.stop_gradient(metrics)

    def evaluate(
        self,
        model: nn.Module,
        pairs: TokenizedPairs,
        batch_size: int,
        max_seq_length: int,
        num_batches: int,
        clear_cache_threshold: int = 0,
        on_batch: OnBatch | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """The loss and METRICS, means over the pairs. Leaves the model in eval mode."""
        model.eval()
        world = mx.distributed.init()
        batches = pair_batches(pairs, batch_size, max_seq_length, comm_group=world, on_batch=on_batch)

        def score(batch: Batch) -> tuple[mx.array, mx.array]:
            loss, metrics = self.loss(model, *self.prepare(batch))
            return mx.concatenate([loss[None], metrics]), batch[3].sum()

        zeros = mx.zeros((1 + len(METRICS),))
        totals, count = weighted_sums(batches, num_batches, score, zeros, clear_cache_threshold, after_batch)
        return dict(zip(("loss", *METRICS), (totals / mx.maximum(count, 1)).tolist()))

    def describe(self, row: dict[str, Any], prefix: str = "") -> str:
        if "accuracy" not in row:
            return ""
        return (
            f"  {prefix}acc {row['accuracy']:.0%}  {prefix}margin {row['reward_margin']:.3f}  "
            f"chosen {row['rewards_chosen']:.3f}  rejected {row['rewards_rejected']:.3f}"
        )

    def extras(self) -> dict[str, Any]:
        return {}


class DPO(Preference):
    """DPO (`preference.dpo_losses`): each batch gets its reference log-probabilities before the step."""

    def __init__(self, beta: float, reference: Reference | None = None) -> None:
        super().__init__(beta)
        self.reference = reference

    def bind(self, cfg: TrainConfig, model: nn.Module) -> None:
        self.reference = reference_for(cfg, model)

    def prepare(self, batch: Batch) -> Batch:
        assert self.reference is not None
        ids, mask, positions = batch[:3]
        return (*batch, self.reference.logps(ids, mask, positions))

    with_reference = prepare

    def pair_losses(
        self, logps: mx.array, counts: mx.array, ref: mx.array | None
    ) -> tuple[mx.array, mx.array, mx.array]:
        assert ref is not None
        n = logps.shape[0] // 2
        return dpo_losses(logps[:n], logps[n:], ref[:n], ref[n:], self.beta)


class ORPO(Preference):
    """ORPO (`preference.orpo_losses`): no reference, so nothing to add to a batch."""

    with_reference = Preference.prepare

    def pair_losses(
        self, logps: mx.array, counts: mx.array, ref: mx.array | None
    ) -> tuple[mx.array, mx.array, mx.array]:
        n = logps.shape[0] // 2
        means = logps / mx.maximum(counts, 1)
        return orpo_losses(means[:n], means[n:], self.beta)
