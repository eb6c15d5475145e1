"""The Flask app: `create_app(config)` builds it around one loaded model and one history file.

Pages come from templates/ and static/ (nothing from a CDN: it works offline). Every error an API client can cause
is a 4xx JSON `{"error": "..."}` and the server keeps serving.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from mlx_ft.errors import UserError
from mlx_ft.resources import resource
from mlx_ft.server.history import DEFAULT_SETTINGS, History

MAX_BODY_BYTES = 1 << 20  # a chat message, not an upload


@dataclass
class ServeConfig:
    source: str  # what the model was loaded from
    db: Path = Path("chat_history.db")
    runs_dir: Path = Path("runs")
    max_body_bytes: int = MAX_BODY_BYTES
    tasks: list[str] = field(default_factory=list)  # recipes whose tasks get endpoints (`--task`)
    extra: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the address it listens on (`--host`): a Host header it may be reached by
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names to accept (`--allow-host`; "*": any)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"field {key!r} is required: a non-empty string")
    return value


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def event_stream(events: Iterator[str]) -> Response:
    resp = Response(events, mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def create_app(config: ServeConfig, engine: Any = None) -> Flask:
    """The app around `engine` (a `server.engine.Engine`), loaded from `config.source` when not given."""
    from mlx_ft.server import api, guard, openai_api, runs, tasks

    task_service = tasks.TaskService(engine, config.tasks)  # a bad recipe fails before the model loads
    if engine is None:
        from mlx_ft import loader
        from mlx_ft.server.engine import Engine

        engine = task_service.engine = Engine(loader.load(config.source))
    app = Flask("mlx_ft.server", template_folder=str(resource("templates")), static_folder=str(resource("static")))
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.extensions["mlx_ft"] = {"config": config, "engine": engine, "history": History(config.db),
                                "tasks": task_service}
    guard.install(app, guard.host_names(config.host, config.allowed_hosts))  # first: before any route runs

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> tuple[Response, int]:
        return jsonify(error=e.message), e.status

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        if request.path.startswith(("/api/", "/v1/")):
            message = "request body too large" if e.code == 413 else (e.description or e.name)
            return jsonify(error=message), e.code
        return e

    @app.get("/")
    def chat_page() -> str:
        return render_template("chat.html", model_label=engine.loaded.label, adapter=adapter_name(engine),
                               default_settings=DEFAULT_SETTINGS)

    @app.get("/runs")
    def runs_page() -> str:
        return render_template("runs.html", model_label=engine.loaded.label, adapter=adapter_name(engine))

    @app.get("/api/info")
    def info() -> Response:
        return jsonify(model=engine.loaded.label, adapter=adapter_name(engine), defaults=DEFAULT_SETTINGS,
                       context=engine.context)

    app.register_blueprint(api.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(tasks.bp)
    tasks.add_get_routes(app, task_service)
    return app


def adapter_name(engine: Any) -> str | None:
    loaded = engine.loaded
    return str(loaded.adapter_file.parent) if loaded.adapter_file is not None else None


def state() -> dict[str, Any]:
    from flask import current_app

    return current_app.extensions["mlx_ft"]


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
                raise UserError(f"port {port} on {host} is in use (another `serve`?); choose another with --port") \
                    from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve(source: str, host: str, port: int, db: Path, runs_dir: Path, tasks: list[str] | None = None,
          allowed_hosts: list[str] | None = None) -> None:
    """Serve until Ctrl-C, then end the process (exit status 0) without Python's interpreter shutdown."""
    from werkzeug.serving import make_server

    check_port(host, port)
    app = create_app(ServeConfig(source, db, runs_dir, tasks=tasks or [], host=host,
                                 allowed_hosts=allowed_hosts or []))
    label = app.extensions["mlx_ft"]["engine"].loaded.label
    print(f"mlx_ft: serving {label} at http://{host}:{port} (history in {db})", file=sys.stderr)
    for t in app.extensions["mlx_ft"]["tasks"].describe():
        route = f" and GET {t['get_route']['path']}" if t["get_route"] else ""
        print(f"mlx_ft: task {t['name']} at POST /api/tasks/{t['name']}{route}", file=sys.stderr)
    if "*" in (allowed_hosts or []):
        print("mlx_ft: --allow-host '*': any Host header is accepted (the DNS-rebinding check is off)",
              file=sys.stderr)
    # make_server, not run_simple: the same threaded server (answers still stream token by token) without
    # run_simple's red "development server" banner; serve_forever ends quietly on Ctrl-C.
    make_server(host, port, app, threaded=True).serve_forever()
    # A request thread that generated holds MLX's per-thread compile cache; when it is still answering (or just
    # ending) while Python shuts down, that cache's destructor aborts the process ("terminate called without an
    # active exception", SIGABRT). History is committed per request, so leave as SIGTERM would, after closing it.
    app.extensions["mlx_ft"]["history"].close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
