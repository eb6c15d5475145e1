"""`mlx_ft export hf|gguf|modelfile`: write a run out for other tools (`mlx_ft.export`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from mlx_ft.cli.args import RUN_HELP, Subparsers
from mlx_ft.errors import UserError


class _GGUFTypes:
    """`export gguf --type` choices, read from tensor_types only when argparse checks or prints them: importing
    gguf takes ~0.1 s, which every other command would otherwise pay at start-up."""

    def _names(self) -> list[str]:
        from mlx_ft.export.tensor_types import FILE_TYPES

        return list(FILE_TYPES)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export",
        help="write a run out: fused Hugging Face folder, GGUF + Ollama Modelfile",
        description="Export a run for other tools.",
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    _add_hf(formats)
    _add_gguf(formats)
    _add_modelfile(formats)


def _add_hf(formats: Subparsers) -> None:
    q = formats.add_parser(
        "hf",
        help="the adapter fused into the base: safetensors + config + tokenizer",
        description="Fuse RUN's adapter into its base model and write a Hugging Face folder "
        "(safetensors, sharded when large; config.json; tokenizer files with the chat template) "
        "that transformers and mlx_lm load. A QLoRA base is dequantized.",
    )
    q.add_argument("run", metavar="RUN", help=RUN_HELP)
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    q.set_defaults(func=cmd_export_hf, needs_mlx=True)


def _add_gguf(formats: Subparsers) -> None:
    q = formats.add_parser(
        "gguf",
        help="one GGUF file for llama.cpp / Ollama (or a LoRA adapter GGUF and its base), plus a Modelfile",
        description="Fuse RUN's adapter and write a GGUF file (llama, qwen2, qwen3) of --type, "
        "with the tokenizer and chat template as llama.cpp's converter writes them, quantized in "
        "Python as llama-quantize would (its per-tensor type choice and fallbacks), and an Ollama "
        "Modelfile beside it. With --adapter-only, write the LoRA adapter alone as llama.cpp's "
        "convert_lora_to_gguf.py writes one (a few MB), a base GGUF beside it (or use --base FILE) and a "
        "Modelfile with FROM the base and ADAPTER the adapter. DoRA and full fine-tunes have no LoRA form: "
        "export them fused.",
    )
    q.add_argument("run", metavar="RUN", help=RUN_HELP)
    q.add_argument(
        "--type",
        choices=_GGUFTypes(),
        metavar="TYPE",
        help="file type: %(choices)s (default q4_k_m); with --adapter-only, the adapter's: f16 (default), bf16, "
        "q8_0 or f32",
    )
    q.add_argument(
        "--out",
        metavar="FILE",
        help="GGUF file to write (default ./<run name>-<type>.gguf; with --adapter-only ./<run name>-lora-<type>.gguf)",
    )
    _add_adapter_flags(q)
    _add_verify_flags(q)
    q.set_defaults(func=cmd_export_gguf, needs_mlx=True)


def _add_adapter_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--adapter-only",
        action="store_true",
        help="write the LoRA adapter as a llama.cpp adapter GGUF (llama-server --lora, Ollama's ADAPTER) "
        "instead of the fused model; LoRA and QLoRA runs only (a QLoRA adapter applies to its base dequantized)",
    )
    q.add_argument(
        "--base-type",
        choices=_GGUFTypes(),
        metavar="TYPE",
        help="with --adapter-only: the type of the base GGUF written beside the adapter (default q4_k_m)",
    )
    q.add_argument(
        "--base",
        metavar="FILE",
        help="with --adapter-only: an existing GGUF of the run's base model for the Modelfile's FROM, "
        "instead of writing one (it must have the tokenizer and chat template of the run's base)",
    )


def _add_verify_flags(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--verify",
        nargs="?",
        type=int,
        const=8,
        metavar="N",
        help="after writing, answer N (default 8) prompts of the run's test split greedily with MLX and with "
        "llama.cpp on the exported file(s) as Ollama runs them (the Modelfile's template, system prompt and stop "
        "tokens), and print per prompt whether the first --verify-tokens tokens agree; needs llama-cpp-python",
    )
    q.add_argument(
        "--verify-tokens",
        type=int,
        default=16,
        metavar="K",
        help="how many answer tokens --verify compares (default 16)",
    )


def _add_modelfile(formats: Subparsers) -> None:
    q = formats.add_parser(
        "modelfile",
        help="only the Ollama Modelfile for a GGUF file",
        description="Write an Ollama Modelfile for GGUF: FROM, a TEMPLATE equivalent to RUN's "
        "chat template, stop tokens, the training system prompt and sampling defaults.",
    )
    q.add_argument("run", metavar="RUN", help=RUN_HELP)
    q.add_argument("--gguf", required=True, metavar="FILE", help="the GGUF file the Modelfile points at")
    q.add_argument("--out", default="Modelfile", metavar="FILE", help="where to write it (default ./Modelfile)")
    q.set_defaults(func=cmd_export_modelfile, needs_mlx=True)


def cmd_export_hf(args: argparse.Namespace) -> None:
    from mlx_ft.export.hf import export_hf

    print(f"fused model written to {export_hf(args.run, Path(args.out))}")


def cmd_export_gguf(args: argparse.Namespace) -> None:
    if args.verify is not None:
        from mlx_ft.inference import verify

        if args.verify < 1 or args.verify_tokens < 1:
            raise UserError("--verify N and --verify-tokens K count prompts and tokens: give 1 or more")
        verify.llama_cpp()  # before minutes of export: say how to install it, or that there is nothing to verify with
        verify.test_split(args.run)
    if not args.adapter_only and (args.base or args.base_type):
        raise UserError("--base and --base-type go with --adapter-only (the base an adapter applies to)")
    name = Path(args.run).resolve().name
    out = _export_adapter(args, name) if args.adapter_only else _export_fused(args, name)
    if args.verify is not None:
        verify.verify(args.run, out.parent / "Modelfile", args.verify, args.verify_tokens)


def _export_adapter(args: argparse.Namespace, name: str) -> Path:
    from mlx_ft.export import gguf_adapter

    file_type = args.type or "f16"
    out = Path(args.out) if args.out else Path(f"{name}-lora-{file_type}.gguf")
    done = gguf_adapter.export_adapter(
        args.run, out, file_type, args.base_type or "q4_k_m", Path(args.base) if args.base else None
    )
    print(
        f"LoRA adapter written to {out} (rank {done.rank}, alpha {done.alpha:g}, {done.pairs} layers), for base "
        f"{done.base}, with {done.modelfile}; then: cd {out.parent} && ollama create NAME -f Modelfile "
        f"(or: llama-server -m {done.base} --lora {out})"
    )
    if done.note:
        print(f"note: {done.note}")
    return out


def _export_fused(args: argparse.Namespace, name: str) -> Path:
    from mlx_ft.export.gguf import export_gguf

    file_type = args.type or "q4_k_m"
    out = Path(args.out) if args.out else Path(f"{name}-{file_type}.gguf")
    export_gguf(args.run, file_type, out)
    print(
        f"GGUF written to {out}, with {out.parent / 'Modelfile'}; then: cd {out.parent} && "
        f"ollama create NAME -f Modelfile"
    )
    return out


def cmd_export_modelfile(args: argparse.Namespace) -> None:
    from mlx_ft.atomic import write_text
    from mlx_ft.export.modelfile import modelfile
    from mlx_ft.models import loader

    loaded = loader.load(args.run, adapter=False)
    out = Path(args.out)
    write_text(out, modelfile(Path(args.gguf).name, loaded.tokenizer, loaded.system))
    print(f"Modelfile written to {out}")
