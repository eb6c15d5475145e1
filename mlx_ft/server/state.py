"""The server's configuration and its state: what `create_app` builds once and every request reads, as typed
attributes (`current().engine`), not string keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, current_app

from mlx_ft.server import MAX_UPLOAD_MB
from mlx_ft.server.engine import Engine, ModelRef
from mlx_ft.server.history import History
from mlx_ft.server.job_runner import JobRunner
from mlx_ft.server.task_service import TaskService

MAX_BODY_BYTES = 1 << 20  # a chat message, not an upload
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB << 20  # a data set upload, allowed on the upload route only
EXTENSION = "mlx_ft"  # the key of our state in Flask's app.extensions


@dataclass
class ServeConfig:
    source: str  # what the model was loaded from
    db: Path = Path("chat_history.db")
    runs_dir: Path = Path("runs")
    data_dir: Path = Path("data")  # uploaded data sets go to data/<name>/ (`--data-dir`)
    exports_dir: Path = Path("exports")  # export jobs write here (`--exports-dir`)
    models_dir: Path = Path("models")  # local models the new-run form offers (`--models`)
    max_body_bytes: int = MAX_BODY_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    tasks: list[str] = field(default_factory=list)  # recipes whose tasks get endpoints (`--task`)
    extra: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the address it listens on (`--host`): a Host header it may be reached by
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names to accept (`--allow-host`; "*": any)
    more_runs: list[str] = field(default_factory=list)  # more runs to answer with (`serve RUN RUN ...`)
    home: str = "chat"  # the page at /: "studio" when serve was started without a RUN (the chat is also at /chat)
    token: str | None = None  # asked of every request when set (`--token`, MLX_FT_TOKEN; generated off loopback)
    token_generated: bool = False  # made up at start (so printed whole), not given by the user


@dataclass
class ServerState:
    config: ServeConfig
    engine: Engine
    history: History
    tasks: TaskService
    jobs: JobRunner  # the studio's train/eval/export jobs
    # The models `serve` was started with, by the names the OpenAI API knows them by; the first is the default.
    served_models: dict[str, ModelRef | None] = field(default_factory=dict)


def of(app: Flask) -> ServerState:
    return app.extensions[EXTENSION]


def current() -> ServerState:
    """The state of the app handling the current request."""
    return of(current_app)
