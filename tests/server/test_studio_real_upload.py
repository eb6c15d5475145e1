"""A real-sized upload through the studio's whole loop in Chromium, on the built-in SmolLM2-135M-Instruct (what
`serve` with no RUN serves; the `smollm2_dir` fixture has its import cached, so nothing is downloaded).

About 1,000 Alpaca records of Chinese fish-care questions (the shipped sample's language; varied lengths, a few
longer than max_seq_length) go in through the Data tab's own file chooser: checked (the long examples listed with
the ways to keep them), one fix tried on the check, stored, a fix applied to the stored set under a new name,
previewed; a short LoRA run from the New run form, whose job card's bar moves, whose ETA shows while it runs, and
whose progress line is the log's last one; a compare with the base; an eval with a limit (its estimate before
Start, its bar while it runs, labelled scores after a reload); a q8_0 GGUF export. No text on the page holds U+FFFD.

Each step's time is printed; a screenshot of each stage goes to $MLX_FT_SCREENSHOTS (default: the test's temporary
folder) as real-NAME.png. The README's docs/studio-*.png are copies of these.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from tests.data import dpo_demo
from tests.server import browser as bt

bt.require()

pytestmark = pytest.mark.slow

RUN = "fish-lora"
NAME = "fish1k"
MAX_SEQ = 256
ITERS = 6
JOB_TIMEOUT_MS = 180_000
LONG = 7  # records made longer than MAX_SEQ
# A progress line as mlx_ft.progress.parse reads one: ours (`mlx_ft: STAGE: d/t UNIT … eta E`) or training's.
PROGRESS_LINE = r"^(mlx_ft(?: serve)?: .+?: \d+/\d+ \S+.*  eta \S+|step \d+/\d+  loss .*  eta \S+)$"

FISH = ["金鱼", "孔雀鱼", "斗鱼", "锦鲤", "神仙鱼", "红绿灯", "鹦鹉鱼", "清道夫", "七彩神仙", "虎皮鱼"]
TOPICS = [
    ("{fish}一天喂几次？", "一天喂一到两次，每次喂的量在两三分钟内吃完为好。"),
    ("{fish}适合多少度的水温？", "{fish}适合二十二到二十六度的水温，温差一天内不要超过两度。"),
    ("{fish}的鱼缸多久换一次水？", "每周换三分之一的水，新水要先晾晒去氯，温度和缸里接近。"),
    ("{fish}身上长了白点怎么办？", "这是白点病，把水温慢慢升到二十八度，再按说明全缸用药。"),
    ("{fish}可以和{other}混养吗？", "体型和性格相近就可以，注意不要放得太密，先观察几天。"),
    ("新买的{fish}怎么过水？", "连袋子漂在缸里半小时，再每十分钟加一点缸里的水，最后用网捞进去。"),
    ("{fish}总是浮在水面张嘴是怎么回事？", "多半是缺氧或者水质变差，先加大增氧，再测氨氮。"),
    ("{fish}不吃东西怎么办？", "先看水温和水质，停食一两天，再喂少量新鲜的饵料。"),
    ("{fish}的尾巴烂了怎么办？", "这是烂尾病，多由细菌感染引起，要换水并用药浴处理。"),
    ("{fish}怎么分公母？", "看体型和鳍，公鱼一般更细长、颜色更艳，母鱼腹部更圆。"),
]
EXTRA = [
    "平时要注意观察鱼的精神状态。",
    "过滤器不要和换水同一天清洗。",
    "喂食过量是水质变坏最常见的原因。",
    "新缸一定要先养水一到两周。",
    "用药期间要关掉紫外灯，也不要放活性炭。",
    "水位下降时补充的应该是晾过的清水。",
    "鱼缸最好放在没有直射阳光的地方。",
]
TANK = "鱼缸{cm}厘米，养了{n}条。"


def _records(count: int = 1000, seed: int = 29) -> list[dict]:
    """Alpaca records (instruction, input, output): short and medium ones, and LONG far past MAX_SEQ tokens."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        q, a = TOPICS[i % len(TOPICS)]
        fish, other = rnd.sample(FISH, 2)
        answer = a.format(fish=fish) + "".join(rnd.sample(EXTRA, rnd.randint(0, 3)))
        if i % (count // LONG) == 3:
            answer += "".join(rnd.choice(EXTRA) for _ in range(rnd.randint(18, 30)))  # far past MAX_SEQ tokens
        tank = TANK.format(cm=rnd.choice([30, 45, 60, 80, 100, 120]), n=rnd.randint(1, 30)) if i % 3 else ""
        out.append({"instruction": q.format(fish=fish, other=other), "input": tank, "output": answer})
    return out


def _replacement_characters(page, where: str) -> list[str]:
    """Each U+FFFD in the page's text, with the text around it."""
    text = page.evaluate("() => document.body.innerText")
    return [f"{where}: ...{text[max(0, m.start() - 60) : m.end() + 20]!r}" for m in re.finditer("\ufffd", text)]


@pytest.fixture(scope="module")
def server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`serve` with no RUN: the built-in model, its import already cached by `smollm2_dir`."""
    assert smollm2_dir.is_dir()
    tmp = tmp_path_factory.mktemp("real")
    args = ["--db", str(tmp / "studio.db"), "--runs", str(tmp / "runs"), "--data-dir", str(tmp / "data")]
    args += ["--exports-dir", str(tmp / "exports"), "--models", str(tmp / "models")]
    with bt.serving(tmp, *args) as served:
        yield served


@pytest.fixture
def shots(tmp_path: Path, page):
    """shot(name): a full-page screenshot as real-NAME.png; `shot.bad` collects the U+FFFD each one saw."""
    bad: list[str] = []
    shot = bt.screenshots(page, tmp_path, "real", lambda pg, name: bad.extend(_replacement_characters(pg, name)))
    shot.bad = bad
    return shot


class Clock:
    """Each step's seconds, printed at the end (pass or fail)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.steps: list[tuple[str, float]] = []

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.steps.append((step, now - self.last))
        self.last = now

    def report(self) -> str:
        rows = [f"  {s:<44} {t:6.1f} s" for s, t in self.steps]
        return "\n".join(
            ["studio, a real upload (step: seconds)", *rows, f"  {'total':<44} {self.last - self.start:6.1f} s"]
        )


def test_a_real_sized_upload_through_the_whole_loop_on_the_built_in_model(page, server, tmp_path, shots, capsys):
    clock = Clock()
    try:
        _loop(page, server, tmp_path, shots, clock)
    except BaseException:
        shots("failure")
        raise
    finally:
        with capsys.disabled():
            print("\n" + clock.report())


def _wait_status(page, prefix: str, timeout: int = 60_000) -> None:
    page.wait_for_function(
        "p => document.getElementById('upload-status').textContent.startsWith(p)", arg=prefix, timeout=timeout
    )


def _loop(page, server, tmp_path: Path, shots, clock: Clock) -> None:
    base = server["base"]
    records = _records()
    upload = tmp_path / "fish_care_1k.json"
    upload.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    page.goto(base + "/studio#data")
    page.wait_for_selector('body[data-ready="1"]')
    assert page.inner_text("#studio-error") == "" or page.is_hidden("#studio-error")
    clock("open the studio")

    # ---- Data: check; the long examples are listed with the ways to keep them -------------------------------------
    page.set_input_files("#upload-files", str(upload))  # the page's own file chooser
    page.fill("#upload-name", NAME)
    page.fill("#upload-max-seq", str(MAX_SEQ))
    page.click("#upload-check")
    _wait_status(page, "Checked")
    clock(f"check {len(records)} records")
    assert page.inner_text('#upload-facts [data-fact="format"] dd') == "alpaca"
    splits = page.inner_text('#upload-facts [data-fact="splits"] dd')
    counts = [int(n) for n in re.findall(r"\d+", splits)]
    assert 900 <= sum(counts) <= len(records), splits
    page.wait_for_selector("#upload-long:not([hidden])")
    long_items = page.locator("#upload-long-list li:not(.more)")
    assert 1 <= long_items.count() <= 10
    first = long_items.first.inner_text()
    assert re.match(r"fish_care_1k\.json:\d+ · [\d,]+ tokens · ", first), first
    title = page.inner_text("#upload-long-title")
    assert re.fullmatch(rf"\d+ examples longer than max_seq_length {MAX_SEQ}, by where your file has them", title)
    fixes = page.eval_on_selector_all("#upload-fixes button", "bs => bs.map(b => b.dataset.fix)")
    assert fixes == ["raise", "truncate", "skip"], fixes
    assert page.locator(f'#datasets-body tr[data-name="{NAME}"]').count() == 0
    shots("data-check")

    # A fix on a check checks again with its field (the form shows it); nothing is stored.
    page.click('#upload-fixes button[data-fix="raise"]')
    page.wait_for_function(f"() => document.getElementById('upload-max-seq').value !== '{MAX_SEQ}'")
    _wait_status(page, "Checked")
    raised = int(page.input_value("#upload-max-seq"))
    assert raised > MAX_SEQ and page.is_hidden("#upload-long"), raised
    assert page.inner_text('#upload-facts [data-fact="over max_seq_length"] dd').startswith("0 ")
    clock("a fix on the check (max_seq_length raised)")

    # ---- Data: store as it is, preview it; a fix then stores a new set beside it ------------------------------------
    page.fill("#upload-max-seq", str(MAX_SEQ))
    page.click("#upload-store")
    _wait_status(page, "Stored")
    row = page.locator(f'#datasets-body tr[data-name="{NAME}"]')
    row.wait_for()
    skip = page.locator('#upload-fixes button[data-fix="skip"]')
    assert skip.inner_text().startswith(f"Store as {NAME}-skip-long: Skip the "), skip.inner_text()
    clock("store")
    row.locator("button.preview").click()
    page.wait_for_selector("#preview-card:not([hidden]) mark.learned")
    assert "鱼" in page.inner_text("#preview-examples")
    assert "<|im_start|>assistant" in page.inner_text("#preview-examples")
    clock("preview")
    shots("data")
    skip.click()
    _wait_status(page, f"Stored as {NAME}-skip-long")
    assert page.is_checked("#upload-skip-long") and page.input_value("#upload-name") == f"{NAME}-skip-long"
    notes = page.locator("#upload-notes li").all_inner_texts()
    assert any(n.startswith("skipped ") and "longer than max_seq_length" in n for n in notes), notes
    assert page.inner_text("#upload-long-title").startswith("Skipped: ")
    assert page.locator("#upload-fixes button").count() == 0
    page.wait_for_selector(f'#datasets-body tr[data-name="{NAME}-skip-long"]')
    clock("a fix on the stored set (skip_long, new name)")
    shots("data-fixed")

    # ---- New run: LoRA on 2 layers, a few steps ---------------------------------------------------------------------
    row.locator("button.use").click()
    page.wait_for_selector("#tab-run:not([hidden])")
    assert page.input_value("#run-data") == NAME and page.input_value("#run-model") == "smollm2-135m-instruct"
    page.select_option("#run-method", "lora")
    page.fill("#run-name", RUN)
    page.click("#group-advanced > summary")
    settings = {"iters": ITERS, "num_layers": 2, "lora_parameters.rank": 4, "batch_size": 2}
    settings |= {"max_seq_length": MAX_SEQ, "steps_per_report": 1, "steps_per_eval": ITERS, "val_batches": 2}
    settings |= {"save_every": ITERS}
    for key, value in settings.items():
        page.fill(f'#run-form [data-key="{key}"]', str(value))
    page.wait_for_function(
        f"() => document.getElementById('run-command').textContent.includes('--iters={ITERS}')"
        " && !document.getElementById('run-resolved').classList.contains('stale')"
    )
    page.wait_for_selector("#run-estimate:not([hidden])")
    assert re.match(r"[\d,]+ in \d+ steps$", page.inner_text("#est-tokens")), page.inner_text("#est-tokens")
    page.click("#group-advanced > summary")  # collapsed again for the picture: the form as people first see it
    clock("fill the new-run form")
    shots("new-run")

    # ---- Jobs: the bar moves, the ETA shows while it runs, the card's line is the log's last progress line ----------
    page.click("#run-start")
    page.wait_for_selector("#tab-jobs:not([hidden]) #job-card:not([hidden])")
    page.evaluate(
        """re => {
        window.__seen = [];
        const progressLine = new RegExp(re);
        const look = () => {
            const st = window.studioApp.state;
            const job = st.jobs.find((j) => j.id === st.selected) || {};
            const bar = document.querySelector('#job-progress progress');
            const log = document.getElementById('job-log').textContent;
            const lines = log.split('\\n').filter((l) => progressLine.test(l));
            const card = document.querySelector('#job-progress .progress-line');
            window.__seen.push({
                state: document.getElementById('job-state').textContent,
                done: bar && bar.hasAttribute('value') ? bar.value : null,
                max: bar ? bar.max : null,
                eta: document.getElementById('job-eta').textContent,
                card: card ? card.textContent : null,
                job: (job.progress || {}).line || null,
                log: lines.length ? lines[lines.length - 1] : null,
            });
        };
        new MutationObserver(look).observe(document.getElementById('job-card'),
            {childList: true, characterData: true, subtree: true, attributes: true});
        look();
    }""",
        PROGRESS_LINE,
    )
    job_id = page.evaluate("window.studioApp.state.selected")
    page.wait_for_function(
        "() => (window.__seen || []).some(s => s.state === 'running' && s.done >= 1 && s.eta !== '–')",
        timeout=JOB_TIMEOUT_MS,
    )
    clock("start the run: first step reported")
    shots("job-running")
    page.wait_for_function(
        "() => ['done', 'failed'].includes(document.getElementById('job-state').textContent)", timeout=JOB_TIMEOUT_MS
    )
    job = bt.get_json(f"{base}/api/studio/jobs/{job_id}")["job"]
    assert job["state"] == "done", job
    clock(f"train {ITERS} steps (LoRA, 2 layers, batch 2)")
    seen = page.evaluate("window.__seen")
    running = [s for s in seen if s["state"] == "running" and s["done"] is not None]
    dones = [s["done"] for s in running]
    assert len(set(dones)) >= 2 and dones == sorted(dones), dones  # the bar moved, never back
    assert all(s["max"] == ITERS for s in running), running
    assert any(s["eta"] not in ("–", "") for s in running), running
    for s in running:  # the card's words are the job's progress line, the log tail's last progress line
        if s["card"] is not None:
            assert s["card"] == s["job"] == s["log"], s
    assert page.inner_text("#job-step") == f"{ITERS} / {ITERS}"
    card_line = page.inner_text("#job-progress .progress-line")
    assert card_line == job["progress"]["line"], (card_line, job["progress"])
    log_lines = [line for line in page.inner_text("#job-log").splitlines() if re.match(PROGRESS_LINE, line)]
    assert log_lines and log_lines[-1] == card_line, (log_lines[-3:], card_line)
    assert page.inner_text("#job-eta") == "–"  # nothing left to wait for
    page.wait_for_function("() => window.studioChart && window.studioChart.drawn >= " + str(ITERS))
    shots("jobs")

    # ---- Compare the run with the base ------------------------------------------------------------------------------
    page.click('.tabs [data-tab="compare"]')
    page.wait_for_function(
        f"() => [...document.getElementById('compare-b').options].some(o => o.value === 'run:{RUN}')"
    )
    page.select_option("#compare-a", "base")
    page.select_option("#compare-b", f"run:{RUN}")
    page.fill("#compare-max-tokens", "48")
    page.fill("#compare-message", "金鱼一天喂几次？")
    page.click("#compare-send")
    page.wait_for_function(
        "() => document.querySelectorAll('#compare-answers .answer:not(.pending) .answer-meta').length === 2",
        timeout=bt.ANSWER_TIMEOUT_MS,
    )
    texts = page.locator("#compare-answers .answer-text").all_inner_texts()
    assert all(t.strip() for t in texts), texts
    clock("compare base and run (48 tokens each)")
    shots("compare")

    # ---- Evaluate with a limit: the estimate before Start, the bar while it runs, labelled scores after a reload -----
    page.click('.tabs [data-tab="ship"]')
    page.select_option("#ship-run", RUN)
    page.fill("#eval-limit", "8")
    page.fill("#eval-max-tokens", "32")
    page.wait_for_function(
        "() => document.getElementById('eval-estimate').textContent.startsWith('Estimate: 8 examples')"
    )
    page.evaluate("""() => {
        window.__evalBars = [];
        new MutationObserver(() => {
            const bar = document.querySelector('#eval-progress progress');
            const facts = document.querySelector('#eval-progress .progress-facts');
            if (bar && !document.getElementById('eval-progress').hidden) {
                window.__evalBars.push([bar.hasAttribute('value') ? bar.value : null, bar.max,
                    facts ? facts.textContent : '']);
            }
        }).observe(document.getElementById('eval-progress'), {childList: true, subtree: true, attributes: true});
    }""")
    clock("evaluate: the estimate")
    page.click("#eval-start")
    page.wait_for_selector("#eval-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    clock("evaluate 8 examples, base and tuned")
    bars = page.evaluate("window.__evalBars")
    assert bars and any(done is not None and mx > 1 for done, mx, _ in bars), bars
    assert any("/" in facts for *_, facts in bars), bars
    page.wait_for_function(
        "() => document.querySelector('#eval-tables tr[data-metric=\"loss\"] td').textContent === 'Loss'"
    )
    head = page.locator("#eval-tables table").first.locator("th").all_inner_texts()
    assert head[1:] == ["base", "tuned", "change"], head
    assert page.inner_text("#eval-where") == "the test split, at most 8 examples"

    # ---- Export a q8_0 GGUF with its Modelfile -----------------------------------------------------------------------
    page.select_option("#export-format", "gguf")
    page.select_option("#export-type", "q8_0")
    page.click("#export-start")
    page.wait_for_selector("#export-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    line = page.inner_text("#ollama-line")
    assert line.startswith("ollama create ") and line.endswith(" -f Modelfile"), line
    assert page.locator("#export-files a.download", has_text=".gguf").count() == 1
    # A run named "...-lora" exports a fused model, not an adapter: llama.cpp's line is the model alone.
    assert page.inner_text("#llama-line") == f"llama-server -m {RUN}-q8_0.gguf", page.inner_text("#llama-line")
    clock("export a fused q8_0 GGUF")
    shots("ship")

    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    page.select_option("#ship-run", RUN)
    page.wait_for_selector("#eval-result:not([hidden])")
    labels = page.locator("#eval-tables tr[data-metric] td:first-child").all_inner_texts()
    assert "Loss" in labels and "ROUGE-L" in labels, labels
    assert all(not re.fullmatch(r"[a-z0-9_]+", label) for label in labels), labels  # names, not keys
    clock("reload: the scores again, labelled")

    # ---- No replacement character anywhere ---------------------------------------------------------------------------
    for tab in ("data", "run", "jobs", "compare", "ship"):
        page.click(f'.tabs [data-tab="{tab}"]')
        shots.bad += _replacement_characters(page, f"tab {tab} after the reload")
    assert not shots.bad, "U+FFFD in the page's text:\n" + "\n".join(shots.bad)


def test_a_preference_folder_is_fitted_by_a_fix_and_its_pairs_previewed_side_by_side(page, server, tmp_path, shots):
    """LLaMA-Factory's dpo_en_demo shape (tests/data/dpo_demo.py: 300 pairs, a third with long prompts) as a folder:
    its check lists the pairs that training would leave out, the prompt-cut fix checks it again with truncate:
    prompt, Upload stores it so, and the preview shows each pair's prompt once and its two answers side by side."""
    try:
        _pairs(page, server, tmp_path, shots)
    except BaseException:
        shots("pairs-failure")
        raise
    assert not shots.bad, "U+FFFD in the page's text:\n" + "\n".join(shots.bad)


def _pairs(page, server, tmp_path: Path, shots) -> None:
    folder = tmp_path / "dpo_en_demo"
    folder.mkdir()
    dpo_demo.write(folder)
    page.goto(server["base"] + "/studio#data")
    page.wait_for_selector('body[data-ready="1"]')
    page.set_input_files("#upload-folder", str(folder))
    page.fill("#upload-name", "dpo")
    page.fill("#upload-max-seq", "512")
    page.click("#upload-check")
    _wait_status(page, "Checked")
    assert page.inner_text('#upload-facts [data-fact="format"] dd') == "preference"
    fates = page.eval_on_selector_all("#upload-long-list li[data-fate]", "ls => ls.map(l => l.dataset.fate)")
    assert "left_out" in fates, fates
    more = page.inner_text("#upload-long-list li.more")
    assert re.fullmatch(r"and \d+ more", more), more
    page.click('#upload-fixes button[data-fix="truncate"]')
    page.wait_for_function("() => document.getElementById('upload-truncate').value === 'prompt'")
    _wait_status(page, "Checked")
    fates = page.eval_on_selector_all("#upload-long-list li[data-fate]", "ls => ls.map(l => l.dataset.fate)")
    assert fates and "left_out" not in fates and "prompt_cut" in fates, fates
    page.click("#upload-store")  # the form holds the fix: stored with truncate: prompt
    _wait_status(page, "Stored as dpo")
    page.locator('#datasets-body tr[data-name="dpo"] button.preview').click()
    page.wait_for_selector("#preview-card:not([hidden]) .pair-sides")
    pairs = page.locator("#preview-examples .pair")
    assert pairs.count() == 3
    sides = pairs.first.locator(".pair-side")
    assert [sides.nth(i).get_attribute("data-side") for i in range(2)] == ["chosen", "rejected"]
    assert sides.nth(0).locator("mark.learned").count() >= 1 and sides.nth(1).locator("mark.learned").count() >= 1
    # Side by side: the two answers start at the same height, the prompt above both.
    boxes = [sides.nth(i).bounding_box() for i in range(2)]
    prompt = pairs.first.locator(".pair-prompt").bounding_box()
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"], boxes
    assert prompt["y"] + prompt["height"] <= boxes[0]["y"], (prompt, boxes)
    assert pairs.first.locator(".pair-prompt mark.learned").count() == 0  # the prompt is never learned
    shots("data-pairs")
