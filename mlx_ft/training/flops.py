"""The floating-point work a training step needs, for the progress line's TFLOP/s and MFU.

Counted from the model as it trains (after adapters are attached), in multiply-adds x 2, and only what the step
needs, not what an implementation happens to do:
- forward: every matrix of every layer on every real token (padding is not work), LoRA/DoRA factors too; causal
  attention over each example's own tokens (query i reads i keys); the output layer on the learned positions only
  (no other logit enters the loss);
- backward: nothing below the lowest layer that trains; above it, the gradient with respect to the activations
  (one more pass of each matrix), the weights' gradient where the weights themselves train (a full fine-tune),
  twice the forward work for the adapters and for attention.
DoRA's once-a-step weight norm and the elementwise work (norms, activations, softmax) are left out, as in the usual
MFU accounting: they are small next to the matrix products and no accelerator's peak is quoted for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.nn as nn
from mlx.utils import tree_flatten


@dataclass(frozen=True)
class LayerWork:
    matrices: int  # weights of the layer's matrix products (multiply-adds per token)
    adapters: int  # weights of its LoRA/DoRA factors
    attention: int  # query heads x head dim (multiply-adds per query-key pair, for scores and for values)
    weights_train: bool  # the matrices themselves train (full fine-tune), so their gradient is computed
    trains: bool  # anything in the layer trains


def _linear_size(module: nn.Module) -> int:
    if isinstance(module, nn.QuantizedLinear):  # packed weight: the input size comes from the scales
        return module.weight.shape[0] * module.scales.shape[1] * module.group_size
    if isinstance(module, nn.Linear):
        return module.weight.size
    return 0


def _layer_work(layer: nn.Module, attention: int) -> LayerWork:
    trainable = {name for name, _ in tree_flatten(layer.trainable_parameters())}
    matrices = adapters = 0
    weights_train = False
    for name, module in layer.named_modules():
        matrices += _linear_size(module)
        if isinstance(module, (nn.Linear, nn.QuantizedLinear)) and f"{name}.weight" in trainable:
            weights_train = True
        if hasattr(module, "lora_a") and hasattr(module, "lora_b"):
            adapters += module.lora_a.size + module.lora_b.size
    return LayerWork(matrices, adapters, attention, weights_train, bool(trainable))


class StepWork:
    """FLOPs of a training batch, from the model's shapes and what trains."""

    @classmethod
    def of(cls, model: nn.Module) -> StepWork | None:
        """The count for `model`, or None for a model whose config does not name its shapes the llama way (gpt2's
        n_head, gemma3's nested text_config ...): those train without a FLOP figure rather than not at all."""
        args = getattr(model, "args", None)
        if not all(
            isinstance(getattr(args, k, None), int) for k in ("num_attention_heads", "hidden_size", "vocab_size")
        ):
            return None
        return cls(model)

    def __init__(self, model: nn.Module) -> None:
        args = model.args
        heads = args.num_attention_heads
        head_dim = getattr(args, "head_dim", None) or args.hidden_size // heads
        self.layers = [_layer_work(layer, heads * head_dim) for layer in model.layers]
        self.head = args.hidden_size * args.vocab_size
        head_params = {
            name
            for name, _ in tree_flatten(model.trainable_parameters())
            if not name.startswith(("model.layers.", "layers."))
        }
        self.head_trains = any("lm_head" in n or "embed_tokens" in n for n in head_params)
        self.lowest_trained = next((i for i, w in enumerate(self.layers) if w.trains), len(self.layers))

    def batch(self, lengths: list[int], learned: int) -> float:
        """FLOPs for a batch whose examples have these real lengths and `learned` target tokens."""
        tokens = sum(lengths)
        pairs = sum(n * (n + 1) // 2 for n in lengths)  # causal query-key pairs inside each example
        total = 2 * self.head * learned * (2 + self.head_trains)  # forward, activation gradient, its own gradient
        for i, w in enumerate(self.layers):
            forward = 2 * (w.matrices + w.adapters) * tokens + 2 * 2 * w.attention * pairs
            total += forward
            if i >= self.lowest_trained:
                total += 2 * w.matrices * tokens * (1 + w.weights_train)
                total += 2 * (2 * w.adapters * tokens + 2 * 2 * w.attention * pairs)
        return float(total)
