"""What a run puts on top of its base model: QLoRA quantization and LoRA/DoRA layers (or unfrozen layers for a full
fine-tune). Training builds this structure to train it; loading a run builds the same structure to fill it, so the
two can never disagree about which layers carry an adapter."""

from __future__ import annotations

import mlx.nn as nn
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_ft.config import TrainConfig

# The adapter's weights file in a run, adapter or checkpoint folder: mlx-lm's name, so mlx_lm.load(adapter_path=...)
# reads our folders.
ADAPTERS = "adapters.safetensors"


def quantize_base(model: nn.Module, bits: int, group_size: int = 64) -> int:
    """Quantize the linear layers of the transformer blocks in place (QLoRA); returns how many were quantized.

    Embeddings and the output head stay in full precision, as in QLoRA and PEFT (bitsandbytes skips lm_head): they
    are a small share of a model's weights, quantizing them costs the most quality, and on CPUs MLX's quantized
    matmul over a 150k-word head is ~30x slower than the float one. A layer whose input width is not a multiple of
    the group size stays in full precision too."""
    count = 0

    def predicate(path: str, module: nn.Module) -> bool:
        nonlocal count
        in_blocks = ".layers." in f".{path}."
        ok = in_blocks and isinstance(module, nn.Linear) and module.weight.shape[-1] % group_size == 0
        count += ok
        return ok

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    return count


def attach(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze the model and add what `cfg` trains: LoRA/DoRA layers, or the last `num_layers` layers unfrozen."""
    model.freeze()
    if cfg.fine_tune_type == "full":
        for layer in model.layers[-cfg.num_layers if cfg.num_layers > 0 else 0 :]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(model, cfg.num_layers, cfg.lora_parameters, use_dora=cfg.fine_tune_type == "dora")
