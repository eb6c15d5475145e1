"""The studio in a real browser, the whole loop on the tiny random Qwen2: upload data (a bad file first: its
`file:line` problem shows and nothing is stored), preview it, start a short run, watch its step counter advance, stop,
resume, see it finish, chat with it and compare it with the base, evaluate it against the base, export q8_0 and
download the GGUF.

A screenshot of each stage goes to $MLX_FT_SCREENSHOTS (default: the test's temporary folder); the README's
docs/studio-*.png are copies of them.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from mlx_ft import config as config_mod
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
    return bt.screenshots(page, tmp_path, "studio")


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
    page.wait_for_function(
        "() => (document.querySelector('.field[data-field=\"data\"] .field-error') || {}).textContent"
        "  .includes('not prepared')"
    )
    assert page.input_value("#run-data") == "router" and page.is_disabled("#run-start")
    assert json.loads(page.input_value('#run-form [data-key="lr_schedule"]'))["name"] == "cosine_decay"
    page.click("#run-reset")
    assert page.input_value('#run-form [data-key="lr_schedule"]') == ""
    page.fill("#run-data", "fish")
    page.fill("#run-model", str(qwen2_dir))
    page.select_option("#run-method", "lora")
    page.fill("#run-name", RUN)
    page.click("#group-advanced > summary")  # batch size, reports, checkpoints and length are advanced settings
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
        page.fill(f'#run-form [data-key="{key}"]', str(value))
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
    metas = page.locator(".answer-meta").all_inner_texts()
    assert all("token" in t for t in metas), metas
    for meta in metas:  # each answer says how many of its prompt's tokens came from the prompt cache
        m = re.search(r"· cached (\d+)/(\d+)$", meta)
        assert m and 0 <= int(m[1]) <= int(m[2]) and int(m[2]) > 0, meta
    shots("compare")

    # ---- Evaluate against the base ---------------------------------------------------------------------------------
    page.click('.tabs [data-tab="ship"]')
    page.select_option("#ship-run", RUN)
    assert page.input_value("#eval-limit") == "50"
    page.wait_for_function("() => document.getElementById('eval-estimate').textContent.startsWith('Estimate: ')")
    page.click("#eval-start")
    page.wait_for_selector("#eval-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    head = page.locator("#eval-tables table").first.locator("th").all_inner_texts()
    assert head[1:] == ["base", "tuned", "change"], head
    page.wait_for_function(  # the scores' names, not their keys
        "() => document.querySelector('#eval-tables tr[data-metric=\"loss\"] td').textContent === 'Loss'"
    )
    assert page.locator("#eval-predictions tr").count() >= 2  # the header and at least one example

    # ---- Export q8_0, download it, copy the ollama line --------------------------------------------------------------
    page.select_option("#export-format", "gguf")
    assert page.eval_on_selector_all("#export-type option", "os => os.map(o => o.value)") == ["", *FILE_TYPES]
    page.select_option("#export-type", "q8_0")
    page.click("#export-start")
    page.wait_for_selector("#export-result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    line = page.inner_text("#ollama-line")
    assert line.startswith("ollama create ") and line.endswith(" -f Modelfile"), line
    assert re.fullmatch(r"llama-server -m \S+-q8_0\.gguf", page.inner_text("#llama-line")), page.inner_text(
        "#llama-line"
    )
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

    # ---- After a reload the run's evals show again, labelled; the runs page says what the studio says ----------------
    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    page.wait_for_selector("#eval-result:not([hidden])")
    assert page.inner_text('#eval-tables tr[data-metric="loss"] td:first-child') == "Loss"
    page.goto(base + "/runs")
    page.wait_for_selector('body[data-ready="1"]')
    assert page.inner_text(f'#runs-body tr[data-name="{RUN}"] .badge') == "done"

    # ---- A job that fails shows why ---------------------------------------------------------------------------------
    # A split the run's data lacks is refused before any job starts; one that is there but broken fails in eval.
    data_dir = Path(config_mod.load(server["tmp"] / "runs" / RUN / "config.yaml").data)
    (data_dir / "nosuch.jsonl").write_text("{not json\n", encoding="utf-8")
    failing = _post(server, "/api/studio/jobs", {"kind": "eval", "run": RUN, "split": "nosuch"})["job"]
    page.goto(base + "/studio#ship")
    page.wait_for_selector('body[data-ready="1"]')
    page.click('.tabs [data-tab="jobs"]')
    page.click(f'#jobs-body tr[data-id="{failing["id"]}"]', timeout=10_000)
    assert _wait_state(page, "failed", "done") == "failed"
    assert "nosuch" in page.inner_text("#job-error-text"), page.inner_text("#job-error-text")
    shots("job-failed")
    assert page.evaluate("typeof window.__xss") == "undefined"


# ---- the new-run form, grouped for people ---------------------------------------------------------------------------

DROPOUT_WORDS = "config key 'lora_parameters.dropout' must be a finite number from 0 to 0.9"
DORA_NOTE = "DoRA exports as a fused GGUF only; pick LoRA to also get a small adapter GGUF"


def _visible(page, key: str) -> bool:
    return page.is_visible(f'#run-form .field[data-field="{key}"]')


def _no_replacement_characters(page) -> None:
    text = page.evaluate("() => document.body.innerText")
    assert "\ufffd" not in text, text[max(0, text.index("\ufffd") - 80) : text.index("\ufffd") + 80]


def _form_settled(page) -> None:
    """The server has answered for the form as it is now (the command panel is no longer marked stale)."""
    page.wait_for_function("() => !document.getElementById('run-resolved').classList.contains('stale')")


@pytest.fixture
def sft_run(server, qwen2_dir):
    """A finished SFT run in the runs folder to start from (its adapter a placeholder: the form only resolves)."""
    run = server["tmp"] / "runs" / "sft-done"
    run.mkdir(parents=True)
    cfg = config_mod.build(
        {"model": str(qwen2_dir), "data": "data/fish_care", "fine_tune_type": "lora", "num_layers": 2}
        | {"lora_parameters": {"rank": 4}, "iters": 4}
    )
    (run / "config.yaml").write_text(config_mod.dump(cfg), encoding="utf-8")
    (run / "adapters.safetensors").write_bytes(b"{}")
    yield run
    shutil.rmtree(run)


def test_the_new_run_form_shows_the_fields_that_apply_and_the_servers_words(page, server, qwen2_dir, sft_run, shots):
    try:
        _form(page, server, qwen2_dir, sft_run, shots)
    except BaseException:
        shots("form-failure")
        raise


def _form(page, server, qwen2_dir: Path, sft_run: Path, shots) -> None:
    page.goto(server["base"] + "/studio#run")
    page.wait_for_selector('body[data-ready="1"]')
    _form_settled(page)
    # Groups: Basics, Adapter and Preference open, Advanced collapsed; menus for every enumeration, a checkbox for
    # every boolean, numbers with the config's bounds, each field's help (the config's own words) under it.
    assert (
        page.is_visible("#group-basics") and page.is_visible("#group-adapter") and page.is_visible("#group-preference")
    )
    assert page.get_attribute("#group-advanced", "open") is None and not _visible(page, "batch_size")
    for key in ("method", "train_mode", "optimizer", "start_from", "reference_adapter_file"):
        assert page.eval_on_selector(f'#run-form [data-key="{key}"]', "el => el.tagName") == "SELECT", key
    for key in ("pack", "mask_prompt", "grad_checkpoint"):
        assert page.get_attribute(f'#run-form [data-key="{key}"]', "type") == "checkbox", key
    dropout = '#run-form [data-key="lora_parameters.dropout"]'
    assert page.get_attribute(dropout, "type") == "number" and page.get_attribute(dropout, "max") == "0.9"
    help_text = page.inner_text('#run-form .field[data-field="learning_rate"] .help')
    assert help_text == config_mod.FIELDS["learning_rate"].metadata["help"]
    assert page.input_value("#run-method") == "dora" and page.inner_text("#run-method-note") == DORA_NOTE
    # The estimate shows before Start: tokens from the data, time and memory measured or said to be unmeasured.
    page.wait_for_selector("#run-estimate:not([hidden])")
    assert re.match(r"[\d,]+ in \d+ steps$", page.inner_text("#est-tokens")), page.inner_text("#est-tokens")
    assert page.inner_text("#est-time") == "no measurement yet" or page.inner_text("#est-time").startswith("about ")
    assert "training examples" in page.inner_text("#est-basis")
    shots("new-run-form")

    # The fields of the chosen method and objective only.
    page.select_option("#run-method", "full")
    page.wait_for_selector("#group-adapter", state="hidden")
    assert page.is_hidden("#run-method-note")
    page.select_option("#run-method", "lora")
    page.wait_for_selector("#group-adapter", state="visible")
    assert not _visible(page, "beta") and not _visible(page, "reference_adapter_file")
    page.select_option('#run-form [data-key="train_mode"]', "dpo")
    page.wait_for_selector('#run-form .field[data-field="reference_adapter_file"]', state="visible")
    assert _visible(page, "beta")
    page.select_option('#run-form [data-key="train_mode"]', "orpo")
    page.wait_for_selector('#run-form .field[data-field="reference_adapter_file"]', state="hidden")
    assert _visible(page, "beta")
    page.select_option('#run-form [data-key="train_mode"]', "sft")
    page.wait_for_selector('#run-form .field[data-field="beta"]', state="hidden")

    # An invalid value is marked at its field in the server's words, and the command shows nothing stale.
    page.fill("#run-name", "form-check")
    _form_settled(page)
    assert "form-check" in page.inner_text("#run-command")
    page.fill(dropout, "5")
    error = '#run-form .field[data-field="lora_parameters.dropout"] .field-error'
    page.wait_for_selector(error, state="visible")
    assert page.inner_text(error) == DROPOUT_WORDS
    assert page.is_disabled("#run-start") and "form-check" not in page.inner_text("#run-command")
    assert page.inner_text("#run-yaml") == "" and page.is_hidden("#run-estimate")
    shots("form-invalid")
    page.fill(dropout, "0.1")
    page.wait_for_selector(error, state="hidden")
    _form_settled(page)
    assert "--set=lora_parameters.dropout=0.1" in page.inner_text("#run-command")
    page.fill("#run-data", "")
    data_error = '#run-form .field[data-field="data"] .field-error'
    page.wait_for_selector(data_error, state="visible")
    assert page.inner_text(data_error).startswith("config key 'data' must name a data set")
    assert "form-check" not in page.inner_text("#run-command")  # nothing of the last good answer is left
    page.fill("#run-data", "fish_care")
    _form_settled(page)
    assert page.is_hidden(data_error) and page.is_enabled("#run-start")

    # Preference tuning on top of a finished run: its base, method and adapter shapes, locked; DPO's reference is
    # its adapter unless another is picked.
    assert sft_run.name in page.eval_on_selector_all("#run-start-from option", "os => os.map(o => o.value)")
    page.select_option("#run-start-from", sft_run.name)
    page.select_option('#run-form [data-key="train_mode"]', "dpo")
    _form_settled(page)
    assert page.is_disabled("#run-model") and page.input_value("#run-model") == str(qwen2_dir)
    assert page.is_disabled('#run-form [data-key="lora_parameters.rank"]')
    assert page.input_value('#run-form [data-key="lora_parameters.rank"]') == "4"
    reference = '#run-form [data-key="reference_adapter_file"]'
    assert sft_run.name in page.inner_text(f"{reference} option:first-child")
    assert sft_run.name in page.eval_on_selector_all(f"{reference} option", "os => os.map(o => o.value)")
    adapter = str(sft_run / "adapters.safetensors")
    yaml_text = page.inner_text("#run-yaml")
    assert f"resume_adapter_file: {adapter}" in yaml_text and f"reference_adapter_file: {adapter}" in yaml_text
    assert f"--resume-adapter-file={adapter}" in page.inner_text("#run-command")
    _no_replacement_characters(page)
    shots("form-dpo")
    page.select_option("#run-start-from", "")
    assert page.is_enabled("#run-model")

    # An old red problem box goes at the next action.
    page.evaluate("() => { const b = document.getElementById('upload-problems-box'); b.hidden = false; }")
    page.click('.tabs [data-tab="data"]')
    assert page.is_hidden("#upload-problems-box")
    for tab in ("data", "jobs", "compare", "ship"):
        page.click(f'.tabs [data-tab="{tab}"]')
        _no_replacement_characters(page)


# ---- what the other parts of issue 29 will serve, as their contracts say, rendered by the page -------------------


def _sse(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events)


def test_the_page_renders_progress_streamed_compare_eval_estimates_and_labels(page, server, shots):
    """The job progress, eval estimate, a run's evals and a streamed compare, served here as their contracts say
    (routes answered by the test), and the page's rendering of each: a bar with done / total, rate, ETA and the
    job's own line; the estimate before Start; labelled scores after a reload; both answers streamed with the
    settings each used."""
    line = "eval 12/50 examples · 3.4 examples/s · ETA 0:11"
    progress = {"stage": "eval", "done": 12, "total": 50, "unit": "examples", "rate": 3.4}
    progress |= {"rate_unit": "examples/s", "eta_s": 11.2, "line": line}
    job = {"id": "abc123", "kind": "eval", "state": "running", "run": "studio-run", "command": "python -m mlx_ft eval"}
    job |= {"created": 1.0, "started": 1.0, "ended": None, "progress": progress, "log_tail": [], "error": None}
    job |= {"result": None}
    models = {"loaded": "base", "models": [{"id": "base", "label": "base (base)", "kind": "base", "base": "x"}]}
    models["models"].append({"id": "run:studio-run", "label": "studio-run", "kind": "run", "run": "studio-run"})
    for m in models["models"]:
        m["generation_defaults"] = {"temperature": 0.7, "top_p": 0.9}
    rouge = {"key": "rouge_l", "label": "ROUGE-L", "kind": "decimal", "values": {"base": 0.1, "tuned": 0.4}}
    rouge["shown"] = {"base": "0.100", "tuned": "0.400"}
    evals = {"run": "studio-run", "evals": [{"job": "e1", "time": 1.0, "split": "test", "limit": 50}]}
    evals["evals"][0] |= {"columns": ["base", "tuned"], "metrics": [rouge], "by_field": None, "groups": {}}
    stream = _sse(
        {"model": "base", "delta": "鱼缸"},
        {"model": "run:studio-run", "delta": "每周"},
        {"model": "base", "delta": "的水"},
        {
            "model": "base",
            "done": True,
            "tokens": 2,
            "prompt_tokens": 30,
            "cached_tokens": 12,
            "seconds": 0.5,
            "ttft_s": 0.1,
            "settings": {"temperature": 0.7},
        },
        {
            "model": "run:studio-run",
            "done": True,
            "tokens": 1,
            "prompt_tokens": 30,
            "cached_tokens": 0,
            "seconds": 0.4,
            "ttft_s": 0.1,
            "settings": {"top_p": 0.9},
        },
        {"done": True},
    )
    answers = {
        "/api/studio/jobs": ("application/json", json.dumps({"jobs": [job]})),
        f"/api/studio/jobs/{job['id']}/events": ("text/event-stream", _sse({"job": job})),
        "/api/studio/models": ("application/json", json.dumps(models)),
        "/api/studio/runs/studio-run/evals": ("application/json", json.dumps(evals)),
        "/api/studio/jobs/estimate": (
            "application/json",
            json.dumps({"examples": 50, "budget_tokens": 6400, "passes": 2, "seconds": 95, "basis": "measured"}),
        ),
        "/api/studio/compare": ("text/event-stream", _sse()),
    }
    asked: list[tuple[str, str]] = []

    def answer(route) -> None:
        path = route.request.url.removeprefix(server["base"]).split("?")[0]
        asked.append((route.request.method, path))
        if path == "/api/studio/compare":
            route.fulfill(status=200, content_type="text/event-stream", body=stream)
        elif path in answers:
            kind, body = answers[path]
            route.fulfill(status=200, content_type=kind, body=body)
        else:
            route.fallback()

    page.route(re.compile(r".*/api/studio/(jobs|models|runs|compare).*"), answer)
    page.goto(server["base"] + "/studio#jobs")
    page.wait_for_selector('body[data-ready="1"]')
    page.click(f'#jobs-body tr[data-id="{job["id"]}"]')
    page.wait_for_selector("#job-progress:not([hidden]) progress")
    assert page.inner_text("#job-progress .progress-line") == line
    assert page.inner_text("#job-progress .progress-facts") == "12 / 50 examples · 3.4 examples/s · ETA 11s"
    assert page.eval_on_selector("#job-progress progress", "p => [p.value, p.max]") == [12, 50]
    shots("job-progress")

    page.click('.tabs [data-tab="ship"]')
    page.wait_for_function("() => document.getElementById('eval-estimate').textContent.includes('50 examples')")
    assert "about 1m 35s" in page.inner_text("#eval-estimate")
    assert ("POST", "/api/studio/jobs/estimate") in asked
    page.wait_for_selector("#eval-result:not([hidden])")
    cells = page.locator('#eval-tables tr[data-metric="rouge_l"] td').all_inner_texts()
    assert cells == ["ROUGE-L", "0.100", "0.400", "+0.300"], cells
    assert page.inner_text("#eval-where") == "the test split, at most 50 examples"
    assert page.input_value("#eval-limit") == "50"
    page.select_option("#export-format", "adapter")
    assert "llama-server -m BASE.gguf --lora ADAPTER.gguf" in page.inner_text("#export-note-adapter")
    assert "ollama/ollama#14969" in page.inner_text("#export-note-adapter")
    shots("ship-notes")

    page.click('.tabs [data-tab="compare"]')
    assert page.is_visible("#compare-defaults-box")
    page.check("#compare-defaults")
    assert page.is_disabled("#compare-temperature")
    page.fill("#compare-message", "鱼缸的水多久换一次？")
    page.click("#compare-send")
    page.wait_for_function(
        "() => document.querySelectorAll('#compare-answers .answer:not(.pending) .answer-settings').length === 2"
    )
    texts = page.locator("#compare-answers .answer-text").all_inner_texts()
    assert texts == ["鱼缸的水", "每周"], texts
    assert page.locator("#compare-answers .answer-settings").all_inner_texts() == [
        "settings: temperature 0.7",
        "settings: top_p 0.9",
    ]
    assert page.locator("#compare-answers .answer-meta").all_inner_texts() == [
        "2 tokens · 0.50 s · first token 0.10 s · cached 12/30",
        "1 token · 0.40 s · first token 0.10 s · cached 0/30",
    ]
    _no_replacement_characters(page)
    shots("compare-stream")
    page.evaluate("() => window.i18n.setLang('zh')")  # the meta line is re-made in the page's language
    assert page.locator("#compare-answers .answer-meta").first.inner_text().endswith("· 缓存 12/30")
    shots("compare-stream-zh")
