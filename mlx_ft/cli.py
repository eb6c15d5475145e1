"""Command line: parse arguments, call one function, print user errors as one line (exit 2)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_ft import __version__, checks, data
from mlx_ft import config as config_mod
from mlx_ft.data import recipes
from mlx_ft.data import stats as data_stats
from mlx_ft.errors import UserError
from mlx_ft.inference.sampling import CHAT_TEMPERATURE, MAX_TOKENS
from mlx_ft.services.serve_config import MAX_UPLOAD_MB
from mlx_ft.system.blas import blas_warning

if TYPE_CHECKING:
    from mlx_ft.inference.sampling import Sampling
    from mlx_ft.models.loader import Loaded


def _cmd_prepare(args: argparse.Namespace) -> None:
    recipe = recipes.load(args.recipe) if args.recipe else None
    if recipe and args.instruction:
        raise UserError("--instruction and --recipe both wrap the input; the recipe's task templates decide it")
    report = data.prepare(
        [Path(p) for p in args.inputs],
        Path(args.out),
        fmt=args.format,
        opts=data.Options(
            system=args.system or (recipe.system if recipe else None),
            instruction=args.instruction,
            recipe=recipe,
            keep=tuple(dict.fromkeys(["task", *(args.keep_field or [])])),
        ),
        valid=args.valid,
        test=args.test,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
        datasets=args.dataset,
        stats=None
        if args.no_stats
        else data_stats.settings(args.model, args.max_seq_length, args.truncate, args.skip_long),
        group=args.group_field,
    )
    print(report.summary())


def _cmd_train(args: argparse.Namespace) -> None:
    from mlx_ft.training.run import train

    flags = config_mod.flags_of(args)
    if args.resume:
        if args.config:
            raise UserError("--resume reads the run's own config.yaml; leave out --config")
        run = train(config_mod.for_resume(Path(args.resume), flags, args.set or []), resume=True)
    else:
        run = train(config_mod.from_cli(args.config, flags, args.set or []))
    print(f"adapter written to {run}")


def _cmd_import_gguf(args: argparse.Namespace) -> None:
    from mlx_ft.models.gguf_import import import_gguf

    out = import_gguf(Path(args.file), Path(args.out), dtype=args.dtype)
    print(f"imported {args.file} into {out}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from mlx_ft.inference import evaluate

    report = evaluate.evaluate(
        args.run,
        args.data,
        args.split,
        compare_base=args.compare_base,
        by_field=args.by_field,
        out=Path(args.out) if args.out else None,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    print(evaluate.format_report(report))


def _sampling(args: argparse.Namespace) -> Sampling:
    from mlx_ft.inference.sampling import Sampling

    return Sampling(temp=args.temp, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)


def _system(args: argparse.Namespace, loaded: Loaded) -> str | None:
    """--system, else the system prompt the run was trained with (answers match training best under it)."""
    if args.system is not None:
        return args.system or None
    if loaded.system:
        print(f"mlx_ft: using the run's training system prompt: {loaded.system}", file=sys.stderr)
    return loaded.system


def _cmd_infer(args: argparse.Namespace) -> None:
    from mlx_ft.inference import infer
    from mlx_ft.models import loader

    if (args.text is None) == (args.file is None):
        raise UserError("give either a TEXT to answer or --file FILE")
    if args.file and not args.out:
        raise UserError("--file needs --out FILE for the answers")
    ref = infer.TaskRef.parse(args.task) if args.task else None
    text = args.text
    if ref and text is not None:
        try:  # before the model loads: a recipe with several tasks needs one named
            text = ref.render(text)
        except ValueError:
            raise UserError(
                f"recipe {ref.recipe.name} has several tasks; name one: --task "
                f"{ref.recipe.name}:{next(iter(ref.recipe.tasks))}"
            ) from None
    loaded = loader.load(args.run)
    if args.file:
        n = infer.run_file(loaded, Path(args.file), Path(args.out), _sampling(args), _system(args, loaded), ref)
        print(f"answered {n} prompts into {args.out}", file=sys.stderr)
    else:
        infer.run_one(loaded, text, _sampling(args), _system(args, loaded))


def _cmd_chat(args: argparse.Namespace) -> None:
    from mlx_ft.inference import chat_repl
    from mlx_ft.models import loader

    loaded = loader.load(args.run)
    chat_repl.run(chat_repl.Session(loaded, _sampling(args), _system(args, loaded)))


def _cmd_serve(args: argparse.Namespace) -> None:
    from mlx_ft.server.app import serve
    from mlx_ft.server.guard import TOKEN_ENV, server_token
    from mlx_ft.server.state import ServeConfig

    runs = args.run or []
    token = server_token(args.host, args.token)
    config = ServeConfig(
        runs[0] if runs else config_mod.TrainConfig.model,
        Path(args.db),
        Path(args.runs),
        data_dir=Path(args.data_dir),
        exports_dir=Path(args.exports_dir),
        models_dir=Path(args.models),
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        tasks=args.task or [],
        host=args.host,
        allowed_hosts=args.allow_host or [],
        more_runs=runs[1:],
        home="chat" if runs else "studio",
        token=token,
        token_generated=token is not None and args.token is None and not os.environ.get(TOKEN_ENV),
    )
    serve(config, args.port)


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from mlx_ft.export.hf import export_hf

    print(f"fused model written to {export_hf(args.run, Path(args.out))}")


def _cmd_export_gguf(args: argparse.Namespace) -> None:
    from mlx_ft.export import gguf_adapter
    from mlx_ft.export.gguf import export_gguf

    if args.verify is not None:
        from mlx_ft.inference import verify

        if args.verify < 1 or args.verify_tokens < 1:
            raise UserError("--verify N and --verify-tokens K count prompts and tokens: give 1 or more")
        verify.llama_cpp()  # before minutes of export: say how to install it, or that there is nothing to verify with
        verify.test_split(args.run)
    if not args.adapter_only and (args.base or args.base_type):
        raise UserError("--base and --base-type go with --adapter-only (the base an adapter applies to)")
    name = Path(args.run).resolve().name
    if args.adapter_only:
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
    else:
        file_type = args.type or "q4_k_m"
        out = Path(args.out) if args.out else Path(f"{name}-{file_type}.gguf")
        export_gguf(args.run, file_type, out)
        print(
            f"GGUF written to {out}, with {out.parent / 'Modelfile'}; then: cd {out.parent} && "
            f"ollama create NAME -f Modelfile"
        )
    if args.verify is not None:
        verify.verify(args.run, out.parent / "Modelfile", args.verify, args.verify_tokens)


def _cmd_export_modelfile(args: argparse.Namespace) -> None:
    from mlx_ft.atomic import write_text
    from mlx_ft.export.modelfile import modelfile
    from mlx_ft.models import loader

    loaded = loader.load(args.run, adapter=False)
    out = Path(args.out)
    write_text(out, modelfile(Path(args.gguf).name, loaded.tokenizer, loaded.system))
    print(f"Modelfile written to {out}")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from mlx_ft.system import doctor

    return doctor.main(as_json=args.json)


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


def _integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type that checks as the config and the server do (`mlx_ft.checks`), in the same words."""

    def parse(text: str) -> int:
        try:
            return checks.integer(text, "it", lo, hi, text=True)
        except checks.FieldError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("it ")) from None

    return parse


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    """A finite number in bounds, as argparse's type (NaN and inf are floats to `float()`, never here)."""

    def parse(text: str) -> float:
        try:
            return checks.number(text, "it", lo, hi, lo_open=lo_open, text=True)
        except checks.FieldError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("it ")) from None

    return parse


def _add_sampling_flags(p: argparse.ArgumentParser, temp: float) -> None:
    p.add_argument(
        "--temp", type=_number(0, 10), default=temp, help=f"sampling temperature; 0 is greedy (default {temp})"
    )
    p.add_argument(
        "--top-p",
        type=_number(0, 1, lo_open=True),
        default=1.0,
        help="nucleus sampling: keep the most likely tokens whose probabilities sum to this (default 1.0: all)",
    )
    p.add_argument(
        "--max-tokens",
        type=_integer(1, 1 << 20),
        default=MAX_TOKENS,
        help=f"longest answer in tokens (default {MAX_TOKENS})",
    )
    p.add_argument("--seed", type=_integer(0, (1 << 64) - 1), help="random seed, for repeatable sampled answers")
    p.add_argument(
        "--system", help="system prompt (default: the one every training example had, if any; --system '' for none)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx_ft",
        description="Fine-tune a small chat model with MLX: prepare data, train LoRA/DoRA/full, import GGUF models.",
    )
    parser.add_argument("--version", action="version", version=f"mlx_ft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prepare",
        help="turn raw chat / instruction / text files into train/valid/test JSONL",
        description="Convert raw examples (.json array, .jsonl, .csv with a header row, .txt with "
        'one text per line; or LLaMA-Factory\'s dataset_info.json) into {"messages": […]} chat JSONL (or {"text": …} '
        "for continued pre-training) split into train/valid/test. Formats: "
        + ", ".join(data.FORMATS)
        + "; detected per example unless --format is given. Every problem "
        "is reported as FILE:LINE before anything is written. Then prints token lengths per split "
        "under the model's chat template and how many examples max_seq_length would cut.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="FILE", help="raw data files (.json, .jsonl, .csv, .txt) or a dataset_info.json"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write train/valid/test.jsonl into")
    p.add_argument("--format", choices=list(data.FORMATS), help="format of plain input files (default: detect)")
    p.add_argument(
        "--dataset",
        action="append",
        metavar="NAME",
        help="entry of dataset_info.json to use (repeatable; default: every supported entry whose file is "
        "here, the others listed as skipped with the reason)",
    )
    p.add_argument("--system", help="system prompt to put at the start of every conversation that has none")
    p.add_argument("--instruction", help="text put before every input (io format)")
    p.add_argument(
        "--recipe",
        metavar="NAME|DIR",
        help="wrap every input (io format) in its task's template from this recipe (a folder with "
        "recipe.yaml, or a shipped recipe: miners, router); its system prompt applies unless --system",
    )
    p.add_argument(
        "--keep-field",
        action="append",
        metavar="NAME",
        help="carry this field of each record (a label such as a category) into the prepared splits, "
        "for `eval --by-field NAME` (repeatable; `task` is always carried)",
    )
    p.add_argument("--valid", type=_number(0, 0.9), default=0.1, help="fraction for the validation split (default 0.1)")
    p.add_argument("--test", type=_number(0, 0.9), default=0.1, help="fraction for the test split (default 0.1)")
    p.add_argument("--seed", type=_integer(0, (1 << 32) - 1), default=0, help="seed of the split (default 0)")
    p.add_argument(
        "--group-field",
        metavar="NAME",
        help="keep the examples that share this field's value in one split (e.g. one product's listings), "
        "so the test split holds only unseen groups",
    )
    p.add_argument("--skip-invalid", action="store_true", help="skip bad examples (and count them) instead of failing")
    p.add_argument("--model", help="model whose tokenizer measures the token lengths (default: the config's model)")
    p.add_argument(
        "--max-seq-length",
        type=_integer(1, 1 << 20),
        metavar="N",
        help="count the examples longer than this (default: the config's max_seq_length)",
    )
    p.add_argument(
        "--truncate",
        choices=data_stats.TRUNCATE,
        default="none",
        help="how training fits an example longer than max_seq_length: none (cut its end, as always) or prompt "
        "(cut the prompt's start, keeping the whole answer); recorded with the set, which training then follows",
    )
    p.add_argument(
        "--skip-long", action="store_true", help="leave out every example longer than max_seq_length (counted)"
    )
    p.add_argument("--no-stats", action="store_true", help="skip the token-length statistics (no tokenizer load)")
    p.set_defaults(func=_cmd_prepare, needs_mlx=False)

    p = sub.add_parser(
        "train",
        help="train a LoRA/DoRA adapter (or a full fine-tune) from lora_config.yaml",
        description="Train with mlx_lm's tuner. Settings come from the config file (default: "
        "./lora_config.yaml, else the shipped one); every flag below overrides its key. Writes a run "
        "folder with config.yaml, adapter_config.json, adapters.safetensors, metrics.jsonl, loss.png, "
        "best/ (the best validation loss) and checkpoints/. Ctrl-C saves a checkpoint after the current step; "
        "`--resume RUN` continues. Data-parallel over several Macs: mlx.launch --hosts A,B "
        "python -m mlx_ft train …",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its newest checkpoint, exactly as if it had "
        "never stopped (only when-to-stop/report/save keys may change, e.g. --iters)",
    )
    config_mod.add_arguments(p)
    p.set_defaults(func=_cmd_train, needs_mlx=True)

    p = sub.add_parser(
        "import-gguf",
        help="turn a llama/qwen2/qwen3 .gguf file into a Hugging Face style folder",
        description="Dequantize a GGUF model (F32/F16/BF16/Q8_0/Q4_x/Q5_x/K-quants) into "
        "config.json + model.safetensors + tokenizer files that mlx_lm and transformers load.",
    )
    p.add_argument("file", help="the .gguf file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="weight type to store (default float32: exact, and fastest on CPU)",
    )
    p.set_defaults(func=_cmd_import_gguf, needs_mlx=True)

    run_help = (
        "a run folder (base model + adapter; also RUN/best or RUN/checkpoints/step-N), a fused model folder, "
        "a .gguf file, a built-in model or a Hugging Face repo id"
    )
    p = sub.add_parser(
        "eval",
        help="score a run on a data split: loss, exact match, BLEU, ROUGE-L …",
        description="Loss and perplexity over the learned tokens of a prepared split (on preference pairs, "
        "of the chosen answers, with preference accuracy and the log-probability margin), and generation "
        "metrics on each example's final answer (greedy): exact match, label accuracy with a "
        "confusion table when the answers are a small set of labels, BLEU-4 and ROUGE-L (characters "
        "for Chinese, words otherwise), and the length ratio. Per task when examples carry a `task` "
        "field. Writes metrics.json and predictions.jsonl to RUN/eval.",
    )
    p.add_argument("run", metavar="RUN", help=run_help)
    p.add_argument("--data", metavar="DIR", help="prepared data folder (default: the run's training data)")
    p.add_argument("--split", default="test", help="which split file to score (default test)")
    p.add_argument(
        "--compare-base", action="store_true", help="score the base model without the adapter too, side by side"
    )
    p.add_argument(
        "--by-field",
        metavar="NAME",
        help="break every metric down by this field of the examples (default: `task` when the examples have it)",
    )
    p.add_argument("--out", metavar="DIR", help="where to write the results (default RUN/eval)")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="the most tokens any answer may take (default 1024); each example stops sooner, at twice its own "
        "expected answer's tokens + 16",
    )
    p.add_argument("--batch-size", type=int, default=8, help="examples per batch for the loss (default 8)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N examples of the split (a quick look)")
    p.set_defaults(func=_cmd_eval, needs_mlx=True)

    p = sub.add_parser(
        "infer",
        help="answer one prompt (streamed), or a JSONL file of prompts (batched)",
        description="Answer TEXT, streaming the answer as it is generated, or every line of --file "
        "(JSONL/JSON/CSV rows with `messages`, or a `prompt`/`input`/`question`/`instruction` field) "
        "into --out, each row with an `output` field added.",
    )
    p.add_argument("run", metavar="RUN", help=run_help)
    p.add_argument("text", nargs="?", help="the prompt")
    p.add_argument("--file", metavar="FILE", help="prompts to answer in batches")
    p.add_argument("--out", metavar="FILE", help="where --file's answers go (JSONL)")
    p.add_argument(
        "--task",
        metavar="RECIPE[:TASK]",
        help="wrap the input in a recipe task's template, as its training data was (e.g. miners, "
        "router:scene; in --file, a line's own `task` field picks the task)",
    )
    _add_sampling_flags(p, temp=0.0)
    p.set_defaults(func=_cmd_infer, needs_mlx=True)

    p = sub.add_parser(
        "chat",
        help="talk to a run in the terminal",
        description="A multi-turn chat in the terminal. Commands: /clear, /system TEXT, /save FILE, "
        "/help, /exit. Ctrl-D quits; Ctrl-C stops an answer, or quits at the prompt.",
    )
    p.add_argument("run", metavar="RUN", help=run_help)
    _add_sampling_flags(p, temp=CHAT_TEMPERATURE)
    p.set_defaults(func=_cmd_chat, needs_mlx=True)

    p = sub.add_parser(
        "serve",
        help="web chat with history, the studio (train, compare, evaluate, export in the browser), OpenAI API",
        description="Serve RUN (default: the built-in model) in a browser chat at http://HOST:PORT "
        "(conversations kept in a SQLite file across restarts, answers streamed), with a runs page at /runs "
        "(loss curves, live while training) and the studio at /studio: upload or pick a data set and see its "
        "problems as file:line, start a run from a form that shows its config.yaml and train command, watch "
        "it as a job, chat with and compare the base, any run and any checkpoint, evaluate a run against its "
        "base and export GGUF + Modelfile or a fused HF folder. Jobs (train, eval, export) run one at a time "
        "as `python -m mlx_ft` processes, later ones queued, and are kept in the --db file. No path outside "
        "the studio's folders can be named through the page: --data-dir (uploads), --runs (runs, eval "
        "results), --exports-dir (exports) and --models (local models to train from). When serve stops "
        "(Ctrl-C or SIGTERM) it sends the running job SIGINT, as the studio's Stop does: train saves a "
        "checkpoint and exits, and the job shows as interrupted, resumable from that checkpoint; queued jobs "
        "wait for the next serve on the same --db. JSON APIs: /api/chat + /api/clear (server-side history), "
        "/api/conversations, /api/studio/... (the studio's), and OpenAI's /v1/chat/completions, /v1/completions "
        "(stream: true too) and /v1/models.",
    )
    p.add_argument(
        "run",
        metavar="RUN",
        nargs="*",
        help=f"{run_help} (default: the built-in {config_mod.TrainConfig.model}, the model `train` starts from, "
        "with the studio at /; the chat is at /chat). More runs answer too: the OpenAI API's `model` names each "
        "by its folder name (GET /v1/models lists them), runs on one base share it, and concurrent requests for "
        "the same model are generated together",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; on any other address every request must "
        "carry the token, see --token)",
    )
    p.add_argument("--port", type=_integer(1, 65535), default=5001, help="port (default 5001)")
    p.add_argument(
        "--token",
        help="ask every request for this token (a page opened with ?token=TOKEN keeps it in a cookie; API clients "
        "send 'Authorization: Bearer TOKEN', the openai client's api_key). Off loopback one is always asked: this, "
        "else $MLX_FT_TOKEN, else a new one printed with the URL. Prefer MLX_FT_TOKEN: a command line is visible to "
        "every user of the machine",
    )
    p.add_argument(
        "--db",
        default="chat_history.db",
        metavar="PATH",
        help="SQLite file of the chat history and the studio's jobs (default ./chat_history.db)",
    )
    p.add_argument(
        "--runs",
        default="runs",
        metavar="DIR",
        help="runs folder shown on /runs, where studio train jobs make their run folders (default ./runs)",
    )
    p.add_argument(
        "--data-dir", default="data", metavar="DIR", help="where the studio stores uploaded data sets (default ./data)"
    )
    p.add_argument(
        "--exports-dir", default="exports", metavar="DIR", help="where studio export jobs write (default ./exports)"
    )
    p.add_argument(
        "--models",
        default="models",
        metavar="DIR",
        help="local models the studio may train from (default ./models): each folder with a config.json and each "
        ".gguf file directly in DIR is offered in the new-run form, which takes no other local path than "
        "these, the served model and the runs' bases",
    )
    p.add_argument(
        "--max-upload-mb",
        type=_number(0, 1 << 20, lo_open=True),
        default=MAX_UPLOAD_MB,
        metavar="MB",
        help="largest data upload the studio accepts, in MiB (default %(default)g); chat requests keep a 1 MiB limit",
    )
    p.add_argument(
        "--task",
        action="append",
        metavar="RECIPE",
        help="serve this recipe's tasks at POST /api/tasks/<task> (and any GET route the recipe declares, "
        "e.g. the miner recipe's /model_generate/get-model-name); a folder with recipe.yaml or a shipped "
        "recipe name; repeatable",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="also answer requests whose Host header is NAME (e.g. this machine's LAN name with --host "
        "0.0.0.0); by default only 127.0.0.1, localhost, [::1] and --host are, which stops DNS "
        "rebinding; '*' accepts any Host (turns that check off); repeatable",
    )
    p.set_defaults(func=_cmd_serve, needs_mlx=True)

    p = sub.add_parser(
        "export",
        help="write a run out: fused Hugging Face folder, GGUF + Ollama Modelfile",
        description="Export a run for other tools.",
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = formats.add_parser(
        "hf",
        help="the adapter fused into the base: safetensors + config + tokenizer",
        description="Fuse RUN's adapter into its base model and write a Hugging Face folder "
        "(safetensors, sharded when large; config.json; tokenizer files with the chat template) "
        "that transformers and mlx_lm load. A QLoRA base is dequantized.",
    )
    q.add_argument("run", metavar="RUN", help=run_help)
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    q.set_defaults(func=_cmd_export_hf, needs_mlx=True)

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
    q.add_argument("run", metavar="RUN", help=run_help)
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
    q.set_defaults(func=_cmd_export_gguf, needs_mlx=True)

    q = formats.add_parser(
        "modelfile",
        help="only the Ollama Modelfile for a GGUF file",
        description="Write an Ollama Modelfile for GGUF: FROM, a TEMPLATE equivalent to RUN's "
        "chat template, stop tokens, the training system prompt and sampling defaults.",
    )
    q.add_argument("run", metavar="RUN", help=run_help)
    q.add_argument("--gguf", required=True, metavar="FILE", help="the GGUF file the Modelfile points at")
    q.add_argument("--out", default="Modelfile", metavar="FILE", help="where to write it (default ./Modelfile)")
    q.set_defaults(func=_cmd_export_modelfile, needs_mlx=True)

    p = sub.add_parser(
        "doctor",
        help="say what MLX will compute on here (Metal, CUDA or CPU) and what to fix",
        description="Report the Python and package versions, which MLX backend wheel's library is "
        "installed, the device MLX computes on (Apple GPU, NVIDIA GPU with its driver, or the CPU "
        "with its BLAS and a measured matmul speed), the peak FLOP/s used for MFU "
        "(MLX_FT_PEAK_TFLOPS overrides it) and the model caches; then every problem found, with its "
        "fix. Takes about a second and downloads nothing.",
        epilog="exit status: 0 when no problems were found, 1 when some were",
    )
    p.add_argument("--json", action="store_true", help="print the same facts as one JSON object")
    p.set_defaults(func=_cmd_doctor, needs_mlx=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        if args.needs_mlx:
            from mlx_ft.system.devices import unused_gpu_warning

            for warning in (blas_warning(), unused_gpu_warning()):
                if warning:
                    print(f"mlx_ft: warning: {warning}", file=sys.stderr)
        status = func(args)  # None for success; `doctor` reports its findings as 1
    except UserError as e:
        print(f"mlx_ft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlx_ft: interrupted", file=sys.stderr)
        return 130
    return status or 0
