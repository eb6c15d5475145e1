"""The web UI in a real browser: a real `mlx_ft serve` process (tiny random Qwen2) driven by headless Chromium
(the set-up in tests/server/browser.py; skipped without playwright or Debian's Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.server import browser as bt

bt.require()

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
RUN_NAME = "fake-run-1"
_get_json = bt.get_json


def _request(url: str, method: str, body: dict | None = None, timeout: float = 60) -> tuple[int, str, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")


def _write_fake_run(runs: Path) -> None:
    run = runs / RUN_NAME
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: x\nfine_tune_type: lora\niters: 10\n", encoding="utf-8")
    rows = [
        {"step": 1, "loss": 3.2, "lr": 1e-4},
        {"step": 2, "loss": 2.9},
        {"step": 3, "loss": 2.5},
        {"step": 4, "loss": 2.3, "val_loss": 2.6},
        {"step": 6, "loss": 2.0},
        {"step": 8, "loss": 1.8},
        {"step": 8, "val_loss": 2.1},
        {"step": 10, "loss": 1.6, "val_loss": 1.9},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def server(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("browser")
    runs = tmp / "runs"
    _write_fake_run(runs)
    with bt.serving(tmp, str(qwen2_dir), "--db", str(tmp / "chat.db"), "--runs", str(runs)) as served:
        yield served


def _open_chat(page, server) -> None:
    page.goto(server["base"] + "/")
    page.wait_for_selector('body[data-ready="1"]')


@pytest.fixture
def shots(tmp_path: Path, page):
    """shot(name): a full-page screenshot of the page as chat-NAME.png in $MLX_FT_SCREENSHOTS (default: tmp_path)."""
    return bt.screenshots(page, tmp_path, "chat")


def test_page_shows_model_and_uses_no_outside_assets(page, server):
    _open_chat(page, server)
    assert page.inner_text("#model-label") == server["info"]["model"]
    adapter = server["info"]["adapter"]
    assert page.inner_text("#adapter-label") == (adapter or "base model")
    # Defaults from the server fill the (disabled) settings form before any chat is open.
    assert float(page.input_value("#set-temperature")) == pytest.approx(server["info"]["defaults"]["temperature"])


def test_stream_contract(server):
    """What chat.js parses: `data: {"delta": …}` events, then one `done` with the message and the conversation."""
    base = server["base"]
    status, _, body = _request(base + "/api/conversations", "POST", {"max_tokens": 8})
    conv = json.loads(body)
    assert status == 201
    status, ctype, body = _request(f"{base}/api/conversations/{conv['id']}/messages", "POST", {"content": "Hi"})
    assert status == 200 and ctype.startswith("text/event-stream")
    events = [json.loads(block[len("data: ") :]) for block in body.split("\n\n") if block.startswith("data: ")]
    assert events and all("delta" in e for e in events[:-1]), events
    done = events[-1]
    assert done["done"] is True and done["finish_reason"] in ("stop", "length")
    assert done["message"]["role"] == "assistant"
    assert done["message"]["content"] == "".join(e["delta"] for e in events[:-1])
    assert done["conversation"]["id"] == conv["id"]
    _request(f"{base}/api/conversations/{conv['id']}", "DELETE")


def test_chat_send_stream_and_reload(page, server):
    _open_chat(page, server)
    conv_id = bt.new_chat(page)
    page.evaluate("""() => {
        window.__sawStreaming = false;
        new MutationObserver(() => {
            if (document.body.classList.contains('streaming') && !document.getElementById('stop').hidden)
                window.__sawStreaming = true;
        }).observe(document.body, {attributes: true, subtree: true, attributeFilter: ['class', 'hidden']});
    }""")
    question = "What is the capital of France?"
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")  # Enter sends
    page.wait_for_selector(".message.user")
    bt.wait_answer_done(page)
    assert page.evaluate("window.__sawStreaming") is True, "the Stop button never showed while answering"
    assert page.locator(".message.user .bubble").all_inner_texts() == [question]
    assert page.locator(".message.assistant").count() == 1
    stored = _get_json(f"{server['base']}/api/conversations/{conv_id}")
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    answer = stored["messages"][1]["content"]
    assert answer, "the model gave an empty answer"
    shown = page.inner_text(".message.assistant .bubble")
    if answer.strip():
        assert shown.strip(), "the streamed answer is not on the page"
    # Settings were saved on the server.
    assert stored["max_tokens"] == 24 and stored["system"] == "You are terse."
    # The list shows the conversation, titled from the first question by the server.
    title = page.inner_text(f'.conversation-item[data-id="{conv_id}"] .conversation-title')
    assert title == stored["title"]

    # Shift+Enter is a newline, not a send.
    page.fill("#prompt", "line one")
    page.press("#prompt", "Shift+Enter")
    assert page.locator(".message.user").count() == 1
    assert "\n" in page.input_value("#prompt")
    page.fill("#prompt", "")

    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    assert bt.current_conversation(page) == conv_id
    assert page.locator(".message.user .bubble").all_inner_texts() == [question]
    assert page.locator(".message.assistant").count() == 1
    assert page.locator(f'.conversation-item[data-id="{conv_id}"]').count() == 1
    # Settings come back from the server too.
    assert page.input_value("#set-max-tokens") == "24"
    assert page.input_value("#set-system") == "You are terse."


FIGURES = re.compile(
    r"(\d+) tokens? · (?:[\d.]+ tokens/s · )?first token ([\d.]+) s · "
    r"(?:(\d+) of (\d+) prompt tokens from cache|prompt (\d+) tokens, none cached)"
)


def _figures(page, i: int) -> dict[str, float]:
    """The i-th answer's figures line, read back into numbers."""
    text = page.locator(".message.assistant").nth(i).locator(".answer-figures").inner_text()
    m = FIGURES.fullmatch(text)
    assert m, f"not a figures line: {text!r}"
    cached = int(m[3]) if m[3] else 0
    prompt = int(m[4] or m[5])
    return {"tokens": int(m[1]), "ttft_s": float(m[2]), "cached": cached, "prompt": prompt}


def test_answers_show_their_figures_and_the_next_turn_reads_the_cache(page, server, shots):
    _open_chat(page, server)
    bt.new_chat(page, max_tokens=8)
    page.fill("#prompt", "Name three rivers of Asia.")
    page.press("#prompt", "Enter")
    bt.wait_answer_done(page)
    page.fill("#prompt", "And three mountains?")
    page.press("#prompt", "Enter")
    page.wait_for_function("() => document.querySelectorAll('.message.assistant .answer-figures').length === 2")
    bt.wait_answer_done(page)
    # A fresh conversation's first answer may read some tokens from the cache too (the template's head, the system
    # prompt, shared with other conversations), so only the second is held to reading the first turn from it.
    first, second = _figures(page, 0), _figures(page, 1)
    assert second["prompt"] > first["prompt"] and 0 < second["ttft_s"]
    assert first["prompt"] - 1 <= second["cached"] < second["prompt"], (first, second)
    shots("figures")
    page.evaluate("() => window.i18n.setLang('zh')")  # the line is re-made in the page's language
    zh = page.locator(".message.assistant .answer-figures").nth(1).inner_text()
    assert f"提示词 {second['prompt']} 个 token 中 {second['cached']} 个来自缓存" in zh, zh
    shots("figures-zh")
    page.evaluate("() => window.i18n.setLang('en')")
    # The server keeps no figures: a conversation read back from the history shows none.
    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    assert page.locator(".message.assistant").count() == 2
    assert page.locator(".answer-figures").count() == 0


def test_user_text_is_never_html(page, server):
    _open_chat(page, server)
    bt.new_chat(page, max_tokens=8)
    page.fill("#prompt", XSS)
    page.click("#send")
    page.wait_for_selector(".message.user")
    bt.wait_answer_done(page)
    assert page.locator(".message.user .bubble").first.inner_text() == XSS
    assert page.locator(".messages img, .messages script").count() == 0
    # Reloaded from the history, the text is still text (and the title made from it too).
    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    assert page.locator(".message.user .bubble").first.inner_text() == XSS
    assert page.locator(".messages img, .messages script, .sidebar img, .sidebar script").count() == 0
    page.wait_for_timeout(300)  # give an onerror handler every chance to fire
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_rename_and_delete(page, server):
    _open_chat(page, server)
    conv_id = bt.new_chat(page)
    item = page.locator(f'.conversation-item[data-id="{conv_id}"]')
    item.hover()
    item.locator(".rename").click()
    page.fill(".rename-input", "Renamed <b>chat</b>")
    page.press(".rename-input", "Enter")
    page.wait_for_function(
        f"""() => {{ const t = document.querySelector('.conversation-item[data-id="{conv_id}"] .conversation-title');
                     return t && t.textContent === 'Renamed <b>chat</b>'; }}"""
    )
    assert _get_json(f"{server['base']}/api/conversations/{conv_id}")["title"] == "Renamed <b>chat</b>"
    page.once("dialog", lambda d: d.accept())
    item.hover()
    item.locator(".delete").click()
    page.wait_for_function(f"""() => !document.querySelector('.conversation-item[data-id="{conv_id}"]')""")
    with pytest.raises(urllib.error.HTTPError) as e:
        _get_json(f"{server['base']}/api/conversations/{conv_id}")
    assert e.value.code == 404


def test_stop_keeps_partial_answer(page, server):
    _open_chat(page, server)
    conv_id = bt.new_chat(page, max_tokens=4000)
    page.fill("#prompt", "Tell me a very long story.")
    page.press("#prompt", "Enter")
    page.wait_for_function(
        "() => { const b = document.querySelector('.message.assistant .bubble');"
        " return b && b.textContent.length > 0; }",
        timeout=bt.ANSWER_TIMEOUT_MS,
    )
    if page.is_hidden("#stop"):
        pytest.skip("the answer finished before Stop could be pressed")
    page.click("#stop")
    bt.wait_answer_done(page)
    assert page.inner_text(".message.assistant .note") == "stopped"
    assert page.locator(".answer-figures").count() == 0, "a stopped answer's figures would describe a part"
    # The server keeps the partial answer (it may take a moment to notice the closed connection).
    deadline = time.monotonic() + 30
    while True:
        msgs = _get_json(f"{server['base']}/api/conversations/{conv_id}")["messages"]
        if [m["role"] for m in msgs] == ["user", "assistant"]:
            break
        assert time.monotonic() < deadline, f"no partial answer kept: {msgs}"
        time.sleep(0.3)
    assert 0 < len(msgs[1]["content"])


def test_render_markdown_in_page(page, server):
    _open_chat(page, server)

    def r(text: str) -> str:
        return page.evaluate("t => window.renderMarkdown(t)", text)

    assert "<strong>b</strong>" in r("**b**")
    assert "<em>i</em>" in r("*i*")
    assert "<code>x &lt; y</code>" in r("`x < y`")
    assert r("<b>x</b>") == "<p>&lt;b&gt;x&lt;/b&gt;</p>"
    bad = r("[click](javascript:alert(1))")
    assert "<a" not in bad and "javascript:alert(1)" in bad
    assert "<a" not in r("[x](data:text/html,<script>alert(1)</script>)")
    good = r("[site](https://example.com/a?b=1&c=2)")
    assert '<a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer" target="_blank">site</a>' in good
    code = r("```python\nprint('<hi>')\n**not bold**\n```")
    assert code == '<pre><code class="language-python">print(&#39;&lt;hi&gt;&#39;)\n**not bold**</code></pre>'
    assert r("# One\n### Three") == "<h1>One</h1>\n<h3>Three</h3>"
    assert r("- a\n- b") == "<ul><li>a</li><li>b</li></ul>"
    assert r("1. a\n2. b") == "<ol><li>a</li><li>b</li></ol>"
    assert r("a\nb\n\nc") == "<p>a<br>b</p>\n<p>c</p>"
    # Whatever it makes, the markup parses into no script, handler or non-web link.
    hostile = XSS + '\n[x](javascript:alert(1)) <a href="javascript:1">y</a> ![i](x) `<img src=x onerror=1>`'
    found = page.evaluate(
        """t => { const d = document.createElement('div'); d.innerHTML = window.renderMarkdown(t);
        return {tags: [...d.querySelectorAll('script,img,iframe,a')].map(e => e.tagName),
                handlers: [...d.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))
                    .filter(n => n.startsWith('on'))}; }""",
        hostile,
    )
    assert found == {"tags": [], "handlers": []}


def test_runs_page_lists_run_and_draws_chart(page, server):
    page.goto(server["base"] + "/runs#" + RUN_NAME)
    page.wait_for_selector('body[data-ready="1"]')
    row = page.locator(f'#runs-body tr[data-name="{RUN_NAME}"]')
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()
    assert RUN_NAME in cells[1] and "x" == cells[2] and "lora" == cells[3] and "10 / 10" == cells[4]
    assert cells[5] == "1.6000" and cells[6] == "1.9000"
    page.wait_for_function("() => window.runsChart && window.runsChart.drawn > 0")
    # Pixels of the first run colour (#2563eb) on the canvas: the curves were drawn, not just the axes.
    coloured = page.evaluate("""() => {
        const c = document.getElementById('chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0, any = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 0) any++;
            if (d[i + 3] > 200 && Math.abs(d[i] - 0x25) < 40 && Math.abs(d[i + 1] - 0x63) < 40
                && Math.abs(d[i + 2] - 0xeb) < 40) n++;
        }
        return {n, any};
    }""")
    assert coloured["any"] > 1000 and coloured["n"] > 100, coloured
    series = page.evaluate("window.runsChart.series")
    assert [s["name"] for s in series] == [RUN_NAME]
    assert len(series[0]["train"]) == 7 and len(series[0]["val"]) == 3


def test_runs_page_live_curve_and_overlay(page, server):
    """A run still training (fresh metrics, step < iters) is redrawn as rows arrive; a ticked run is overlaid."""
    live = server["tmp"] / "runs" / "live-run"
    live.mkdir()
    (live / "config.yaml").write_text("model: x\nfine_tune_type: dora\niters: 100\n", encoding="utf-8")
    metrics = live / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 3 - s / 10}) + "\n" for s in (1, 2, 3)), encoding="utf-8")
    try:
        page.goto(server["base"] + "/runs#live-run")
        page.wait_for_selector('body[data-ready="1"]')
        assert page.inner_text('#runs-body tr[data-name="live-run"] .badge') == "running"
        page.wait_for_function("() => window.runsChart && window.runsChart.series[0].train.length === 3")
        with metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": 4, "loss": 2.5}) + "\n" + json.dumps({"step": 4, "val_loss": 2.7}) + "\n")
        page.wait_for_function(
            "() => window.runsChart.series[0].train.length === 4 && window.runsChart.series[0].val.length === 1",
            timeout=10_000,
        )
        assert page.inner_text('#runs-body tr[data-name="live-run"] td:nth-child(5)') == "4 / 100"
        page.locator(f'#runs-body tr[data-name="{RUN_NAME}"] input.compare').check()
        page.wait_for_function("() => window.runsChart.series.length === 2")
        series = page.evaluate("window.runsChart.series")
        assert [s["name"] for s in series] == ["live-run", RUN_NAME]
        assert series[0]["color"] != series[1]["color"]
        # The overlaid runs' configs: only the keys that differ, one column per run.
        page.wait_for_selector("#diff-card:not([hidden])")
        rows = page.locator("#config-diff tr").evaluate_all("rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        assert rows == [["key", "live-run", RUN_NAME], ["fine_tune_type", "dora", "lora"], ["iters", "100", "10"]]
        page.locator(f'#runs-body tr[data-name="{RUN_NAME}"] input.compare').uncheck()
        page.wait_for_selector("#diff-card", state="hidden")
    finally:
        shutil.rmtree(live)
