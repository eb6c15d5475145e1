"""The pages in Chinese and English (issue 29), in a real browser on the tiny random Qwen2: static/i18n.js's catalogue,
the browser's language by default (a zh-CN browser gets Chinese, the default en-US one English), the top bar's
EN / 中文 switch, which re-applies the page at once and is saved across a reload.

Also: every id a page marks exists in both catalogues, which have the same ids; no marked element is left empty; the
English catalogue says word for word what the templates say (the other browser tests compare those English texts).

A screenshot of the studio in Chinese goes to $MLX_FT_SCREENSHOTS (default: the test's temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.server import browser as bt

bt.require()

pytestmark = pytest.mark.slow

PAGES = ("/studio", "/chat", "/runs")
ZH_TABS = ["1 · 数据", "2 · 新建训练", "3 · 任务", "4 · 对比", "5 · 评测与导出"]
EN_TABS = ["1 · Data", "2 · New run", "3 · Jobs", "4 · Compare", "5 · Evaluate & ship"]
# The studio's main buttons: id -> (Chinese, English).
BUTTONS = {
    "upload-check": ("检查", "Check"),
    "upload-store": ("上传", "Upload"),
    "run-start": ("开始训练", "Start training"),
    "run-reset": ("恢复默认", "Defaults"),
    "compare-send": ("同时发给两个模型", "Send to both"),
    "eval-start": ("与基座模型对比评测", "Evaluate against the base"),
    "export-start": ("导出", "Export"),
}

# Every id a page marks (text, rich text, attributes) that a catalogue lacks, and each marked element left empty.
AUDIT = """() => {
  const {en, zh} = window.i18n.catalog;
  const kinds = ['data-i18n', 'data-i18n-rich', 'data-i18n-title', 'data-i18n-placeholder', 'data-i18n-aria-label'];
  const missing = [], empty = [];
  for (const kind of kinds) {
    for (const el of document.querySelectorAll('[' + kind + ']')) {
      const id = el.getAttribute(kind);
      if (!(id in en) || !(id in zh)) missing.push(kind + '=' + id);
      const text = kind === 'data-i18n' || kind === 'data-i18n-rich';
      const shown = text ? el.textContent : el.getAttribute(kind.slice(10));
      if (!shown || !shown.trim()) empty.push(kind + '=' + id);
    }
  }
  return {missing, empty, marked: document.querySelectorAll('[data-i18n]').length};
}"""

# The templates' own texts (the page as served, before i18n.js) against the English catalogue applied to them.
SAME_AS_TEMPLATE = """async (path) => {
  const html = await (await fetch(path)).text();
  const doc = new DOMParser().parseFromString(html, 'text/html');
  const norm = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const marked = [...doc.querySelectorAll(
    '[data-i18n], [data-i18n-rich], [data-i18n-title], [data-i18n-placeholder], [data-i18n-aria-label]')];
  const befores = marked.map((el) => ({text: norm(el.textContent), title: el.getAttribute('title'),
    placeholder: el.getAttribute('placeholder'), 'aria-label': el.getAttribute('aria-label')}));
  window.i18n.apply(doc.body);
  const out = [];
  for (const [i, el] of marked.entries()) {
    const before = befores[i];
    const id = ['data-i18n', 'data-i18n-rich'].map((a) => el.getAttribute(a)).find(Boolean);
    if (id && norm(el.textContent) !== before.text) out.push([id, before.text, norm(el.textContent)]);
    for (const a of ['title', 'placeholder', 'aria-label']) {
      const aid = el.getAttribute('data-i18n-' + a);
      if (aid && el.getAttribute(a) !== before[a]) out.push([aid, before[a], el.getAttribute(a)]);
    }
  }
  return out;
}"""


@pytest.fixture(scope="module")
def server(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("i18n")
    args = [str(qwen2_dir), "--db", str(tmp / "studio.db"), "--runs", str(tmp / "runs")]
    args += ["--data-dir", str(tmp / "data"), "--exports-dir", str(tmp / "exports")]
    with bt.serving(tmp, *args) as served:
        yield served


@pytest.fixture
def zh_page(browser, server):
    """A page in a browser whose language is Chinese (navigator.language zh-CN), nothing chosen yet."""
    with bt.offline_page(browser, server["base"], locale="zh-CN") as pg:
        yield pg


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MLX_FT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('body[data-ready="1"]')


def _tabs(page) -> list[str]:
    return [t.strip() for t in page.locator(".tabs [data-tab]").all_inner_texts()]


def _audit(page, where: str) -> None:
    found = page.evaluate(AUDIT)
    assert not found["missing"], f"{where}: ids missing from a catalogue: {found['missing']}"
    assert not found["empty"], f"{where}: marked elements left empty: {found['empty']}"
    assert found["marked"] > 5, where


def test_a_chinese_browser_gets_the_pages_in_chinese(zh_page, server, screenshots):
    page, base = zh_page, server["base"]
    _open(page, base + "/studio#data")
    page.wait_for_selector("#datasets-body tr button.preview")  # the shipped samples, listed by the script
    assert page.evaluate("() => [window.i18n.lang, document.documentElement.lang]") == ["zh", "zh-CN"]
    assert page.evaluate("() => localStorage.getItem('mlx_ft_lang')") is None  # the browser's language, not a choice
    assert _tabs(page) == ZH_TABS
    for button, (zh, _en) in BUTTONS.items():
        assert page.inner_text(f"#{button}") == zh, button
    assert page.locator(".site-nav a").all_inner_texts() == ["对话", "训练记录", "工作台"]
    assert page.inner_text("#datasets-body tr button.preview") == "预览"  # built by studio.js
    assert page.title().startswith("工作台 · ")
    _audit(page, "studio")
    page.screenshot(path=str(screenshots / "studio-zh-data.png"), full_page=True)

    page.click('.tabs [data-tab="run"]')
    page.wait_for_selector('#run-form .field[data-field="learning_rate"]')
    page.wait_for_function("() => !document.getElementById('run-resolved').classList.contains('stale')")
    # The server's field labels in Chinese where the catalogue knows them; the config key beside it as it is.
    label = page.inner_text('#run-form .field[data-field="learning_rate"] label')
    assert label.startswith("学习率") and "learning_rate" in label, label
    assert page.inner_text("#run-resolved h2 span[data-i18n]") == "等效命令"
    _audit(page, "studio, new run")
    page.screenshot(path=str(screenshots / "studio-zh-new-run.png"), full_page=True)

    _open(page, base + "/chat")
    assert page.inner_text("#send") == "发送"
    assert page.inner_text("#new-chat") == "+ 新对话"
    assert page.get_attribute("#prompt", "placeholder") == "输入消息（Enter 发送，Shift+Enter 换行）"
    page.click("#new-chat")  # the server titles it "New chat" until its first question: shown in Chinese
    page.wait_for_selector(".conversation-item .conversation-title")
    assert page.inner_text(".conversation-item .conversation-title") == "新对话"
    assert page.inner_text(".message .who, .conversation-empty") == "还没有消息，在下方输入开始对话吧。"
    _audit(page, "chat")

    _open(page, base + "/runs")
    assert page.inner_text("#runs-table th:nth-child(2)") == "名称"
    _audit(page, "runs")


def test_the_catalogues_hold_every_id_and_the_english_is_the_templates(page, server):
    base = server["base"]
    for path in PAGES:
        _open(page, base + path)
        assert page.evaluate("() => window.i18n.lang") == "en"
        en_ids, zh_ids = page.evaluate("() => [Object.keys(i18n.catalog.en), Object.keys(i18n.catalog.zh)]")
        assert sorted(en_ids) == sorted(zh_ids), set(en_ids) ^ set(zh_ids)
        _audit(page, path)
        differ = page.evaluate(SAME_AS_TEMPLATE, path)
        assert not differ, f"{path}: the English catalogue is not the template's text: {differ}"


def test_the_switch_turns_the_page_english_and_stays_after_a_reload(zh_page, server):
    page, base = zh_page, server["base"]
    _open(page, base + "/studio#data")
    page.wait_for_selector("#datasets-body tr button.preview")
    assert _tabs(page) == ZH_TABS

    page.click('.lang-switch [data-lang="en"]')  # no reload: the page is re-applied in place
    assert _tabs(page) == EN_TABS
    for button, (_zh, en) in BUTTONS.items():
        assert page.inner_text(f"#{button}") == en, button
    assert page.inner_text("#datasets-body tr button.preview") == "Preview"  # what studio.js built, too
    assert page.evaluate("() => [document.documentElement.lang, localStorage.getItem('mlx_ft_lang')]") == ["en", "en"]
    assert page.get_attribute('.lang-switch [data-lang="en"]', "aria-pressed") == "true"
    _audit(page, "studio after the switch")

    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    assert _tabs(page) == EN_TABS  # the saved choice wins over the browser's Chinese
    _open(page, base + "/chat")
    assert page.inner_text("#send") == "Send"

    page.click('.lang-switch [data-lang="zh"]')
    assert page.inner_text("#send") == "发送"
    _open(page, base + "/studio")
    assert _tabs(page) == ZH_TABS


def test_the_default_browser_gets_english(page, server):
    base = server["base"]
    _open(page, base + "/studio")
    assert page.evaluate("() => [window.i18n.lang, document.documentElement.lang]") == ["en", "en"]
    assert _tabs(page) == EN_TABS
    for button, (_zh, en) in BUTTONS.items():
        assert page.inner_text(f"#{button}") == en, button
    assert page.title().startswith("Studio · ")
    _open(page, base + "/chat")
    assert page.inner_text("#send") == "Send"
    assert page.get_attribute('.lang-switch [data-lang="en"]', "aria-pressed") == "true"
