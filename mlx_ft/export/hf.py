"""`export hf`: the adapter fused into its base, saved as a plain Hugging Face model folder (safetensors, sharded when
large; config.json; tokenizer files with the chat template) that transformers, mlx_lm and the GGUF export read.

A QLoRA run is dequantized on the way out: the fused weight is the dequantized base plus the adapter's update, the
function the adapter was trained on, stored in the base's float type (no MLX-packed uint32, scales or biases).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mlx.utils import tree_unflatten
from mlx_lm.utils import dequantize_model, save

from mlx_ft import loader, models
from mlx_ft.atomic import atomic_dir
from mlx_ft.errors import UserError

QUANTIZATION_KEYS = ("quantization", "quantization_config")


def export_hf(source: str, out: Path) -> Path:
    """Write `source` (run folder, adapter folder or model) as a fused, dequantized HF folder at `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise UserError(f"{out}: exists and is not a model folder; choose another --out")
    loaded = loader.load(source, fuse=False)
    model = loaded.model
    fused = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    model = dequantize_model(model)
    base_dir = Path(models.resolve(loaded.base))
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    for key in QUANTIZATION_KEYS:
        config.pop(key, None)
    print(f"mlx_ft: writing {loaded.label} fused into {out}", file=sys.stderr)
    with atomic_dir(out) as tmp:
        save(tmp, base_dir, model, loaded.tokenizer, config, donate_model=False)
    return out
