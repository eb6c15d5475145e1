"""`mlx_ft serve`: the web chat, the studio and the OpenAI API (`mlx_ft.server.app`); Flask loads only in the
handler."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mlx_ft import config as config_mod
from mlx_ft.cli.args import RUN_HELP, Subparsers, integer, number
from mlx_ft.inference import prompt_cache
from mlx_ft.services.serve_config import MAX_UPLOAD_MB

_DESCRIPTION = (
    "Serve RUN (default: the built-in model) in a browser chat at http://HOST:PORT "
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
    "(stream: true too) and /v1/models."
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "serve",
        help="web chat with history, the studio (train, compare, evaluate, export in the browser), OpenAI API",
        description=_DESCRIPTION,
    )
    p.add_argument(
        "run",
        metavar="RUN",
        nargs="*",
        help=f"{RUN_HELP} (default: the built-in {config_mod.TrainConfig.model}, the model `train` starts from, "
        "with the studio at /; the chat is at /chat). More runs answer too: the OpenAI API's `model` names each "
        "by its folder name (GET /v1/models lists them), runs on one base share it, and concurrent requests for "
        "the same model are generated together",
    )
    _add_access_flags(p)
    _add_folder_flags(p)
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
    _add_cache_flags(p)
    p.set_defaults(func=cmd_serve, needs_mlx=True)


def _byte_size(text: str) -> int:
    try:
        return prompt_cache.parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_cache_flags(p: argparse.ArgumentParser) -> None:
    """The prompt cache: the KV state of earlier answers, so each turn of a conversation prefills only its news."""
    p.add_argument(
        "--prompt-cache-size",
        type=integer(0, 1 << 20),
        default=prompt_cache.DEFAULT_ENTRIES,
        metavar="N",
        help="conversations whose KV state is kept, so their next turn reads only the new tokens (default "
        "%(default)s; the least recently used go first; 0 turns the cache off)",
    )
    p.add_argument(
        "--prompt-cache-bytes",
        type=_byte_size,
        metavar="SIZE",
        help="memory the prompt cache may hold, e.g. 2G or 512M (default: an eighth of this machine's memory, at "
        "most 4G; 0 turns it off). Usage in the OpenAI API reports prompt_tokens_details.cached_tokens",
    )


def _add_access_flags(p: argparse.ArgumentParser) -> None:
    """Where the server listens and the token it asks for."""
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; on any other address every request must "
        "carry the token, see --token)",
    )
    p.add_argument("--port", type=integer(1, 65535), default=5001, help="port (default 5001)")
    p.add_argument(
        "--token",
        help="ask every request for this token (a page opened with ?token=TOKEN keeps it in a cookie; API clients "
        "send 'Authorization: Bearer TOKEN', the openai client's api_key). Off loopback one is always asked: this, "
        "else $MLX_FT_TOKEN, else a new one printed with the URL. Prefer MLX_FT_TOKEN: a command line is visible to "
        "every user of the machine",
    )


def _add_folder_flags(p: argparse.ArgumentParser) -> None:
    """The files and folders the server and the studio keep their state in, the only paths the page can name."""
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
        type=number(0, 1 << 20, lo_open=True),
        default=MAX_UPLOAD_MB,
        metavar="MB",
        help="largest data upload the studio accepts, in MiB (default %(default)g); chat requests keep a 1 MiB limit",
    )


def cmd_serve(args: argparse.Namespace) -> None:
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
        prompt_cache_size=args.prompt_cache_size,
        prompt_cache_bytes=args.prompt_cache_bytes,
    )
    serve(config, args.port)
