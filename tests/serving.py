"""A real `mlx_ft serve` process for tests, and plain HTTP calls to it."""

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import REPO

if TYPE_CHECKING:
    import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(subprocess.Popen):
    """A `serve` process whose output (stdout and stderr) goes to a file in the test's folder, not to a pipe: the
    server logs a line per request, and a pipe nobody reads until the end fills (64 KiB) and blocks it."""

    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_server(model: Path | list[Path], port: int, db: Path, *extra: str) -> Server:
    """`mlx_ft serve MODEL [MODEL ...]` in a child process, returned once it answers; its output in
    `serve-PORT.log` beside `db`."""
    models = [str(m) for m in (model if isinstance(model, list) else [model])]
    log_path = db.parent / f"serve-{port}.log"
    with open(log_path, "ab") as log:  # the child keeps its own copy of the file descriptor
        proc = Server(
            [sys.executable, "-m", "mlx_ft", "serve", *models, "--port", str(port), "--db", str(db), *extra],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None, proc.output()
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"server did not start:\n{proc.output()[-4000:]}")


def call(port: int, method: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        raw = resp.read().decode()
    return raw if resp.headers.get_content_type() == "text/event-stream" else json.loads(raw)


@contextlib.contextmanager
def serving(models: list[Path], db: Path, *extra: str) -> Iterator[int]:
    """A `serve` process for the length of the block; yields its port."""
    port = free_port()
    proc = start_server(models, port, db, *extra)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def openai_client(port: int) -> "openai.OpenAI":
    """The official OpenAI client pointed at a test server (no retries: a failure shows at once)."""
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
