"""A real `mlx_ft serve` process for tests, and plain HTTP calls to it."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, db: Path, *extra: str) -> subprocess.Popen:
    """`mlx_ft serve` in a child process, returned once it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_ft", "serve", str(model), "--port", str(port), "--db", str(db), *extra],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2)
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not start")


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
