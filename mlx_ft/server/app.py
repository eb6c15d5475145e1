"""The Flask app: `create_app(config)` builds it around one loaded model and one history file.

Pages come from templates/ and static/ (nothing from a CDN: it works offline). Every error an API client can cause
is a 4xx JSON `{"error": "..."}` and the server keeps serving.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from mlx_ft.errors import UserError
from mlx_ft.models import loader
from mlx_ft.resources import resource
from mlx_ft.server import api, guard, openai_api, runs, studio_data, studio_jobs, studio_models, tasks
from mlx_ft.server.engine import Engine, ModelRef
from mlx_ft.server.history import DEFAULT_SETTINGS, History
from mlx_ft.server.http import ApiError
from mlx_ft.server.job_runner import JobRunner
from mlx_ft.server.jobs import JobStore
from mlx_ft.server.state import EXTENSION, ServeConfig, ServerState, of
from mlx_ft.server.task_service import TaskService


def create_app(config: ServeConfig, engine: Engine | None = None) -> Flask:
    """The app around `engine`, loaded from `config.source` when not given."""
    task_service = TaskService(engine, config.tasks)  # a bad recipe fails before the model loads
    more = _more_runs(config)
    if engine is None:
        # Bare, with the adapter worn as a swappable variant: the base and the other runs on it can answer too.
        engine = task_service.engine = Engine(loader.load(config.source, adapter=False))
    served_models: dict[str, ModelRef | None] = {_name(config.source): None}
    for name, path in more.items():
        if name in served_models:
            raise UserError(f"two of the served models are named {name!r}; serve one of them from another folder")
        served_models[name] = ModelRef(name, path)
        engine.pin(ModelRef(name, path))
    app = Flask("mlx_ft.server", template_folder=str(resource("templates")), static_folder=str(resource("static")))
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    jobs = JobRunner(JobStore(config.db), config.runs_dir)
    app.extensions[EXTENSION] = ServerState(config, engine, History(config.db), task_service, jobs, served_models)
    guard.install(app, guard.host_names(config.host, config.allowed_hosts))  # first: before any route runs

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> tuple[Response, int]:
        return _error(e.message, e.status)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        if request.path.startswith(("/api/", "/v1/")):
            message = "request body too large" if e.code == 413 else (e.description or e.name)
            return _error(message, e.code or 500)
        return e

    @app.context_processor
    def _home() -> dict[str, str]:
        return {"home": config.home}  # the nav bar marks the page at / as the one it is

    @app.get("/chat")
    def chat_page() -> str:
        return render_template(
            "chat.html",
            model_label=engine.loaded.label,
            adapter=adapter_name(engine),
            default_settings=DEFAULT_SETTINGS,
        )

    @app.get("/")
    def home_page() -> str:
        # `serve` with no RUN is there to train one: it opens on the studio; `serve RUN` on the chat with that run.
        return studio_page() if config.home == "studio" else chat_page()

    @app.get("/runs")
    def runs_page() -> str:
        return render_template("runs.html", model_label=engine.loaded.label, adapter=adapter_name(engine))

    @app.get("/studio")
    def studio_page() -> str:
        return render_template("studio.html", model_label=engine.loaded.label, adapter=adapter_name(engine))

    @app.get("/api/info")
    def info() -> Response:
        return jsonify(
            model=engine.loaded.label, adapter=adapter_name(engine), defaults=DEFAULT_SETTINGS, context=engine.context
        )

    app.register_blueprint(api.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(studio_data.bp)
    app.register_blueprint(studio_models.bp)
    app.register_blueprint(studio_jobs.bp)
    tasks.add_get_routes(app, task_service)
    return app


def _error(message: str, status: int) -> tuple[Response, int]:
    """`{"error": "..."}`; on the OpenAI routes OpenAI's shape, which its clients read the message from."""
    if request.path.startswith("/v1/"):
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        return jsonify(error={"message": message, "type": kind, "param": None, "code": None}), status
    return jsonify(error=message), status


def _name(source: str) -> str:
    """The name a served model answers to: a run's folder name (its adapter folder's run, for best/ and
    checkpoints), or the model source as given."""
    path = Path(source).expanduser()
    found = loader.find_run(path) if path.is_dir() else None
    if found is None:
        return source
    run, _ = found
    return run.name if path.resolve() == run.resolve() else f"{run.name}@{path.name}"


def _more_runs(config: ServeConfig) -> dict[str, Path]:
    """The other runs `serve` was given, by name; each must be a run (an adapter on a base)."""
    out: dict[str, Path] = {}
    for source in config.more_runs:
        path = Path(source).expanduser()
        if not (path.is_dir() and loader.find_run(path)):
            raise UserError(f"{source}: not a run folder (only the first model of `serve` may be a plain model)")
        if (name := _name(source)) in out:
            raise UserError(f"two of the served runs are named {name!r}; serve one of them from another folder")
        out[name] = path
    return out


def adapter_name(engine: Engine) -> str | None:
    loaded = engine.loaded
    return str(loaded.adapter_file.parent) if loaded.adapter_file is not None else None


def check_port(host: str, port: int) -> None:
    """Fail with one line before loading the model when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # As Werkzeug's server does: a port left in TIME_WAIT by a server that just stopped is free to reuse, while
        # one another process listens on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use (another `serve`?); choose another with --port"
                ) from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(config: ServeConfig, port: int) -> None:
    """Serve until Ctrl-C, then end the process (exit status 0) without Python's interpreter shutdown."""
    host = config.host
    check_port(host, port)
    app = create_app(config)
    served = of(app)
    label = served.engine.loaded.label
    print(f"mlx_ft: serving {label} at http://{host}:{port} (history in {config.db})", file=sys.stderr)
    print(f"mlx_ft: studio at http://{host}:{port}/{'' if config.home == 'studio' else 'studio'}", file=sys.stderr)
    for t in served.tasks.describe():
        route = f" and GET {t['get_route']['path']}" if t["get_route"] else ""
        print(f"mlx_ft: task {t['name']} at POST /api/tasks/{t['name']}{route}", file=sys.stderr)
    if "*" in config.allowed_hosts:
        print("mlx_ft: --allow-host '*': any Host header is accepted (the DNS-rebinding check is off)", file=sys.stderr)
    # make_server, not run_simple: the same threaded server (answers still stream token by token) without
    # run_simple's red "development server" banner; serve_forever ends quietly on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops as Ctrl-C does: a running job saves its checkpoint
    make_server(host, port, app, threaded=True).serve_forever()
    if served.jobs.running():
        print("mlx_ft: stopping the running job (it saves a checkpoint; resume it later)", file=sys.stderr)
    served.jobs.shutdown()
    # A request thread that generated holds MLX's per-thread compile cache; when it is still answering (or just
    # ending) while Python shuts down, that cache's destructor aborts the process ("terminate called without an
    # active exception", SIGABRT). History is committed per request, so leave as SIGTERM would, after closing it.
    served.history.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
