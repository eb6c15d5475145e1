"""`export gguf --adapter-only`: a LoRA run as a llama.cpp adapter GGUF (a few MB) beside a base GGUF, with an Ollama
Modelfile whose FROM is the base and whose ADAPTER is the adapter.

The file is what llama.cpp's `convert_lora_to_gguf.py` writes for a PEFT adapter: `general.type` "adapter",
`adapter.type` "lora", `adapter.lora.alpha`, and for every adapted weight `<GGUF name>.lora_a` (rank x in) and
`.lora_b` (out x rank), no vocabulary and no hyperparameters (llama.cpp takes those from the base). mlx_lm's LoRA
computes `y = W x + scale * (x @ lora_a) @ lora_b`, so PEFT's A is `lora_a.T` and B is `lora_b.T`; llama.cpp scales by
`alpha / rank`, so alpha is written as `scale * rank`. llama's Q/K row permutation reorders a weight's output rows,
which live in B: only B is permuted (as the converter's LoraTorchTensor does when it permutes the pair).

DoRA (its magnitude vector rescales each fused row) and a full fine-tune have no such pair: refused, pointing at the
fused export. A QLoRA adapter was trained on the quantized base, so the base written beside it is that base
dequantized: base + adapter in llama.cpp is then the function the fused export holds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
from mlx_lm.tuner.lora import LoRALinear

from mlx_ft import models
from mlx_ft.atomic import atomic_path, write_text
from mlx_ft.config import TrainConfig
from mlx_ft.errors import UserError
from mlx_ft.export import gguf as gguf_export
from mlx_ft.export import modelfile
from mlx_ft.export.hf import read_config, to_fused
from mlx_ft.models import gguf_arch as arch_table
from mlx_ft.models import loader

Q = gguf.GGMLQuantizationType
# The types convert_lora_to_gguf.py offers (--outtype), and the GGML type each writes.
ADAPTER_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


@dataclass
class Pair:
    """One adapted weight in llama.cpp's layout: `a` (rank, in) and `b` (out, rank), float32."""

    name: str  # the base tensor's GGUF name, e.g. blk.3.attn_q.weight
    a: np.ndarray
    b: np.ndarray


@dataclass
class AdapterExport:
    adapter: Path
    base: Path
    modelfile: Path
    alpha: float
    rank: int
    pairs: int
    note: str | None  # what the user must know about the pair (a QLoRA base)


def refuse_unless_lora(source: str, cfg: TrainConfig | None) -> None:
    """A UserError, naming the fused export, unless `source` is a LoRA (or QLoRA) run."""
    full = f"export the fused model instead: python -m mlx_ft export gguf {source} --type TYPE"
    if cfg is None:
        raise UserError(f"{source} is not a training run; --adapter-only needs a LoRA run folder ({full})")
    if cfg.fine_tune_type == "dora":
        raise UserError(f"a DoRA adapter (its magnitude vector) has no llama.cpp LoRA form; {full}")
    if cfg.fine_tune_type == "full":
        raise UserError(f"a full fine-tune changed whole layers, which no LoRA adapter holds; {full}")


def lora_pairs(loaded: loader.Loaded, arch: arch_table.Arch, config: dict[str, Any]) -> tuple[list[Pair], float, int]:
    """The run's LoRA layers as llama.cpp pairs, with the alpha and rank they share."""
    pairs: list[Pair] = []
    alphas: set[float] = set()
    ranks: set[int] = set()
    for path, module in loaded.model.named_modules():
        if not isinstance(module, LoRALinear):
            continue
        name = arch_table.hf_to_gguf(f"{path}.weight")
        if name is None:
            raise UserError(f"{path}: an adapted layer with no GGUF name in architecture {arch.gguf!r}")
        a = np.array(module.lora_a.astype(mx.float32)).T  # (rank, in)
        b = np.array(module.lora_b.astype(mx.float32)).T  # (out, rank)
        suffix = name.split(".", 2)[-1]
        if arch.permute_qk and suffix in arch_table.PERMUTED:
            b = arch_table.permute_qk(b, config[arch_table.PERMUTED[suffix]])
        pairs.append(Pair(name, np.ascontiguousarray(a), np.ascontiguousarray(b)))
        ranks.add(a.shape[0])
        alphas.add(float(module.scale) * a.shape[0])
    if not pairs:
        raise UserError(f"{loaded.source}: the run has no LoRA layers to export")
    if len(alphas) != 1:
        raise UserError(f"{loaded.source}: its LoRA layers differ in scale x rank; llama.cpp takes one alpha per file")
    return pairs, alphas.pop(), ranks.pop()


def _tensor_type(data: np.ndarray, wanted: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """convert_lora_to_gguf's choice: the asked type, F16 when a row (e.g. lora_b's, `rank` long) does not fill
    whole Q8_0 blocks."""
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0]:
        return Q.F16
    return wanted


def write_adapter(loaded: loader.Loaded, file_type: str, out: Path) -> tuple[float, int, int]:
    """Write the adapter GGUF of `loaded` (a LoRA run, adapter attached and unfused) at `out`; (alpha, rank, pairs)."""
    if file_type not in ADAPTER_TYPES:
        raise UserError(f"adapter type {file_type!r} is not supported; choose one of {', '.join(ADAPTER_TYPES)}")
    config = read_config(Path(models.resolve(loaded.base)))
    arch = gguf_export.architecture(config)
    pairs, alpha, rank = lora_pairs(loaded, arch, config)
    qtype, ftype = ADAPTER_TYPES[file_type]
    tensors = []
    for p in pairs:
        tensors += [(f"{p.name}.lora_a", p.a), (f"{p.name}.lora_b", p.b)]
    print(f"mlx_ft: writing the LoRA adapter of {loaded.label} as {file_type} GGUF to {out}", file=sys.stderr)
    with atomic_path(Path(out)) as tmp:
        w = gguf.GGUFWriter(tmp, arch.gguf)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(f"{Path(loaded.source).resolve().name} (LoRA adapter for {Path(loaded.base).name})")
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gguf_export.write_tensors(w, [(n, d, _tensor_type(d, qtype)) for n, d in tensors], file_type)
        gguf_export.check(tmp, [n for n, _ in tensors])
    return alpha, rank, len(pairs)


def check_base(path: Path, config: dict[str, Any]) -> None:
    """An existing base file must be a GGUF model of the run's architecture and shape."""
    if not path.is_file():
        raise UserError(f"{path}: no such base GGUF file")
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = gguf_export.architecture(config)
    if field("general.type") == "adapter":
        raise UserError(f"{path}: is an adapter, not a base model; give the base model's GGUF to --base")
    theirs = field("general.architecture")
    found = (theirs, field(f"{theirs}.block_count"), field(f"{theirs}.embedding_length"))
    wanted = (arch.gguf, config["num_hidden_layers"], config["hidden_size"])
    if found != wanted:
        raise UserError(
            f"{path}: a {found[0]} model with {found[1]} blocks of width {found[2]}; the run's base is a "
            f"{wanted[0]} model with {wanted[1]} blocks of width {wanted[2]}"
        )


def _relative(path: Path, folder: Path) -> str:
    """`path` as the Modelfile in `folder` names it: relative below that folder, else absolute."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def export_adapter(
    source: str, out: Path, file_type: str = "f16", base_type: str = "q4_k_m", base: Path | None = None
) -> AdapterExport:
    """Write the LoRA adapter of run `source` at `out`, a base GGUF beside it (of `base_type`, unless an existing
    `base` file is named) and a Modelfile with FROM the base and ADAPTER the adapter."""
    out = Path(out)
    if file_type not in ADAPTER_TYPES:
        raise UserError(f"adapter type {file_type!r} is not supported; choose one of {', '.join(ADAPTER_TYPES)}")
    if base is None:
        gguf_export.check_type(base_type)
    cfg = loader.run_config(source)
    refuse_unless_lora(source, cfg)  # before minutes of loading a model
    assert cfg is not None
    config = read_config(Path(models.resolve(cfg.model)))
    if base is not None:
        check_base(Path(base), config)
    loaded = loader.load(source, fuse=False)
    alpha, rank, n = write_adapter(loaded, file_type, out)
    note = None
    if cfg.quantize:
        note = f"this QLoRA adapter was trained on the {cfg.quantize}-bit base: it applies to that base dequantized" + (
            ", which the base file written beside it is"
            if base is None
            else "; the --base file is not that, so answers can differ a little from the run's"
        )
    if base is None:
        # a QLoRA base is named for its bits: it is not the float base a user may already have
        bits = f"-{cfg.quantize}bit" if cfg.quantize else ""
        base = out.parent / f"{Path(loaded.base).name}{bits}-{base_type}.gguf"
        f = to_fused(loaded, adapter=False)  # the same load: the adapter's layers give back their base layers
        if cfg.quantize:
            f.label = f"{f.label} ({cfg.quantize}-bit QLoRA base, dequantized)"
        gguf_export.write_model(f, base_type, base)
    text = modelfile.modelfile(
        _relative(Path(base), out.parent), loaded.tokenizer, loaded.system, adapter=_relative(out, out.parent)
    )
    write_text(out.parent / "Modelfile", text)
    return AdapterExport(out, Path(base), out.parent / "Modelfile", alpha, rank, n, note)
