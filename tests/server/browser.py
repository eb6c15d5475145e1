"""What the browser tests share: a real `mlx_ft serve` process, headless Debian Chromium through playwright, and a
page that fails its test on a JavaScript error or on any request that leaves our server.

Needs the `playwright` Python package and Debian's Chromium at /usr/bin/chromium (never Playwright's own browser
download: the test machines reach no browser CDN). `require()` skips the calling test module when either is missing
(in CI it fails instead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.serving import free_port

REPO = Path(__file__).resolve().parent.parent.parent
CHROMIUM = os.environ.get("MLX_FT_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT_S = 180
ANSWER_TIMEOUT_MS = 120_000


def require() -> ModuleType:
    """playwright.sync_api, or a skip of the calling module (a failure in CI) when it or Chromium is missing."""
    if os.environ.get("CI"):
        import playwright.sync_api  # noqa: F401  (in CI a missing browser stack is a failure, not a skip)

        assert os.path.isfile(CHROMIUM), "CI must install chromium"
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
    return sync_api


def get_json(url: str, timeout: float = 5, token: str | None = None) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


@contextmanager
def serving(tmp: Path, *args: str, token: str | None = None) -> Iterator[dict[str, Any]]:
    """`python -m mlx_ft serve ARGS --port P` running until the block ends: yields its base URL, port, /api/info,
    `tmp` and a `log()` that returns the tail of its output (for failure messages). With `token`, the server asks
    for it (MLX_FT_TOKEN), and /api/info is waited on with it."""
    port = free_port()
    log_path = tmp / "server.log"
    log = log_path.open("w+", encoding="utf-8")
    env = {**os.environ, "MLX_FT_TOKEN": token} if token else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_ft", "serve", *args, "--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        log.flush()
        return log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`mlx_ft serve` exited with {proc.returncode}:\n{server_log()}")
            try:
                info = get_json(base + "/api/info", timeout=2, token=token)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                if time.monotonic() > deadline:
                    pytest.fail(f"`mlx_ft serve` did not answer /api/info within {START_TIMEOUT_S}s:\n{server_log()}")
                time.sleep(0.3)
        yield {"base": base, "port": port, "info": info, "tmp": tmp, "log": server_log, "token": token}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


def screenshots(page: Any, tmp_path: Path, prefix: str, look: Any = None) -> Any:
    """shot(name): a full-page screenshot of `page` as PREFIX-NAME.png in $MLX_FT_SCREENSHOTS (default: under
    `tmp_path`), once the last redraw has landed; `look(page, name)` first, when given (a check of what is shown)."""
    folder = Path(os.environ.get("MLX_FT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        page.wait_for_timeout(200)
        if look is not None:
            look(page, name)
        page.screenshot(path=str(folder / f"{prefix}-{name}.png"), full_page=True)

    return shot


@contextmanager
def chromium(sync_api: ModuleType) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            yield b
        finally:
            b.close()


@contextmanager
def offline_page(browser: Any, base: str, **context_args: Any) -> Iterator[Any]:
    """A page whose test fails on any JavaScript error, or on any request not to `base` (offline by construction)."""
    context = browser.new_context(viewport={"width": 1200, "height": 850}, **context_args)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    outside: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(base):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    pg.route("**/*", route)
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not outside, f"the page requested outside resources: {outside}"


def wait_answer_done(page: Any) -> None:
    """The chat page's answer has finished streaming: Stop hidden again, no pending bubble."""
    page.wait_for_function(
        "() => !document.body.classList.contains('streaming') && document.getElementById('stop').hidden"
        " && !document.querySelector('.message.pending')",
        timeout=ANSWER_TIMEOUT_MS,
    )


def current_conversation(page: Any) -> str | None:
    """The id of the conversation the chat page has open."""
    return page.evaluate("() => window.chatApp.state.current && window.chatApp.state.current.id")


def new_chat(page: Any, max_tokens: int = 24) -> str:
    """A new conversation on the chat page, its settings saved with short answers (quick, and exercises PATCH)."""
    before = page.locator(".conversation-item").count()
    page.click("#new-chat")
    page.wait_for_function(f"() => document.querySelectorAll('.conversation-item').length === {before + 1}")
    conv_id = current_conversation(page)
    assert conv_id
    page.click("#settings-toggle")
    page.fill("#set-max-tokens", str(max_tokens))
    page.fill("#set-system", "You are terse.")
    page.click("#settings-save")
    page.wait_for_function("() => document.getElementById('settings-status').textContent === 'Saved.'")
    return conv_id
