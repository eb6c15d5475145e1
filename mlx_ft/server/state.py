"""The server's configuration and its state: what `create_app` builds once and every request reads, as typed
attributes (`current().engine`), not string keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Flask, current_app

from mlx_ft.inference.engine import Engine, ModelRef
from mlx_ft.services.history import History
from mlx_ft.services.job_runner import JobRunner
from mlx_ft.services.serve_config import MAX_BODY_BYTES as MAX_BODY_BYTES
from mlx_ft.services.serve_config import MAX_UPLOAD_BYTES as MAX_UPLOAD_BYTES
from mlx_ft.services.serve_config import ServeConfig
from mlx_ft.services.tasks import TaskService

EXTENSION = "mlx_ft"  # the key of our state in Flask's app.extensions


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
