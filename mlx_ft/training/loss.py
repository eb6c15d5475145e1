"""The training loss: cross-entropy over the learned tokens, without the memory and time a plain one wastes.

A plain loss runs the output layer over every position of the batch and keeps the whole (batch, length, vocabulary)
logits tensor for the backward pass: 10 GB in fp32 at 16 x 1024 for Qwen's 152k-word vocabulary, most of it for
system/user/padding positions that are masked out anyway. Here:
- the model body runs as usual, and the output layer only on the positions whose next token is learned (their flat
  indices come with the batch, computed on the host, padded to one of a few counts per batch shape so `mx.compile`
  retraces little);
- those positions go through the output layer in chunks, each recomputed in the backward pass (`mx.checkpoint`), so
  no more than one chunk of logits exists at a time once the gathered logits would pass `CHUNK_ELEMENTS`;
- packed rows (several examples in one row, `pack: true`) get a block-diagonal causal mask, so no token attends to
  another example. Positions run on through a row, but RoPE makes attention depend only on the distance between a
  query and a key, and the mask keeps both inside one example: each example computes what it would from position 0.

Models outside `HEAD_SPLIT_TYPES` keep the plain loss (their head may do more than one matrix product) and cannot be
packed (their attention mask is built where we cannot replace it).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import rope_utils

from mlx_ft.errors import UserError

# mlx_lm model types whose Model.__call__ is `head(self.model(inputs))`, with the head `lm_head` or the tied
# embedding, and whose inner model builds its mask with its module's `create_attention_mask`.
HEAD_SPLIT_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Rotary embeddings that are a pure function of position (a rotation by position x frequency): the score of a
# query and a key then depends only on their distance. Length-dependent scalings (SuScaled, dynamic NTK) are not.
RELATIVE_ROPES = (nn.RoPE, rope_utils.Llama3RoPE, rope_utils.YarnRoPE)
CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in fp32) before the output layer is run chunk by chunk


def learned_positions(weights: np.ndarray) -> np.ndarray:
    """Flat indices into (rows, width - 1) of the positions whose target token is learned, padded with the
    out-of-range index rows * (width - 1) up to a multiple of 1/16 of the batch's positions (at least 32). A batch
    width then meets at most 17 position counts (`mx.compile` retraces for each new shape), and the padding never
    costs more than 1/16 of what the plain loss would run the output layer on."""
    flat = np.flatnonzero(weights[:, 1:].reshape(-1)).astype(np.int32)
    sentinel = weights.shape[0] * (weights.shape[1] - 1)
    step = max(32, -(-sentinel // 16))
    padded = step * -(-max(len(flat), 1) // step)
    return np.concatenate([flat, np.full(padded - len(flat), sentinel, np.int32)])


def segment_mask(segments: mx.array) -> mx.array:
    """(rows, 1, L, L) boolean: position i may attend to j when j <= i and both belong to the same example
    (padding, segment 0, attends only to padding)."""
    length = segments.shape[1]
    causal = mx.arange(length)[:, None] >= mx.arange(length)[None]
    same = segments[:, :, None] == segments[:, None, :]
    return mx.expand_dims(same & causal, 1)


def _head(model: nn.Module) -> tuple[Callable[[mx.array], mx.array], nn.Module] | None:
    """The output layer as a function of the final hidden states, and the module holding its weights."""
    if getattr(model, "model_type", None) not in HEAD_SPLIT_TYPES:
        return None
    if getattr(model.args, "tie_word_embeddings", False):
        return model.model.embed_tokens.as_linear, model.model.embed_tokens
    return model.lm_head, model.lm_head


def check_packable(model: nn.Module) -> None:
    """Refuse packing, with the reason, when attention could leak across the examples of a packed row."""
    kind = getattr(model, "model_type", type(model).__name__)
    if kind not in HEAD_SPLIT_TYPES:
        raise UserError(
            f"pack: true is not supported for model type {kind!r} (only {', '.join(HEAD_SPLIT_TYPES)}): "
            "mlx_ft cannot give its attention the per-example mask, and packed examples would attend "
            "to each other; set pack: false"
        )
    for layer in model.model.layers:
        if getattr(layer, "use_sliding", False):  # its mask would be ours, without the window
            raise UserError(
                f"pack: true is not supported for this {kind} model: it has sliding-window attention "
                "layers; set pack: false"
            )
        rope = getattr(layer.self_attn, "rope", None)
        if not isinstance(rope, RELATIVE_ROPES):
            raise UserError(
                f"pack: true needs rotary position embeddings that depend only on the distance between "
                f"tokens; this {kind} model uses {type(rope).__name__}; set pack: false"
            )


@contextlib.contextmanager
def _attention_mask(model: nn.Module, mask: mx.array) -> Iterator[None]:
    """Make the model's inner forward use `mask` instead of the causal mask it builds (mlx_lm models build it with
    their module's `create_attention_mask` and take no mask argument)."""
    module = sys.modules[type(model.model).__module__]
    original = module.create_attention_mask
    module.create_attention_mask = lambda *args, **kwargs: mask
    try:
        yield
    finally:
        module.create_attention_mask = original


def _head_ce(head: Callable[[mx.array], mx.array], hidden: mx.array, targets: mx.array) -> mx.array:
    """Cross-entropy of `head(hidden)` (positions x vocabulary) against `targets`, one fp32 value per position."""
    return nn.losses.cross_entropy(head(hidden), targets).astype(mx.float32)


def _chunked_head_ce(
    head: Callable[[mx.array], mx.array], head_module: nn.Module, hidden: mx.array, targets: mx.array, vocab: int
) -> mx.array:
    """`_head_ce`, run in chunks recomputed in the backward pass once the logits would pass CHUNK_ELEMENTS."""
    rows = max(64, CHUNK_ELEMENTS // vocab)
    if hidden.shape[0] <= rows:
        return _head_ce(head, hidden, targets)
    # The head's trainable weights (a full fine-tune, an adapted lm_head) must be explicit inputs of the
    # checkpointed function, or the recomputation would treat them as constants and their gradient would be lost.

    def chunk_ce(params: dict, h: mx.array, t: mx.array) -> mx.array:
        head_module.update(params)
        return _head_ce(head, h, mx.stop_gradient(t))  # no gradient into targets

    checkpointed = mx.checkpoint(chunk_ce)
    params = head_module.trainable_parameters()
    starts = range(0, hidden.shape[0], rows)
    return mx.concatenate([checkpointed(params, hidden[i : i + rows], targets[i : i + rows]) for i in starts])


def _hidden(model: nn.Module, inputs: mx.array, segments: mx.array | None) -> mx.array:
    """The model body's final hidden states (packed rows kept apart by `segments`)."""
    if segments is None:
        return model.model(inputs)
    with _attention_mask(model, segment_mask(segments[:, :-1])):
        return model.model(inputs)


def _learned_ce(
    model: nn.Module,
    batch: mx.array,
    w: mx.array,
    positions: mx.array,
    segments: mx.array | None,
    temperature: float = 1.0,
) -> tuple[mx.array, mx.array]:
    """Cross-entropy at the flat `positions` only (the output layer runs there alone), and each one's weight (0 for
    the padding index); with a `temperature`, of the logits divided by it."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    hidden = _hidden(model, inputs, segments)
    n = targets.size
    index = mx.minimum(positions, n - 1)  # the padding index n reads a real row and gets weight 0 below
    picked_w = mx.concatenate([w.reshape(-1), mx.zeros((1,), mx.float32)])[positions]
    h = hidden.reshape(n, hidden.shape[-1])[index]
    t = targets.reshape(-1)[index]
    head = _head(model)
    assert head is not None
    fn, module = head
    if temperature != 1.0:
        fn = lambda x: head[0](x) / temperature  # noqa: E731
    return _chunked_head_ce(fn, module, h, t, model.args.vocab_size), picked_w


def masked_loss(
    model: nn.Module,
    batch: mx.array,
    weights: mx.array,
    norm: mx.array | None = None,
    positions: mx.array | None = None,
    segments: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Cross-entropy over the positions whose target token is marked for learning, and how many there are.

    Divided by `norm` when given, else by this batch's own count. Training passes norm = (learned tokens in the whole
    global batch) / workers: averaging the workers' gradients then gives exactly the mean over the global batch, as
    one worker with the whole batch would (a mean of per-worker means would weight short answers up).
    `positions` (from `learned_positions`) limits the output layer to the learned positions; `segments` marks the
    examples of packed rows (1, 2, ... per row, 0 for padding). Without them this is the plain loss over full logits.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    w = weights[:, 1:].astype(mx.float32)
    ntoks = w.sum()
    denominator = norm if norm is not None else mx.maximum(ntoks, 1)
    if positions is None or _head(model) is None:
        logits = _full_logits(model, inputs, segments)
        ce = nn.losses.cross_entropy(logits, targets) * w
        return ce.astype(mx.float32).sum() / denominator, ntoks
    ce, picked_w = _learned_ce(model, batch, w, positions, segments)
    return (ce * picked_w).sum() / denominator, ntoks


def _full_logits(model: nn.Module, inputs: mx.array, segments: mx.array | None) -> mx.array:
    """Logits at every position, through the model's own forward (the plain path)."""
    if segments is None:
        return model(inputs)
    check_packable(model)  # raises: packed rows never go through a model that would let them mix
    with _attention_mask(model, segment_mask(segments[:, :-1])):
        return model(inputs)


def sequence_logps(
    model: nn.Module, batch: mx.array, weights: mx.array, positions: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """Per row: the summed log-probability of its learned tokens, and how many there are (preference losses compare
    whole answers). With `positions` (from `learned_positions`) the output layer runs on learned positions only."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    w = weights[:, 1:].astype(mx.float32)
    counts = w.sum(axis=1)
    if positions is None or _head(model) is None:
        ce = nn.losses.cross_entropy(model(inputs), targets).astype(mx.float32)
        return -(ce * w).sum(axis=1), counts
    ce, picked_w = _learned_ce(model, batch, w, positions, None)
    # Each picked position's row, as a (rows, positions) weight matrix: the padding index falls in no row.
    rows = mx.arange(batch.shape[0])[:, None] == (positions // targets.shape[1])[None, :]
    return -(rows.astype(mx.float32) * picked_w[None, :]) @ ce, counts


def token_logps(
    model: nn.Module, batch: mx.array, weights: mx.array, positions: mx.array, temperature: float = 1.0
) -> tuple[mx.array, mx.array]:
    """The log-probability of the target token at each flat learned position (from `learned_positions`) and each
    one's weight (0 for the padding index): per-token policy losses (GRPO) weigh every answer token on its own. With
    a `temperature`, under the distribution answers were sampled from (the logits divided by it)."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    w = weights[:, 1:].astype(mx.float32)
    if _head(model) is not None:
        ce, picked_w = _learned_ce(model, batch, w, positions, None, temperature)
        return -ce, picked_w
    n = targets.size
    index = mx.minimum(positions, n - 1)
    picked_w = mx.concatenate([w.reshape(-1), mx.zeros((1,), mx.float32)])[positions]
    logits = model(inputs) / temperature if temperature != 1.0 else model(inputs)
    ce = nn.losses.cross_entropy(logits, targets).astype(mx.float32).reshape(-1)[index]
    return -ce, picked_w
