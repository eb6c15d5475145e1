"""Turn a llama/qwen2/qwen3 GGUF file into a Hugging Face style folder, without torch.

The folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) loads in both `mlx_lm.load` and
`transformers`. We do not go through transformers' own GGUF loader: it needs torch, and a model it loads from GGUF
refuses `save_pretrained` ("quantized with gguf and is not serializable").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, processors
from tqdm import tqdm

from mlx_ft.atomic import atomic_dir
from mlx_ft.errors import UserError
from mlx_ft.models import gguf_arch as arch_table
from mlx_ft.models.gguf_tokenizer import PRE_TOKENIZERS, build_normalizer, build_pre_tokenizer

# Written into every folder we import, so a later import may replace that folder and no other.
SOURCE_MARKER = "mlx_ft_source.json"
# llama.cpp token types (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4
# llama.cpp's converter fills embedding rows past the tokenizer with these; they keep ids aligned, nothing more.
_PADDING = re.compile(r"\[PAD\d+\]")


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _config(reader: GGUFReader, arch: arch_table.Arch, tied: bool, dtype: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"architectures": [arch.hf_class], "model_type": arch.model_type}
    for gguf_key, hf_key in arch_table.CONFIG_KEYS:
        value = _field(reader, f"{arch.gguf}.{gguf_key}")
        if value is not None:
            # GGUF stores float32; print the value the original config most likely had (1e-05, not 9.99999974e-06).
            cfg[hf_key] = float(f"{value:.7g}") if isinstance(value, float) else value
    if "vocab_size" not in cfg:
        cfg["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.setdefault("rope_theta", 10000.0)
    scaling = _field(reader, f"{arch.gguf}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise UserError(
            f"this GGUF uses {scaling!r} RoPE scaling, which the import does not reproduce yet; "
            "use the original Hugging Face model instead"
        )
    # transformers 5 reads rope_parameters, mlx-lm 0.32 reads the top-level key: write both (mlx-lm would silently
    # fall back to a RoPE base of 10000 otherwise).
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    cfg.update(
        hidden_act="silu",
        tie_word_embeddings=tied,
        attention_bias=arch.attention_bias,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        use_cache=True,
        torch_dtype=dtype,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    return cfg


def _tensors(reader: GGUFReader, arch: arch_table.Arch, cfg: dict[str, Any], dtype: str) -> dict[str, Any]:
    """HF-named weights as MLX arrays of `dtype`, converted one tensor at a time to keep peak memory low."""
    import mlx.core as mx  # late: mlx_ft's BLAS fix must run before mlx.core loads

    out: dict[str, Any] = {}
    for t in tqdm(reader.tensors, desc="dequantizing", unit="tensor", leave=False, disable=None):
        if t.name == "rope_freqs.weight":
            raise UserError(
                "this GGUF stores Llama 3.1-style RoPE scaling (rope_freqs), which the import does not "
                "reproduce yet; use the original Hugging Face model instead"
            )
        hf_name = arch_table.gguf_to_hf(t.name)
        if hf_name is None:
            raise UserError(f"{t.name}: tensor not known for architecture {arch.gguf!r}")
        qtype = GGMLQuantizationType(t.tensor_type)
        try:
            w = np.asarray(dequantize(t.data, qtype), dtype=np.float32)
        except NotImplementedError as e:
            raise UserError(f"{t.name}: GGUF tensor type {qtype.name} cannot be dequantized by gguf-py") from e
        # GGUF lists dims innermost first; numpy (and HF) outermost first.
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        suffix = t.name.split(".", 2)[-1]
        if arch.permute_qk and suffix in arch_table.PERMUTED:
            w = arch_table.unpermute_qk(w, cfg[arch_table.PERMUTED[suffix]])
        out[hf_name] = mx.array(w).astype(getattr(mx, dtype))
        mx.eval(out[hf_name])
    return out


def _tokenizer(reader: GGUFReader) -> tuple[Tokenizer, dict[str, Any]]:
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UserError(f"tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    pre_name = _field(reader, "tokenizer.ggml.pre", "default")
    spec = PRE_TOKENIZERS.get(pre_name)
    if spec is None:
        raise UserError(f"pre-tokenizer {pre_name!r} is not supported; known: {', '.join(sorted(PRE_TOKENIZERS))}")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]

    tok = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=merges,
            ignore_merges=spec.ignore_merges,
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    normalizer = build_normalizer(spec)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = build_pre_tokenizer(spec)
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=(ty == _CONTROL), normalized=False)
        for t, ty in zip(tokens, types)
        if ty == _CONTROL or (ty == _USER_DEFINED and not _PADDING.fullmatch(t))
    ]
    tok.add_tokens(added)

    def token(key: str) -> str | None:
        idx = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    bos = token("bos")
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _field(reader, f"{_field(reader, 'general.architecture')}.context_length", 2048),
    }
    template = _field(reader, "tokenizer.chat_template")
    if template:
        tok_cfg["chat_template"] = template
    return tok, tok_cfg


def import_gguf(path: Path, out: Path, dtype: str = "float32") -> Path:
    """Write the HF-style folder for GGUF file `path` to `out` (atomically) and return `out`.

    `dtype` float32 keeps dequantized weights exact and is fastest on CPU; float16/bfloat16 halve the size.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from e
    arch_name = _field(reader, "general.architecture")
    arch = arch_table.ARCHS.get(arch_name)
    if arch is None:
        raise UserError(
            f"{path}: architecture {arch_name!r} is not supported; supported: {', '.join(arch_table.ARCHS)}"
        )
    if dtype not in ("float32", "float16", "bfloat16"):
        raise UserError(f"dtype {dtype!r}: use float32, float16 or bfloat16")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / SOURCE_MARKER).is_file():
        raise UserError(f"{out}: folder exists and is not an mlx_ft import; give --out a new or empty folder")
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    cfg = _config(reader, arch, tied, dtype)
    tokenizer, tok_cfg = _tokenizer(reader)
    weights = _tensors(reader, arch, cfg, dtype)

    import mlx.core as mx

    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        # llama.cpp keeps end-of-turn tokens (Llama 3's <|eot_id|>, <|eom_id|>) apart from eos; generation must
        # stop on all of them.
        stops = [
            i for key in ("eos", "eot", "eom") if (i := _field(reader, f"tokenizer.ggml.{key}_token_id")) is not None
        ]
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": cfg["bos_token_id"], "eos_token_id": list(dict.fromkeys(stops))}, indent=2)
            + "\n"
        )
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({k: tok_cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if tok_cfg[k]})
            + "\n"
        )
        (tmp / SOURCE_MARKER).write_text(json.dumps({"gguf": str(path.resolve())}) + "\n")
    return out
