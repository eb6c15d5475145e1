"""`export gguf`: a run (or model) as one GGUF file that llama.cpp and Ollama load, written in Python.

Tensor names, config keys and llama's Q/K permutation come from `arch` (the table the GGUF import reads too).
Tokenizer metadata is what llama.cpp's converter writes for byte-level BPE: model `gpt2`, the pre-tokenizer's name,
tokens with their types, merges, special token ids, `add_bos_token` and the chat template. The file is written under
a temporary name, read back with `GGUFReader`, and only then renamed into place.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from tokenizers import normalizers

from mlx_ft import progress
from mlx_ft.atomic import atomic_path, write_text
from mlx_ft.chat_template import hf_tokenizer
from mlx_ft.errors import UserError
from mlx_ft.export import modelfile, quants, tensor_types
from mlx_ft.export.hf import Fused, compute_weights, fuse
from mlx_ft.models import gguf_arch as arch_table
from mlx_ft.models.gguf_tokenizer import PRE_TOKENIZERS, build_normalizer, build_pre_tokenizer

# Text that tells the supported pre-tokenizers apart: digits runs, CJK, contractions, punctuation runs, newlines.
_PROBE = (
    "Hello world! It's 2026-11-23, 12345 items @ $1020.0 each.\n\n  indented\tTabs  "
    "我的金鱼每天喂几次？ 日本語 ÅÉ café don't WE'LL ...!!! \r\n end"
)


def pre_tokenizer_name(tokenizer: Any) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for this tokenizer: the first known pre-tokenizer that splits (and
    normalizes) a probe text exactly as the tokenizer's own pipeline does."""
    backend = hf_tokenizer(tokenizer).backend_tokenizer
    text = backend.normalizer.normalize_str(_PROBE) if backend.normalizer else _PROBE
    theirs = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    for name, spec in PRE_TOKENIZERS.items():
        norm = build_normalizer(spec) or normalizers.Sequence([])
        mine = [piece for piece, _ in build_pre_tokenizer(spec).pre_tokenize_str(norm.normalize_str(_PROBE))]
        if mine == theirs:
            return name
    raise UserError(
        "the tokenizer's pre-tokenizer matches none llama.cpp knows here "
        f"({', '.join(PRE_TOKENIZERS)}); GGUF export would tokenize differently"
    )


def _vocab(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types, padded to the embedding's row count as llama.cpp's converter pads them."""
    hf = hf_tokenizer(tokenizer)
    by_id = {i: t for t, i in hf.get_vocab().items()}
    added = {i: a for i, a in (hf.added_tokens_decoder or {}).items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write_metadata(w: gguf.GGUFWriter, f: Fused, arch: arch_table.Arch, file_type: str, n_vocab: int) -> None:
    cfg = f.config
    w.add_name(f.label)
    w.add_file_type(tensor_types.FILE_TYPES[file_type].ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    values = {**cfg, "vocab_size": n_vocab}
    values.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    for gguf_key, hf_key in arch_table.CONFIG_KEYS:
        if values.get(hf_key) is None:
            continue
        value = values[hf_key]
        kind = gguf.GGUFValueType.FLOAT32 if isinstance(value, float) else gguf.GGUFValueType.UINT32
        w.add_key_value(f"{arch.gguf}.{gguf_key}", value, kind)
    w.add_value_length(values["head_dim"])
    w.add_rope_dimension_count(values["head_dim"])

    tokens, types = _vocab(f.tokenizer, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(f.tokenizer))
    w.add_token_list(tokens)
    w.add_token_types(types)
    # gguf-py's SpecialVocab reads merges, special token ids, add_bos/eos and the chat template from the folder the
    # tokenizer came from, exactly as llama.cpp's converter does.
    gguf.SpecialVocab(f.base_dir, load_merges=True, n_vocab=n_vocab).add_to_gguf(w)


def _tensors(f: Fused, arch: arch_table.Arch, file_type: str) -> list[tuple[str, np.ndarray, Any]]:
    """(GGUF name, float32 weights in GGUF layout, type) for every tensor, in llama-quantize's order with its
    per-tensor type choice for `file_type`."""
    cfg = f.config
    weights: dict[str, np.ndarray] = {}
    for hf_name, value in tree_flatten(f.model.parameters()):
        name = arch_table.hf_to_gguf(hf_name)
        if name is None:
            raise UserError(f"{hf_name}: no GGUF name for this tensor in architecture {arch.gguf!r}")
        w = np.array(value.astype(mx.float32), copy=True)
        suffix = name.split(".", 2)[-1]
        if arch.permute_qk and suffix in arch_table.PERMUTED:
            w = arch_table.permute_qk(w, cfg[arch_table.PERMUTED[suffix]])
        weights[name] = w
    types = tensor_types.plan(file_type, {n: w.shape for n, w in weights.items()}, cfg["num_hidden_layers"])
    return [(name, weights[name], qtype) for name, qtype in types.items()]


def export_gguf(source: str, file_type: str, out: Path, with_modelfile: bool = True) -> Path:
    """Write `source` (run folder, adapter folder or model) as a GGUF file of `file_type` at `out`, and an Ollama
    `Modelfile` beside it."""
    check_type(file_type)
    f = fuse(source)
    write_model(f, file_type, out)
    if with_modelfile:
        write_text(Path(out).parent / "Modelfile", modelfile.modelfile(Path(out).name, f.tokenizer, f.system))
    return Path(out)


def check_type(file_type: str) -> None:
    if file_type not in tensor_types.FILE_TYPES:
        raise UserError(f"GGUF type {file_type!r} is not supported; choose one of {', '.join(tensor_types.FILE_TYPES)}")


def architecture(config: dict[str, Any]) -> arch_table.Arch:
    """The GGUF architecture of a model config, or a UserError naming the supported ones."""
    arch = arch_table.BY_MODEL_TYPE.get(config.get("model_type"))
    if arch is None:
        raise UserError(
            f"architecture {config.get('model_type')!r} cannot be exported to GGUF; supported: "
            f"{', '.join(a.model_type for a in arch_table.ARCHS.values())}"
        )
    return arch


def write_model(f: Fused, file_type: str, out: Path) -> Path:
    """Write the plain float model `f` as a GGUF model file of `file_type` at `out` (atomically, read back)."""
    out = Path(out)
    arch = architecture(f.config)
    reporter, mb = compute_weights(f.model, "fusing")  # the adapter's fold, with progress, before the copies below
    reporter.finish(mb)
    tensors = _tensors(f, arch, file_type)
    n_vocab = next(w.shape[0] for name, w, _ in tensors if name == "token_embd.weight")
    print(f"mlx_ft: writing {f.label} as {file_type} GGUF to {out}", file=sys.stderr)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, arch.gguf)
        _write_metadata(w, f, arch, file_type, n_vocab)
        write_tensors(w, [(name, data, qtype) for name, data, qtype in tensors], file_type)
        check(tmp, [name for name, _, _ in tensors])
    return out


def write_tensors(w: gguf.GGUFWriter, tensors: list[tuple[str, np.ndarray, Any]], file_type: str) -> None:
    """Quantize and write `tensors` after the metadata already added to `w`, then close it. Progress lines count
    tensors, with the rate and ETA in MB of float32 weights (tensors differ in size by 1000x)."""
    all_mb = max(sum(data.nbytes for _, data, _ in tensors) / 1e6, 1e-9)
    reporter = progress.Reporter(f"writing {file_type} GGUF", len(tensors), "tensors", "MB/s")
    mb = 0.0
    for i, (name, data, qtype) in enumerate(tensors):
        raw = quants.quantize(data, qtype)
        w.add_tensor(name, raw, raw_dtype=qtype)
        mb += data.nbytes / 1e6
        reporter.update(i + 1, mb, mb / all_mb)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    reporter.finish(mb)  # the last line once the file is written


def check(path: Path, names: list[str]) -> None:
    """Read the file back before calling it done: every tensor there, under its name."""
    reader = gguf.GGUFReader(path)
    found = [t.name for t in reader.tensors]
    if sorted(found) != sorted(names):
        raise RuntimeError(f"{path}: the written GGUF does not hold the tensors it should")
