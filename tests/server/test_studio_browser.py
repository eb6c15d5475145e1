"""The studio in a real browser, the whole loop on the tiny random Qwen2: upload data (a bad file first: its
`file:line` problem shows and nothing is stored), preview it, start a short run, watch its step counter advance, stop,
resume, see it finish, chat with it and compare it with the base, evaluate it against the base, export q8_0 and
download the GGUF.

A screenshot of each stage goes to $MLX_FT_SCREENSHOTS (default: the test's temporary folder); the README's
docs/studio-*.png are copies of them.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from mlx_ft import data
from mlx_ft.export.tensor_types import FILE_TYPES
from tests.server import browser as bt

bt.require()

RUN = "studio-run"
ITERS = 30  # enough steps to press Stop before the run ends on a fast machine
JOB_TIMEOUT_MS = 300_000
HOSTILE = '<img src=x onerror="window.__xss=1">'

# Short Chinese fish-care answers (the shipped sample's language, so the screenshots show the CJK font).
QA = [
    ("鱼缸的水多久换一次？", "每周换三分之一的水。"),
    ("金鱼一天喂几次？", "一天一到两次，少量。"),
    ("新鱼缸要先做什么？", "先养水一到两周。"),
    ("水温多少合适？", "金鱼适合二十度左右。"),
    ("鱼浮在水面怎么办？", "先检查水质和氧气。"),
    ("可以用自来水吗？", "要先去氯再用。"),
]


def _rows() -> list[dict]:
    rows = [
        {"messages": [{"role": "user", "content": q + "?" * i}, {"role": "assistant", "content": a}]}
        for i, (q, a) in enumerate(QA * 2)
    ]
    rows[0]["messages"][1]["content"] = "换水时 " + HOSTILE + " 要慢。"  # file content is shown as text, never HTML
    return rows


@pytest.fixture(scope="module")
def server(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("studio")
    args = [str(qwen2_dir), "--db", str(tmp / "studio.db"), "--runs", str(tmp / "runs")]
    args += ["--data-dir", str(tmp / "data"), "--exports-dir", str(tmp / "exports")]
    with bt.serving(tmp, *args) as served:
        yield served


@pytest.fixture
def shots(tmp_path: Path, page):
    """shot(name): a full-page screenshot of the page as studio-NAME.png."""
    folder = Path(os.environ.get("MLX_FT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        page.wait_for_timeout(200)  # let the last redraw land
        page.screenshot(path=str(folder / f"studio-{name}.png"), full_page=True)

    return shot


def _post(server, path: str, body: dict) -> dict:
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(server["base"] + path, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read().decode("utf-8"))


def _job(server, job_id: str) -> dict:
    return bt.get_json(f"{server['base']}/api/studio/jobs/{job_id}")["job"]


def _step(page) -> int:
    text = page.inner_text("#job-step")
    m = re.match(r"(\d+) / ", text)
    return int(m.group(1)) if m else -1


def _wait_state(page, *states: str, timeout: int = JOB_TIMEOUT_MS) -> str:
    page.wait_for_function(
        "states => states.includes(document.getElementById('job-state').textContent)", arg=list(states), timeout=timeout
    )
    return page.inner_text("#job-state")


def test_studio_whole_loop(page, server, qwen2_dir, tmp_path, shots):
    try:
        _whole_loop(page, server, qwen2_dir, tmp_path, shots)
    except BaseException:
        shots("failure")  # the page as it was when the step failed
        raise


def _whole_loop(page, server, qwen2_dir: Path, tmp_path: Path, shots) -> None:
    base = server["base"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows()[0], ensure_ascii=False) + '\n{"messages": [\n', encoding="utf-8")
    good = tmp_path / "fish.jsonl"
    good.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), encoding="utf-8")

    # ---- Data: a bad file shows its file:line problem and stores nothing --------------------------------------------
    page.goto(base + "/studio#data")
    page.wait_for_selector('body[data-ready="1"]')
    assert page.inner_text("#studio-error") == "" or page.is_hidden("#studio-error")
    page.set_input_files("#upload-files", str(bad))
    page.fill("#upload-name", "bad")
    page.click("#upload-store")
    page.wait_for_selector("#upload-problems-box:not([hidden])")
    problems = page.locator("#upload-problems li").all_inner_texts()
    assert any(p.startswith("bad.jsonl:2") for p in problems), problems
    assert page.locator('#datasets-body tr[data-name="bad"]').count() == 0
    assert not any(d["name"] == "bad" for d in bt.get_json(base + "/api/studio/datasets")["datasets"])
    shots("data-error")

    # ---- Data: a LLaMA-Factory folder (dataset_info.json naming its file) is read with its layout -------------------
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"fishqa": {"file_name": "qa.json"}}), encoding="utf-8")
    qa = [{"instruction": q, "output": a} for q, a in QA]
    (folder / "qa.json").write_text(json.dumps(qa, ensure_ascii=False), encoding="utf-8")
    page.set_input_files("#upload-files", [])
    page.set_input_files("#upload-folder", str(folder))
    page.fill("#upload-name", "lf")
    page.click("#upload-check")
    page.wait_for_function("() => document.getElementById('upload-status').textContent.startsWith('Checked')")
    assert page.inner_text('#upload-facts [data-fact="format"] dd') == "alpaca"
    page.eval_on_selector("#upload-folder", "el => { el.value = ''; }")  # playwright cannot empty a folder input

    # ---- Data: check, then store, then preview with the learned spans marked --------------------------------------
    page.set_input_files("#upload-files", str(good))
    page.fill("#upload-name", "fish")
    assert page.eval_on_selector_all("#upload-format option", "os => os.map(o => o.value)") == ["", *data.FORMATS]
    page.select_option("#upload-format", "messages")  # the menu's choice is what the upload is read as
    page.click("#upload-check")
    page.wait_for_function("() => document.getElementById('upload-status').textContent.startsWith('Checked')")
    assert page.locator('#datasets-body tr[data-name="fish"]').count() == 0
    page.click("#upload-store")
    page.wait_for_function("() => document.getElementById('upload-status').textContent.startsWith('Stored')")
    assert page.inner_text('#upload-facts [data-fact="format"] dd') == "messages"
    row = page.locator('#datasets-body tr[data-name="fish"]')
    row.wait_for()
    row.locator("button.preview").click()
    page.wait_for_selector("#preview-card:not([hidden]) mark.learned")
    learned = " ".join(page.locator("#preview-examples mark.learned").all_inner_texts())
    assert any(a in learned for _, a in QA[1:]), learned
    assert "鱼" in page.inner_text("#preview-examples")
    assert page.locator("#preview-examples img").count() == 0
    shots("data")

    # ---- New run: the form, its YAML and command --------------------------------------------------------------------
    row.locator("button.use").click()
    page.wait_for_selector("#tab-run:not([hidden])")
    assert page.input_value("#run-data") == "fish"
    # A recipe's preset fills its keys (an object-valued one too); its data is not prepared yet, which the form says.
    page.select_option("#run-preset", "router")
    page.wait_for_function("() => document.getElementById('run-status').textContent.includes('not prepared')")
    assert page.input_value("#run-data") == "router" and page.is_disabled("#run-start")
    assert json.loads(page.input_value('#run-keys input[data-key="lr_schedule"]'))["name"] == "cosine_decay"
    page.click("#run-reset")
    assert page.input_value('#run-keys input[data-key="lr_schedule"]') == ""
    page.fill("#run-data", "fish")
    page.fill("#run-model", str(qwen2_dir))
    page.select_option("#run-method", "lora")
    page.fill("#run-name", RUN)
    for key, value in {
        "iters": ITERS,
        "batch_size": 2,
        "num_layers": 2,
        "steps_per_report": 1,
        "steps_per_eval": 4,
        "save_every": 4,
        "max_seq_length": 64,
        "lora_parameters.rank": 4,
    }.items():
        page.fill(f'#run-keys input[data-key="{key}"]', str(value))
    page.wait_for_function(
        f"() => document.getElementById('run-command').textContent.includes('--iters={ITERS}')"
        f" && document.getElementById('run-yaml').textContent.includes('iters: {ITERS}')"
    )
    command = page.inner_text("#run-command")
    assert command.startswith("python -m mlx_ft train") and RUN in command, command
    shots("new-run")

    # ---- Jobs: start, watch the step counter advance, stop, resume, finish -------------------------------------------
    page.click("#run-start")
    page.wait_for_selector("#tab-jobs:not([hidden]) #job-card:not([hidden])")
    page.evaluate("""() => {
        window.__steps = [];
        new MutationObserver(() => window.__steps.push(
            [window.studioApp.state.selected, document.getElementById('job-step').textContent]))
            .observe(document.getElementById('job-step'), {childList: true, characterData: true, subtree: true});
    }""")
    job_id = page.evaluate("window.studioApp.state.selected")
    # A second run while one trains waits in the queue; Cancel drops it.
    values = {"model": str(qwen2_dir), "data": "fish", "method": "lora", "name": "queued-run", "iters": 2}
    queued = _post(server, "/api/studio/jobs", {"kind": "train", "values": values})["job"]
    assert queued["state"] == "queued", queued
    page.click(f'#jobs-body tr[data-id="{queued["id"]}"]', timeout=10_000)
    assert _wait_state(page, "queued") == "queued"
    page.click("#job-cancel")
    assert _wait_state(page, "cancelled") == "cancelled"
    page.click(f'#jobs-body tr[data-id="{job_id}"]')
    page.wait_for_function(
        "() => parseInt(document.getElementById('job-step').textContent, 10) >= 2", timeout=JOB_TIMEOUT_MS
    )
    page.click("#job-stop")
    assert _wait_state(page, "stopped", "done") == "stopped", _job(server, job_id)
    stopped_at = _step(page)
    assert 2 <= stopped_at < ITERS
    # The run's own counter (the queued job's "0 / 2" showed while it was selected).
    steps = page.evaluate("window.__steps")
    seen = [int(s.split(" /")[0]) for job, s in steps if job == job_id and re.match(r"\d+ /", s)]
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen
    shots("job-stopped")
    page.click("#job-resume")
    assert _wait_state(page, "done", "failed") == "done", _job(server, job_id)
    assert page.inner_text("#job-step") == f"{ITERS} / {ITERS}"
    assert page.inner_text("#job-tps") != "–" and page.inner_text("#job-mem").endswith("GB")
    page.wait_for_function("() => window.studioChart && window.studioChart.drawn >= " + str(ITERS))
    assert page.inner_text("#job-log").strip(), "no log tail shown"
    shots("jobs")

    # ---- Chat with the run (the chat page's model menu) --------------------------------------------------------------
    page.goto(base + "/chat")
    page.wait_for_selector('body[data-ready="1"]')
    page.wait_for_selector("#model-picker:not([hidden])")
    page.select_option("#model-picker", f"run:{RUN}")
    conv_id = bt.new_chat(page, max_tokens=16)
    assert bt.get_json(f"{base}/api/conversations/{conv_id}")["model"] == f"run:{RUN}"
    page.fill("#prompt", "金鱼一天喂几次？")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.assistant")
    bt.wait_answer_done(page)
    assert [m["role"] for m in bt.get_json(f"{base}/api/conversations/{conv_id}")["messages"]] == ["user", "assistant"]
    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    assert page.input_value("#model-picker") == f"run:{RUN}"
    shots("chat")

    # ---- Compare the run with the base ---------------------------------------------------------------------------
    page.goto(base + "/studio#compare")
    page.wait_for_selector('body[data-ready="1"]')
    known = {m["id"] for m in bt.get_json(base + "/api/studio/models")["models"]}
    offered = page.eval_on_selector_all("#upload-model option", "os => os.map(o => o.value)")
    assert f"run:{RUN}" in offered and set(offered) <= {"", *known}, "token counts take the models route's ids"
    page.select_option("#compare-a", "base")
    page.select_option("#compare-b", f"run:{RUN}")
    page.fill("#compare-max-tokens", "16")
    page.fill("#compare-message", "鱼缸的水多久换一次？")
    page.click("#compare-send")
    page.wait_for_function(
        "() => document.querySelectorAll('#compare-answers .answer:not(.pending) .answer-meta').length === 2",
        timeout=bt.ANSWER_TIMEOUT_MS,
    )
    cols = page.locator("#compare-answers .answer")
    assert [cols.nth(i).get_attribute("data-model") for i in range(2)] == ["base", f"run:{RUN}"]
    assert all("tokens" in t for t in page.locator(".answer-meta").all_inner_texts())
    shots("compare")

    # ---- Evaluate against the base ---------------------------------------------------------------------------------
    page.click('.tabs [data-tab="ship"]')
    page.select_option("#ship-run", RUN)
    page.click("#eval-start")
    page.wait_for_selector("#eval-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    head = page.locator("#eval-tables table").first.locator("th").all_inner_texts()
    assert head[1:] == ["base", "tuned", "change"], head
    assert page.locator('#eval-tables tr[data-metric="loss"]').count() >= 1
    assert page.locator("#eval-predictions tr").count() >= 2  # the header and at least one example

    # ---- Export q8_0, download it, copy the ollama line --------------------------------------------------------------
    page.select_option("#export-format", "gguf")
    assert page.eval_on_selector_all("#export-type option", "os => os.map(o => o.value)") == ["", *FILE_TYPES]
    page.select_option("#export-type", "q8_0")
    page.click("#export-start")
    page.wait_for_selector("#export-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    line = page.inner_text("#ollama-line")
    assert line.startswith("ollama create ") and line.endswith(" -f Modelfile"), line
    page.click("#ollama-copy")
    page.wait_for_function("() => document.getElementById('ollama-copied').textContent !== ''")
    link = page.locator("#export-files a.download", has_text=".gguf")
    assert link.count() == 1
    with page.expect_download() as dl:
        link.click()
    saved = tmp_path / "model.gguf"
    dl.value.save_as(str(saved))
    assert saved.read_bytes()[:4] == b"GGUF" and "q8_0" in dl.value.suggested_filename
    shots("ship")

    # ---- A job that fails shows why ---------------------------------------------------------------------------------
    failing = _post(server, "/api/studio/jobs", {"kind": "eval", "run": RUN, "split": "nosuch"})["job"]
    page.click('.tabs [data-tab="jobs"]')
    page.click(f'#jobs-body tr[data-id="{failing["id"]}"]', timeout=10_000)
    assert _wait_state(page, "failed", "done") == "failed"
    assert "nosuch" in page.inner_text("#job-error-text"), page.inner_text("#job-error-text")
    shots("job-failed")
    assert page.evaluate("typeof window.__xss") == "undefined"
