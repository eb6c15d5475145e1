"""The server's browser-facing defences, proved in headless Chromium against a real `mlx_ft serve` of the tiny random
Qwen2 (the set-up in tests/server/browser.py; skipped without playwright or Debian's Chromium):

- another origin cannot show our pages in a frame (Content-Security-Policy `frame-ancestors 'none'`,
  X-Frame-Options), while the same attacker page frames its own page, and frames ours once those headers are gone;
- the chat, studio and runs pages run under the Content-Security-Policy with no violation and no JavaScript error;
- off loopback (`--host 0.0.0.0`) a page without the token is a 401; `?token=` leaves it in an HttpOnly,
  SameSite=Strict cookie and out of the address bar, and the chat then works on that cookie alone.

The server-side checks of the same headers and token are in test_security.py.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import browser as bt

bt.require()

pytestmark = pytest.mark.slow

TOKEN = "browser-token-Zq8vK3pL"
RUN_NAME = "csp-run"
FRAME_TIMEOUT_MS = 30_000
# Records every CSP violation of a document before any of its own scripts run; `__cspReport` (exposed by the test)
# gets it too, so a violation during a navigation away is not lost with the window.
CSP_LISTENER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e => {
    const v = {directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber,
               sample: e.sample, page: location.href};
    window.__csp.push(v);
    if (window.__cspReport) window.__cspReport(v);
});
"""


def _write_fake_run(runs: Path) -> None:
    run = runs / RUN_NAME
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: x\nfine_tune_type: lora\niters: 4\n", encoding="utf-8")
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5, "val_loss": 2.7}, {"step": 4, "loss": 2.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def server(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A loopback `serve` (no token), with one finished run on the runs page."""
    tmp = tmp_path_factory.mktemp("csp")
    runs = tmp / "runs"
    _write_fake_run(runs)
    args = [str(qwen2_dir), "--db", str(tmp / "chat.db"), "--runs", str(runs)]
    args += ["--data-dir", str(tmp / "data"), "--exports-dir", str(tmp / "exports")]
    with bt.serving(tmp, *args) as served:
        yield served


def _get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, dict[str, str], str]:
    """(status, headers, text) of a GET, an HTTP error status included."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def token_server(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`serve --host 0.0.0.0` with MLX_FT_TOKEN set: every route asks for the token."""
    tmp = tmp_path_factory.mktemp("token")
    args = [str(qwen2_dir), "--host", "0.0.0.0", "--db", str(tmp / "chat.db"), "--runs", str(tmp / "runs")]
    with bt.serving(tmp, *args, token=TOKEN) as served:
        yield served


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        pass


@pytest.fixture
def attacker(tmp_path: Path, server) -> Iterator[str]:
    """Another origin (a plain HTTP server on another port) whose page frames our /chat and a page of its own."""
    site = tmp_path / "attacker"
    site.mkdir()
    (site / "own.html").write_text(
        '<!doctype html><title>own</title><p id="own-marker">the attacker\'s own page</p>', encoding="utf-8"
    )
    (site / "index.html").write_text(
        "<!doctype html><title>attacker</title><h1>Win a prize</h1>\n"
        f'<iframe id="victim" src="{server["base"]}/chat" width="800" height="600"></iframe>\n'
        '<iframe id="own" src="/own.html" width="300" height="200"></iframe>\n',
        encoding="utf-8",
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _shows_chat(frame: Any) -> bool:
    """Whether `frame` shows our chat page: its composer is in it and its script ran (body[data-ready])."""
    try:
        return bool(frame.evaluate("() => !!document.getElementById('prompt') && document.body.dataset.ready === '1'"))
    except Exception:  # noqa: BLE001  (an error page may not be scriptable at all: then it is not our page either)
        return False


def _frame_of(page: Any, selector: str) -> Any:
    frame = page.locator(selector).element_handle().content_frame()
    assert frame is not None, f"{selector} has no frame"
    return frame


FRAMING_HEADERS = ("content-security-policy", "x-frame-options")


def _open_attacker(browser: Any, attacker: str, server, strip: tuple[str, ...]) -> tuple[Any, Any, dict[str, Any]]:
    """The attacker's page in a plain context (nothing blocked); our server's responses reach the browser without
    the headers named in `strip`."""
    context = browser.new_context(viewport={"width": 1200, "height": 850})
    seen: dict[str, Any] = {"console": [], "errors": [], "chat_response": None}
    if strip:

        def without(route: Any) -> None:
            resp = route.fetch()
            route.fulfill(response=resp, headers={k: v for k, v in resp.headers.items() if k.lower() not in strip})

        context.route(server["base"] + "/**", without)
    pg = context.new_page()
    pg.set_default_timeout(FRAME_TIMEOUT_MS)
    pg.on("console", lambda m: seen["console"].append(m.text))
    pg.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def on_response(r: Any) -> None:
        if r.url == server["base"] + "/chat":
            seen["chat_response"] = {"status": r.status, "headers": r.all_headers()}

    pg.on("response", on_response)
    pg.goto(attacker + "/index.html", wait_until="load")
    return context, pg, seen


@pytest.mark.parametrize("strip", [(), ("content-security-policy",)], ids=["both-headers", "x-frame-options-alone"])
def test_other_origin_cannot_frame_our_pages(browser, server, attacker, strip):
    """Refused with the headers as the server sends them, and (for browsers without CSP frame-ancestors) with
    X-Frame-Options alone."""
    context, pg, seen = _open_attacker(browser, attacker, server, strip)
    try:
        own = _frame_of(pg, "#own")
        own.wait_for_selector("#own-marker")
        assert own.inner_text("#own-marker") == "the attacker's own page"  # the attacker's page does frame pages

        victim = _frame_of(pg, "#victim")
        # Our server did answer the frame's request, 200 with the headers: it is the browser that refuses to show it.
        answer = seen["chat_response"]
        assert answer is not None, f"the frame never got an answer from our server; console: {seen['console']}"
        assert answer["status"] == 200, answer
        csp = answer["headers"].get("content-security-policy", "")
        assert ("frame-ancestors 'none'" in csp) == (not strip), answer
        assert answer["headers"].get("x-frame-options", "").upper() == "DENY", answer
        pg.wait_for_timeout(1000)  # a frame that were shown would have run chat.js by now
        assert not victim.url.startswith(server["base"]), f"the frame shows {victim.url}"
        assert victim.url.startswith(("chrome-error://", "about:blank")), victim.url
        assert not _shows_chat(victim), "our chat page runs inside the attacker's frame"
        why = "X-Frame-Options" if strip else "frame-ancestors"
        refusals = [t for t in seen["console"] if why in t]
        assert refusals, f"Chromium logged no refusal naming {why}; console: {seen['console']}"
    finally:
        context.close()


def test_frame_check_would_see_our_page_without_the_headers(browser, server, attacker):
    """The control of the test above: the same attacker page, our responses stripped of CSP and X-Frame-Options,
    and the frame does show our chat page (so the check above can tell a framed page from a refused one)."""
    context, pg, seen = _open_attacker(browser, attacker, server, FRAMING_HEADERS)
    try:
        victim = _frame_of(pg, "#victim")
        victim.wait_for_selector('body[data-ready="1"]')
        assert victim.url == server["base"] + "/chat"
        assert _shows_chat(victim)
        assert victim.inner_text("#model-label") == server["info"]["model"]
        assert not seen["errors"], seen["errors"]
    finally:
        context.close()


@pytest.fixture
def watched(page):
    """The offline page, with every CSP violation (event or console line) and console error recorded."""
    found: dict[str, list] = {"violations": [], "console_errors": [], "csp_console": []}
    page.expose_function("__cspReport", lambda v: found["violations"].append(v))
    page.add_init_script(CSP_LISTENER)

    def on_console(m: Any) -> None:
        text = m.text
        if "Content Security Policy" in text or "Refused to" in text:
            found["csp_console"].append(text)
        if m.type == "error":
            found["console_errors"].append(f"{text} ({m.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda e: found["console_errors"].append(f"pageerror: {e}"))
    yield page, found


def _assert_clean(page: Any, found: dict[str, list], where: str) -> None:
    in_page = page.evaluate("() => window.__csp")
    assert in_page == [], f"{where}: CSP violations in the page: {in_page}"
    assert found["violations"] == [], f"{where}: CSP violations: {found['violations']}"
    assert found["csp_console"] == [], f"{where}: CSP refusals on the console: {found['csp_console']}"
    assert found["console_errors"] == [], f"{where}: console errors: {found['console_errors']}"


def test_pages_run_under_the_csp_without_violations(watched, server):
    page, found = watched
    base = server["base"]

    # Each page is served with the policy the test holds it to.
    for path in ("/chat", "/studio", "/runs"):
        status, headers, _ = _get(base + path)
        assert status == 200
        assert "script-src 'self'" in headers.get("Content-Security-Policy", ""), (path, headers)

    # Chat: a new conversation with saved settings, one message sent and answered (fetch + the streamed answer).
    page.goto(base + "/chat")
    page.wait_for_selector('body[data-ready="1"]')
    assert page.evaluate("() => Array.isArray(window.__csp)"), "the CSP listener is not in the page"
    conv_id = bt.new_chat(page, max_tokens=12)
    page.fill("#prompt", "Say **hello** in `code`.")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.user")
    bt.wait_answer_done(page)
    assert page.locator(".message.assistant").count() == 1
    assert page.is_hidden("#error-banner")
    stored = bt.get_json(f"{base}/api/conversations/{conv_id}")
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    page.click("#settings-toggle")  # the settings panel again, now with a conversation open
    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    page.wait_for_selector(".message.assistant")
    _assert_clean(page, found, "/chat")

    # Studio: every tab.
    page.goto(base + "/studio")
    page.wait_for_selector('body[data-ready="1"]')
    tabs = page.locator(".tabs [data-tab]").evaluate_all("bs => bs.map(b => b.dataset.tab)")
    assert tabs == ["data", "run", "jobs", "compare", "ship"], tabs
    for tab in tabs + ["data"]:
        page.click(f'.tabs [data-tab="{tab}"]')
        page.wait_for_selector(f"#tab-{tab}:not([hidden])")
        page.wait_for_timeout(400)  # what the tab loads lands
    _assert_clean(page, found, "/studio")

    # Runs: the run listed, selected, its curve drawn and its config shown.
    page.goto(base + "/runs")
    page.wait_for_selector('body[data-ready="1"]')
    page.click(f'#runs-body tr[data-name="{RUN_NAME}"]')
    page.wait_for_function("() => window.runsChart && window.runsChart.drawn > 0")
    page.wait_for_selector("#config-card:not([hidden])")
    page.wait_for_timeout(400)
    _assert_clean(page, found, "/runs")

    # The watch can fail: an inline script, which the policy forbids, is refused and recorded.
    page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__inlineRan = 1'; document.body.appendChild(s); }""")
    page.wait_for_function("() => window.__csp.length > 0")
    assert page.evaluate("() => typeof window.__inlineRan") == "undefined", "an inline script ran under the CSP"
    directives = [v["directive"] for v in page.evaluate("() => window.__csp")]
    assert directives and all(d.startswith("script-src") for d in directives), directives


def test_token_cookie_in_the_browser(browser, token_server):
    base, port, token = token_server["base"], token_server["port"], token_server["token"]
    cookie_name = f"mlx_ft_token_{port}"

    with bt.offline_page(browser, base) as page:
        # Without the token: a 401, and the page's scripts are not even served.
        resp = page.goto(base + "/chat")
        assert resp is not None and resp.status == 401, resp and resp.status
        assert "token" in page.inner_text("body")
        assert resp.headers.get("x-frame-options") == "DENY", resp.headers  # a refusal cannot be framed either
        assert page.context.cookies() == []

        # With it: one redirect to the same page without the token, which leaves it in an HttpOnly, Strict cookie.
        resp = page.goto(base + "/chat?token=" + token)
        assert resp is not None and resp.status == 200, resp and resp.status
        assert resp.request.redirected_from is not None
        first = resp.request.redirected_from.response()
        assert first is not None and first.status == 303, first and first.status
        assert page.url == base + "/chat", page.url
        assert "token" not in page.url and token not in page.url
        page.wait_for_selector('body[data-ready="1"]')
        cookies = [c for c in page.context.cookies() if c["name"] == cookie_name]
        assert len(cookies) == 1, page.context.cookies()
        cookie = cookies[0]
        assert cookie["value"] == token
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
        assert cookie["path"] == "/" and cookie["domain"] == "127.0.0.1", cookie
        seen_by_script = page.evaluate("() => document.cookie")
        assert token not in seen_by_script and cookie_name not in seen_by_script, seen_by_script

        # The chat works on the cookie alone: its fetches and its streamed answer carry it.
        conv_id = bt.new_chat(page, max_tokens=12)
        page.fill("#prompt", "Hello?")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".message.user")
        bt.wait_answer_done(page)
        assert page.locator(".message.assistant").count() == 1
        assert page.is_hidden("#error-banner")
        status, _, text = _get(f"{base}/api/conversations/{conv_id}", token=token)
        assert status == 200, text
        assert [m["role"] for m in json.loads(text)["messages"]] == ["user", "assistant"]
        # The other pages open on the same cookie, and the address bar stays clean after a reload.
        for path in ("/studio", "/runs", "/chat"):
            resp = page.goto(base + path)
            assert resp is not None and resp.status == 200, (path, resp and resp.status)
            page.wait_for_selector('body[data-ready="1"]')

    # A fresh browser context, without the cookie: a 401 again, for the page and for the API.
    with bt.offline_page(browser, base) as fresh:
        resp = fresh.goto(base + "/chat")
        assert resp is not None and resp.status == 401, resp and resp.status
        resp = fresh.goto(base + "/api/conversations")
        assert resp is not None and resp.status == 401, resp and resp.status
        # A wrong token sets no cookie.
        resp = fresh.goto(base + "/chat?token=not-" + token)
        assert resp is not None and resp.status == 401, resp and resp.status
        assert fresh.context.cookies() == []
        # The link `serve` prints may be opened on any page: other parameters and the #fragment survive the redirect.
        resp = fresh.goto(f"{base}/studio?x=1&token={token}#jobs")
        assert resp is not None and resp.status == 200, resp and resp.status
        assert fresh.url == base + "/studio?x=1#jobs", fresh.url
        fresh.wait_for_selector('body[data-ready="1"]')
        fresh.wait_for_selector("#tab-jobs:not([hidden])")
        assert [c["name"] for c in fresh.context.cookies()] == [cookie_name]
