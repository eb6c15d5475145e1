"""The Flask app: `create_app(config)` builds it around one loaded model and one history file.

Pages come from templates/ and static/ (nothing from a CDN: it works offline). Every error an API client can cause
is a 4xx JSON `{"error": "..."}` and the server keeps serving.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from flask import Flask, Response, request
from waitress import create_server
from waitress.server import BaseWSGIServer
from werkzeug.exceptions import HTTPException

from mlx_ft.checks import FieldError
from mlx_ft.errors import Conflict, Invalid, NotFound, UserError
from mlx_ft.inference.engine import Engine, ModelRef
from mlx_ft.inference.prompt_cache import DEFAULT_ENTRIES, PromptCache
from mlx_ft.models import loader
from mlx_ft.resources import resource
from mlx_ft.server import guard, pages
from mlx_ft.server.chat import routes as api
from mlx_ft.server.http import ApiError, FiniteJSONProvider, error_response
from mlx_ft.server.openai import routes as openai_api
from mlx_ft.server.state import EXTENSION, ServeConfig, ServerState, of
from mlx_ft.server.studio import data as studio_data
from mlx_ft.server.studio import jobs as studio_jobs
from mlx_ft.server.studio import models as studio_models
from mlx_ft.server.studio import runs
from mlx_ft.server.tasks import routes as tasks
from mlx_ft.services import datasets
from mlx_ft.services.history import History
from mlx_ft.services.job_runner import JobRunner
from mlx_ft.services.job_store import JobStore
from mlx_ft.services.tasks import TaskService


def create_app(config: ServeConfig, engine: Engine | None = None) -> Flask:
    """The app around `engine`, loaded from `config.source` when not given."""
    task_service = TaskService(engine, config.tasks)  # a bad recipe fails before the model loads
    more = _more_runs(config)
    if engine is None:
        # Bare, with the adapter worn as a swappable variant: the base and the other runs on it can answer too.
        cache = PromptCache(
            config.prompt_cache_size if config.prompt_cache_size is not None else DEFAULT_ENTRIES,
            config.prompt_cache_bytes,
        )
        engine = task_service.engine = Engine(loader.load(config.source, adapter=False), cache)
    served_models: dict[str, ModelRef | None] = {_name(config.source): None}
    for name, path in more.items():
        if name in served_models:
            raise UserError(f"two of the served models are named {name!r}; serve one of them from another folder")
        served_models[name] = ModelRef(name, path)
        engine.pin(ModelRef(name, path))
    app = Flask("mlx_ft.server", template_folder=str(resource("templates")), static_folder=str(resource("static")))
    app.json = FiniteJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    datasets.remove_scratch(config.data_dir)  # what an upload killed mid-way (SIGKILL) left; none is running yet
    jobs = JobRunner(JobStore(config.db), config.runs_dir)
    app.extensions[EXTENSION] = ServerState(config, engine, History(config.db), task_service, jobs, served_models)
    # First: before any route runs.
    guard.install(app, guard.host_names(config.host, config.allowed_hosts), config.token)

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> tuple[Response, int]:
        return error_response(e.message, e.status)

    def _service_error(e: UserError) -> tuple[Response, int]:
        # What a request asked that the services refuse, in its status code. Other UserErrors that escape a route
        # (a run whose config cannot be read, a base that cannot load) stay 500s, as before services raised these.
        status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) else 400
        return error_response(str(e), status)

    for refused in (FieldError, Invalid, NotFound, Conflict):
        app.register_error_handler(refused, _service_error)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        if request.path.startswith(("/api/", "/v1/")):
            message = "request body too large" if e.code == 413 else (e.description or e.name)
            return error_response(message, e.code or 500)
        return e

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(studio_data.bp)
    app.register_blueprint(studio_models.bp)
    app.register_blueprint(studio_jobs.bp)
    tasks.add_get_routes(app, task_service)
    return app


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


def _listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or one line saying why not."""
    # As Werkzeug's server did: IPv6 when the host has a colon (`::` then also takes IPv4 where the system's default
    # allows it; waitress's own sockets would be IPv6-only), and SO_REUSEADDR: a port left in TIME_WAIT by a server
    # that just stopped is free to reuse, while one another process listens on is not.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another `serve`?); choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def check_port(host: str, port: int) -> None:
    """Fail with one line before loading the model when the port is taken."""
    _listen_socket(host, port).close()


def make_wsgi_server(app: WSGIApplication, host: str, port: int, config: ServeConfig) -> BaseWSGIServer:
    """`app` behind waitress on host:port (0: any free port, `.effective_port`), listening; `.run()` serves until
    KeyboardInterrupt. What `serve` runs, and what bench/serve.py measures."""
    return create_server(
        app,
        sockets=[_listen_socket(host, port)],
        # Each streamed answer (and each studio job's event stream) holds a thread until it ends; generation itself
        # runs in the engine's one scheduler thread, so these mostly wait. More requests than threads queue.
        threads=32,
        # Idle and slow connections are held by waitress's event loop, not by threads; past this many it stops
        # accepting until some close.
        connection_limit=100,
        # Closes a connection idle this long (seconds) with no request running: a stream still answering is never cut.
        channel_timeout=60,
        # Waitress reads the whole body before the app runs (a chunked one too, then given a CONTENT_LENGTH), so
        # a slow upload pins no thread. Its limit is the largest body any route takes plus room for multipart's
        # boundaries; below it Flask's MAX_CONTENT_LENGTH gives the route's own JSON 413.
        max_request_body_size=max(config.max_body_bytes, config.max_upload_bytes) + (1 << 20),
        ident=None,  # no Server header: nothing to say which server, or which version, answers
        clear_untrusted_proxy_headers=True,  # no proxy is trusted: X-Forwarded-* and Forwarded are dropped
        asyncore_use_poll=True,  # select() fails on a descriptor numbered over 1023
        # send_bytes stays at its default 1: every write (each SSE event) is sent at once, not gathered.
    )


def _access_log(app: WSGIApplication) -> WSGIApplication:
    """`app` writing a line per request to stderr as Werkzeug's server did (waitress logs none)."""

    def logged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            target = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
            line = f"{environ['REQUEST_METHOD']} {target} {environ['SERVER_PROTOCOL']}"
            line = line.encode("unicode_escape").decode("ascii")  # a client's control characters stay inert
            when = time.strftime("%d/%b/%Y %H:%M:%S")
            sys.stderr.write(f'{environ.get("REMOTE_ADDR", "-")} - - [{when}] "{line}" {status.split(" ")[0]} -\n')
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return logged


def _print_token(config: ServeConfig, port: int) -> None:
    """Where the token is asked and how to pass it: the link with the token when it was generated here (nobody
    else knows it), a placeholder when the user gave it."""
    local = "127.0.0.1" if not guard.is_loopback(config.host) else config.host
    shown = config.token if config.token_generated else "YOUR_TOKEN"
    where = "this server listens beyond this machine" if not guard.is_loopback(config.host) else "a token was given"
    print(
        f"mlx_ft: {where}: every request needs the token. Open http://{local}:{port}/?token={shown} (the page keeps "
        f"it in a cookie); API clients send 'Authorization: Bearer {shown}' (openai: api_key=...)",
        file=sys.stderr,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(config: ServeConfig, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM, then end the process (exit status 0) without Python's interpreter shutdown."""
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
    if config.token is not None:
        _print_token(config, port)
    # Waitress's warnings and errors (a full task queue, a socket error, threads still busy at the end), named as ours
    # are; it prints no banner of its own when not started through waitress.serve.
    waitress_log = logging.getLogger("waitress")
    if not waitress_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mlx_ft: waitress: %(message)s"))
        waitress_log.addHandler(handler)
        waitress_log.setLevel(logging.WARNING)
    server = make_wsgi_server(_access_log(app), host, port, config)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops as Ctrl-C does: a running job saves its checkpoint
    # run() ends on KeyboardInterrupt; it first gives the requests still running up to 5 s (a stream still answering
    # is then left behind: os._exit below ends it).
    server.run()
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
