"""GRPO in the studio: the new-run form's GRPO group (its fields, when they show, the built-in rewards only, checked
here: no reward file, no unknown reward, no weight that is not a finite number, no option or recipe that could be a
path), its command giving back the same config, its honest estimate; and, in a real browser, a GRPO job started from
the form on the tiny Qwen2 whose reward chart and sampled answers show, the answers as text only."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from mlx_ft import cli
from mlx_ft import config as config_mod
from mlx_ft.errors import UserError
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.state import ServeConfig
from mlx_ft.services import datasets, run_form
from mlx_ft.training import rewards as rewards_mod
from tests.server import browser as bt

GRPO_KEYS = ["rewards", "recipe", "group_size", "max_completion_tokens", "temperature", "grpo_updates", "clip_epsilon"]


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir), adapter=False))


@pytest.fixture
def client(engine, tmp_path):
    cfg = ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", data_dir=tmp_path / "data")
    cfg.models_dir = tmp_path / "models"
    return create_app(cfg, engine).test_client()


def _form(client, **values):
    return client.post("/api/studio/form", json={"values": {"data": "fish_care", **values}})


def _grpo(**values) -> dict:
    return {"train_mode": "grpo", "method": "lora", **values}


def _argv_config(body: dict) -> dict:
    args = cli.build_parser().parse_args(["train", *body["argv"]])
    return config_mod.from_cli(args.config, config_mod.flags_of(args), args.set or []).to_dict()


# ---- the schema ---------------------------------------------------------------------------------------------------


def test_the_grpo_keys_have_their_own_group_shown_for_grpo_only(client):
    body = client.get("/api/studio/form").get_json()
    schema = {f["key"]: f for f in body["schema"]}
    assert [k for k, f in schema.items() if f["group"] == "grpo"] == GRPO_KEYS
    for key in GRPO_KEYS:
        assert schema[key]["when"] == {"train_mode": ["grpo"]}, key
        assert schema[key]["label"] and schema[key]["help"], key
    assert "grpo" in schema["beta"]["when"]["train_mode"] and "dpo" in schema["beta"]["when"]["train_mode"]
    assert schema["reference_adapter_file"]["when"] == {"train_mode": ["dpo", "grpo"]}
    # The terminal's keys: a reward file runs code, init_from names a folder; the form has start_from for it.
    assert "reward_file" not in schema and "init_from" not in schema
    assert "reward_file" not in body["defaults"] and "init_from" not in body["defaults"]
    assert schema["group_size"]["type"] == "int" and schema["group_size"]["bounds"]["lo"] == 2
    assert schema["temperature"]["type"] == "float" and schema["temperature"]["bounds"]["lo_open"]
    assert schema["recipe"]["type"] == "choice" and schema["recipe"]["nullable"]
    assert schema["recipe"]["choices"] == datasets.recipe_names() and "miners" in schema["recipe"]["choices"]
    assert schema["rewards"]["type"] == "rewards" and schema["rewards"]["default"] == [{"name": "exact", "weight": 1.0}]
    assert "terminal" in schema["rewards"]["help"]
    # The page offers the built-ins, with the options training's rewards take: no more, no fewer.
    offered = schema["rewards"]["rewards"]
    assert tuple(r["name"] for r in offered) == rewards_mod.BUILT_IN
    assert {r["name"]: tuple(o["key"] for o in r["options"]) for r in offered} == rewards_mod.OPTIONS
    assert offered[-1]["options"] == [{"key": "min", "type": "int"}, {"key": "max", "type": "int"}]


# ---- the command gives back the config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        _grpo(
            group_size=4, max_completion_tokens=16, temperature=0.7, beta=0.0, rewards=[{"name": "length", "max": 8}]
        ),
        _grpo(
            grpo_updates=2,
            clip_epsilon=0.3,
            recipe="miners",
            rewards=[
                {"name": "fields", "weight": 1.0},
                {"name": "regex", "weight": 0.5, "pattern": r"(?P<brand>\S+) [\u4e00-\u9fff]+ \d+(\.\d+)?: 'x' \"y\""},
                {"name": "length", "weight": 0.1, "min": 2, "max": 40},
            ],
        ),
        _grpo(
            recipe="router",
            rewards=[
                {"name": "choice", "weight": 2},
                {"name": "json_schema", "weight": 1e-05, "schema": {"type": "object", "properties": {"a": {}}}},
            ],
        ),
        _grpo(rewards=[{"name": "choice", "labels": ["问题回答", "任务处理", "yes: no"]}, {"name": "exact"}]),
    ],
)
def test_a_grpo_runs_command_gives_back_its_config(client, values):
    resp = _form(client, name="g", **values)
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert _argv_config(body) == body["config"]
    assert config_mod.build(__import__("yaml").safe_load(body["yaml"])).to_dict() == body["config"]
    cfg = body["config"]
    assert cfg["train_mode"] == "grpo" and cfg["reward_file"] is None and cfg["init_from"] is None
    for key in ("group_size", "max_completion_tokens", "temperature", "beta", "grpo_updates", "clip_epsilon", "recipe"):
        if key in values:
            assert cfg[key] == values[key], key
    # Each reward written whole, its weight explicit: what the run builds.
    assert [r["name"] for r in cfg["rewards"]] == [r["name"] for r in values["rewards"]]
    assert all(isinstance(r["weight"], float) for r in cfg["rewards"])
    assert "--train-mode=grpo" in body["command"] and "--set=rewards=" in body["command"]


def test_a_grpo_run_from_a_finished_run_starts_from_its_adapter_against_the_base(client, engine, tmp_path):
    run = tmp_path / "runs" / "sft"
    run.mkdir(parents=True)
    cfg = config_mod.build({"model": str(engine.loaded.source), "fine_tune_type": "lora", "num_layers": 2})
    (run / "config.yaml").write_text(config_mod.dump(cfg), encoding="utf-8")
    (run / "adapters.safetensors").write_bytes(b"{}")
    resp = _form(client, start_from="sft", name="g", **_grpo(rewards=[{"name": "length", "max": 8}]))
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert body["config"]["resume_adapter_file"] == str(run / "adapters.safetensors")
    assert body["config"]["reference_adapter_file"] is None, "GRPO's reference is the base, not the SFT adapter"
    assert body["config"]["init_from"] is None and _argv_config(body) == body["config"]
    # A DPO run from it still takes its adapter as the reference.
    dpo = _form(client, start_from="sft", name="d", method="lora", train_mode="dpo").get_json()
    assert dpo["config"]["reference_adapter_file"] == str(run / "adapters.safetensors")


# ---- what the form refuses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, words",
    [
        # A reward file runs code: the terminal's, never the page's (any value, even empty).
        (_grpo(reward_file="my_rewards.py"), "reward files are for the terminal: "),
        (_grpo(reward_file="/tmp/evil.py", rewards=[{"name": "evil"}]), "reward files are for the terminal: "),
        (_grpo(reward_file=None), "reward files are for the terminal: "),
        (_grpo(init_from="/etc"), "key 'init_from' is set by the form"),
        # Only the built-ins, named.
        (_grpo(rewards=[{"name": "evil"}]), "config key 'rewards[0]': unknown reward 'evil'; the page offers"),
        (_grpo(rewards=[{"name": "exact"}, {"name": "my_function"}]), "config key 'rewards[1]': unknown reward"),
        (_grpo(rewards=[{"name": "exact"}, {"name": "exact"}]), "listed twice"),
        (_grpo(rewards=[{"weight": 1}]), "config key 'rewards[0]' must be a mapping with a name"),
        (_grpo(rewards=[]), "config key 'rewards' must be a list of 1 to"),
        (_grpo(rewards={"name": "exact"}), "config key 'rewards' must be a list"),
        (_grpo(rewards=[{"name": "exact", "file": "x.py"}]), "unknown option 'file'; exact takes only weight"),
        (_grpo(rewards=[{"name": "length", "max": 8, "path": "/x"}]), "unknown option 'path'; length takes weight"),
        # Weights: finite numbers.
        (_grpo(rewards=[{"name": "exact", "weight": "heavy"}]), "'rewards[0]' (exact) weight must be a finite number"),
        (_grpo(rewards=[{"name": "exact", "weight": True}]), "weight must be a finite number"),
        (_grpo(rewards=[{"name": "exact", "weight": 1e6}]), "weight must be a finite number from -1000 to 1000"),
        # Options: of their kind, and never a path.
        (_grpo(rewards=[{"name": "regex", "pattern": "/etc/passwd"}]), "(regex) pattern must not be a path"),
        (_grpo(rewards=[{"name": "regex", "pattern": "~/.ssh/id_rsa"}]), "must not be a path"),
        (_grpo(rewards=[{"name": "regex", "pattern": "../../secret"}]), "must not be a path"),
        (_grpo(rewards=[{"name": "regex", "pattern": "C:/rewards/x"}]), "must not be a path"),
        (_grpo(rewards=[{"name": "regex", "pattern": "file:rewards"}]), "must not be a path"),
        (_grpo(rewards=[{"name": "fields", "pattern": "patterns/miners.txt"}]), "(fields) pattern must not be a path"),
        (_grpo(rewards=[{"name": "regex", "pattern": "(a"}]), "(regex) pattern is not a regular expression"),
        (_grpo(rewards=[{"name": "regex", "pattern": ["a"]}]), "(regex) pattern must be a non-empty string"),
        (_grpo(rewards=[{"name": "choice", "labels": "labels.txt"}]), "(choice) labels must be a list"),
        (_grpo(rewards=[{"name": "choice", "labels": ["yes", "/etc/hosts"]}]), "labels[1] must not be a path"),
        (_grpo(rewards=[{"name": "json_schema", "schema": "schema.json"}]), "(json_schema) schema must be a JSON"),
        (_grpo(rewards=[{"name": "json_schema", "schema": {"$ref": "file:///etc/x.json"}}]), "refer inside itself"),
        (_grpo(rewards=[{"name": "json_schema", "schema": {"$ref": "other.json#/a"}}]), "refer inside itself"),
        (_grpo(rewards=[{"name": "length", "max": "/dev/zero"}]), "(length) max must be an integer from 0"),
        (_grpo(rewards=[{"name": "length", "max": 1.5}]), "(length) max must be an integer from 0"),
        # What training's rewards refuse, in their words, at the reward.
        (_grpo(rewards=[{"name": "fields"}]), "config key 'rewards[0]' (fields): needs a `pattern` option"),
        (_grpo(rewards=[{"name": "regex"}]), "config key 'rewards[0]' (regex): needs a `pattern` option"),
        (_grpo(rewards=[{"name": "length", "min": 9, "max": 8}]), "config key 'rewards[0]' (length): min must be"),
        (_grpo(rewards=[{"name": "json_schema", "schema": {"type": "objekt"}}]), "config key 'rewards[0]' (json_"),
        # A recipe by its name: never a path.
        (_grpo(recipe="../recipes/miners"), "config key 'recipe': '../recipes/miners' is not a shipped recipe"),
        (_grpo(recipe="/etc"), "config key 'recipe': '/etc' is not a shipped recipe; the page takes one of miners"),
        (_grpo(recipe="recipes/miners"), "is not a shipped recipe"),
        (_grpo(recipe=["miners"]), "config key 'recipe': that value is not a shipped recipe"),
        (_grpo(recipe="nosuch"), "is not a shipped recipe"),
        # GRPO's own bounds, in the config's words.
        (_grpo(group_size=1), "config key 'group_size' must be"),
        (_grpo(temperature=0), "config key 'temperature' must be"),
        (_grpo(max_completion_tokens=600), "leaves no room for the prompt"),
        (_grpo(pack=True), "cannot pack"),
    ],
)
def test_the_form_refuses_what_grpo_from_the_page_may_not_run(client, tmp_path, values, words):
    resp = _form(client, **values)
    error = resp.get_json().get("error", "")
    assert resp.status_code == 400 and words in error, error
    job = client.post("/api/studio/jobs", json={"kind": "train", "values": {"data": "fish_care", **values}})
    assert job.status_code == 400 and job.get_json()["error"] == error, "a job is refused in the same words"
    assert not (tmp_path / "runs").exists()


def test_options_that_only_look_odd_are_taken_and_non_finite_weights_are_not():
    """Regexes with slashes and dots inside, labels with colons: no path, taken. NaN and infinity never reach the form
    through JSON (the server's parser refuses them); called directly, it refuses them too."""
    for weight in (math.nan, math.inf, -math.inf):
        with pytest.raises(UserError, match=r"'rewards\[0\]' \(exact\) weight must be a finite number"):
            run_form._rewards([{"name": "exact", "weight": weight}])
    specs = [
        {"name": "regex", "pattern": r"\d+/\d+ \.\.\. a..b"},
        {"name": "choice", "labels": ["a/b", "yes: no", ".5"]},
        {"name": "length", "min": 0, "max": 3},
    ]
    assert [r["name"] for r in run_form._rewards(specs)] == ["regex", "choice", "length"]


# ---- the estimate -------------------------------------------------------------------------------------------------


def test_the_grpo_estimate_is_an_upper_bound_on_tokens_and_does_not_guess_the_time(client):
    values = _grpo(iters=10, batch_size=2, group_size=4, max_completion_tokens=32, rewards=[{"name": "exact"}])
    body = _form(client, **values).get_json()
    est = body["estimate"]
    sft = _form(client, iters=10, batch_size=2, method="lora").get_json()["estimate"]
    m = re.search(r"× ~([\d,]+) tokens", sft["basis"])
    assert m, sft["basis"]
    mean = sft["tokens"] / (10 * 2)  # the SFT estimate's mean example
    assert math.isclose(est["tokens"], 10 * 2 * 4 * (mean + 32), rel_tol=0.01), (est, sft)
    assert est["steps"] == 10 and est["seconds"] is None and est["peak_memory_gb"] is None
    assert "an upper bound" in est["basis"] and "group_size 4" in est["basis"]
    assert "the time is not estimated" in est["basis"] and "samples 8 answers" in est["basis"]


# ---- in a real browser: a GRPO job from the form, its reward chart and its answers -----------------------------------

RUN = "grpo-run"
JOB_TIMEOUT_MS = 120_000
# Shown in place of a sampled answer (by a routed metrics answer): it must stay text.
HOSTILE = '<b>bold</b><img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def server(qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    bt.require()
    tmp = tmp_path_factory.mktemp("grpo-studio")
    args = [str(qwen2_dir), "--db", str(tmp / "studio.db"), "--runs", str(tmp / "runs")]
    args += ["--data-dir", str(tmp / "data"), "--exports-dir", str(tmp / "exports")]
    with bt.serving(tmp, *args) as served:
        yield served


CELLS_TEXT_ONLY = """() => [...document.querySelectorAll('#job-samples tbody td')].every(
    (td) => td.childElementCount === 0 && [...td.childNodes].every((n) => n.nodeType === Node.TEXT_NODE))"""


def test_a_grpo_job_from_the_form_shows_its_reward_curve_and_its_answers_as_text(page, server, qwen2_dir, tmp_path):
    shot = bt.screenshots(page, tmp_path, "grpo")
    try:
        _grpo_job(page, server, qwen2_dir, shot)
    except BaseException:
        shot("failure")
        raise


def _grpo_job(page, server, qwen2_dir: Path, shot) -> None:
    base = server["base"]
    page.goto(base + "/studio#run")
    page.wait_for_selector('body[data-ready="1"]')
    assert page.is_hidden("#group-grpo")
    page.fill("#run-model", str(qwen2_dir))
    page.fill("#run-data", "fish_care")
    page.select_option("#run-method", "lora")
    page.fill("#run-name", RUN)
    page.select_option('#run-form [data-key="train_mode"]', "grpo")
    page.wait_for_selector("#group-grpo", state="visible")
    assert page.is_visible('#run-form .field[data-field="beta"]')
    # The rewards editor: the built-ins only; length with at most 8 characters, in place of exact.
    row = '#run-form [data-key="rewards"] .reward-row'
    names = page.eval_on_selector_all(f"{row}:first-child select.reward-name option", "os => os.map(o => o.value)")
    assert names == list(rewards_mod.BUILT_IN)
    page.select_option(f"{row}:first-child select.reward-name", "length")
    page.fill(f'{row}:first-child [data-option="max"]', "8")
    # An option that could be a path is refused by the server, at its reward; removing the reward clears it.
    page.click('#run-form [data-key="rewards"] .reward-add')
    page.select_option(f"{row}:nth-child(2) select.reward-name", "regex")
    page.fill(f'{row}:nth-child(2) [data-option="pattern"]', "/etc/passwd")
    error = '#run-form .field[data-field="rewards"] .field-error'
    page.wait_for_selector(error, state="visible")
    assert page.inner_text(error).startswith("config key 'rewards[1]' (regex) pattern must not be a path")
    assert page.eval_on_selector_all(f"{row}.invalid", "rs => rs.length") == 1 and page.is_disabled("#run-start")
    page.click(f"{row}:nth-child(2) .reward-remove")
    page.wait_for_selector(error, state="hidden")
    page.click("#group-advanced > summary")
    fields = {"iters": 2, "batch_size": 2, "group_size": 2, "max_completion_tokens": 4, "num_layers": 2}
    fields |= {"steps_per_report": 1, "steps_per_eval": 2, "val_batches": 1, "max_seq_length": 128}
    for key, value in fields.items():
        page.fill(f'#run-form [data-key="{key}"]', str(value))
    page.wait_for_function(
        "() => document.getElementById('run-command').textContent.includes('--group-size=2')"
        " && !document.getElementById('run-resolved').classList.contains('stale')"
    )
    command = page.inner_text("#run-command")
    assert "--train-mode=grpo" in command and "--set=rewards=[{name: length, weight: 1.0, max: 8}]" in command, command
    assert page.inner_text("#est-time") == "no measurement yet" and "not estimated" in page.inner_text("#est-basis")
    shot("form")

    page.click("#run-start")
    page.wait_for_selector("#tab-jobs:not([hidden]) #job-card:not([hidden])")
    page.wait_for_function(
        "() => ['done', 'failed'].includes(document.getElementById('job-state').textContent)", timeout=JOB_TIMEOUT_MS
    )
    assert page.inner_text("#job-state") == "done", page.inner_text("#job-error-text") + server["log"]()
    page.wait_for_function("() => window.studioChart && window.studioChart.reward >= 3")  # 2 training + 1 val point
    assert page.is_visible("#job-reward-chart") and page.is_visible("#job-chart")
    rows = bt.get_json(f"{base}/api/runs/{RUN}/metrics")["rows"]
    last = [r for r in rows if "reward" in r][-1]
    page.wait_for_selector("#job-samples:not([hidden]) tbody tr")
    cells = page.locator("#job-samples tbody tr").first.locator("td").all_inner_texts()
    assert cells[0] == last["samples"][0]["prompt"] and cells[1] == last["samples"][0]["answer"], cells
    assert page.locator("#job-samples tbody tr").count() == len(last["samples"])
    assert page.evaluate(CELLS_TEXT_ONLY), "a sample's text made an element"
    assert page.inner_text("#job-reward") == f"{last['reward']:.3f}"
    sampling = page.inner_text("#job-sample-time")
    assert sampling == f"{last['sample_s']:.2f} s / {last['step_s'] - last['sample_s']:.2f} s", sampling
    shot("job")
    page.evaluate("() => window.i18n.setLang('zh')")
    assert page.inner_text("#job-samples-title").startswith("最新采样的回答")
    shot("job-zh")
    page.evaluate("() => window.i18n.setLang('en')")

    # A sample holding markup (the model's text is anything): shown as text, in text nodes only.
    hostile = [
        {**r, "samples": [{"prompt": "<i>p</i>", "answer": HOSTILE, "reward": 0.5}]} if r is last else r for r in rows
    ]
    page.route(
        re.compile(rf".*/api/runs/{RUN}/metrics.*"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps({"rows": hostile})),
    )
    page.reload()
    page.wait_for_selector('body[data-ready="1"]')
    page.wait_for_selector("#job-samples:not([hidden]) tbody tr")
    assert page.locator("#job-samples tbody td").all_inner_texts()[:2] == ["<i>p</i>", HOSTILE]
    assert page.locator("#job-samples b, #job-samples img, #job-samples i").count() == 0
    assert page.evaluate(CELLS_TEXT_ONLY) and page.evaluate("typeof window.__xss") == "undefined"
