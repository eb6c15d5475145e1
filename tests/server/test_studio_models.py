"""The studio's models: the page, `serve` with no RUN, the models list, a conversation's model, compare, and real
adapter swapping on the tiny fixture model (two runs trained here, answering from one loaded base)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mlx_ft import config, data
from mlx_ft.cli import build_parser
from mlx_ft.config import TrainConfig
from mlx_ft.inference.engine import Engine
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.state import MAX_UPLOAD_BYTES, ServeConfig, of
from mlx_ft.services.history import History
from mlx_ft.training.run import train

EVIL = "https://evil.example"
QUESTION = "q1?"
GREEDY = Sampling(temp=0.0, top_p=1.0, max_tokens=8)


def test_serve_without_run_serves_the_builtin_model_with_studio_folders():
    args = build_parser().parse_args(["serve"])
    assert args.run == [], "no RUN: cli serves the built-in model, with the studio at / (see its --help below)"
    args = build_parser().parse_args(["serve", "--data-dir", "d", "--exports-dir", "e", "--max-upload-mb", "2"])
    assert (args.data_dir, args.exports_dir, args.max_upload_mb) == ("d", "e", 2)
    assert build_parser().parse_args(["serve"]).max_upload_mb << 20 == MAX_UPLOAD_BYTES


def test_serve_help_says_what_the_studio_is_its_folders_and_what_stopping_does_to_a_job(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        f"the built-in {TrainConfig.model}",
        "with the studio at /;",
        "the studio at /studio",
        "--data-dir (uploads)",
        "--exports-dir (exports)",
        "--models (local",
    ):
        assert words in text, words
    assert "sends the running job SIGINT" in text and "shows as interrupted, resumable from that checkpoint" in text


def test_the_readmes_api_section_lists_every_studio_route():
    """Every /api/studio route, as the Web chat and APIs section writes it (a <parameter> as NAME, ID or a|b|c)."""
    import re

    from flask import Flask

    from mlx_ft.server.studio import data as studio_data
    from mlx_ft.server.studio import jobs as studio_jobs
    from mlx_ft.server.studio import models as models_api

    app = Flask("routes")
    for bp in (studio_data.bp, models_api.bp, studio_jobs.bp):
        app.register_blueprint(bp)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Web chat and APIs", 1)[1].split("\n## ", 1)[0]
    routes = {r.rule for r in app.url_map.iter_rules() if r.rule.startswith("/api/studio")}
    assert len(routes) >= 10
    for rule in routes:
        parts = re.split(r"<[^>]+>", rule)  # the fixed text between the <parameters>
        pattern = "[A-Za-z|]+".join(re.escape(x) for x in parts)
        assert re.search(f"`(GET|POST|GET/POST) {pattern}`", section), rule


def test_serve_passes_its_models_folder_to_the_studio(monkeypatch):
    from mlx_ft.server import app

    got: list[ServeConfig] = []
    monkeypatch.setattr(app, "serve", lambda config, port: got.append(config))
    for argv, folder in ((["serve"], Path("models")), (["serve", "--models", "/srv/llms"], Path("/srv/llms"))):
        args = build_parser().parse_args(argv)
        args.func(args)
        assert got.pop().models_dir == folder


def test_a_schema_1_history_gains_the_model_setting(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, system TEXT NULL, temperature REAL "
            "NOT NULL, top_p REAL NOT NULL, max_tokens INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)"
        )
        conn.execute("INSERT INTO conversations VALUES ('old', 'Old', NULL, 0.7, 1.0, 64, 1.0, 1.0)")
        conn.execute("PRAGMA user_version=1")
    with History(db) as history:
        assert history.get("old").model is None
        assert history.update("old", model="run:A").model == "run:A"
        with pytest.raises(ValueError, match="model"):
            history.update("old", model=3)


@pytest.fixture(scope="module")
def runs(qwen2_dir, tmp_path_factory) -> Path:
    """Two runs on the tiny model, trained hard enough that greedy answers differ: A (LoRA, with a checkpoint) and
    B (a full fine-tune of the last layer, whose weights are swapped in rather than modules), and C (QLoRA: its base
    is the model quantized, so it gets a base of its own)."""
    tmp = tmp_path_factory.mktemp("studio_models")
    src = tmp / "facts.json"
    src.write_text(
        json.dumps([{"question": f"q{i}?", "answer": "鱼要换水。" * 3} for i in range(8)], ensure_ascii=False)
    )
    data.prepare([src], tmp / "data", valid=0.25, test=0.0)
    common = dict(model=str(qwen2_dir), data=str(tmp / "data"), batch_size=2, iters=4, steps_per_report=2)
    common.update(steps_per_eval=4, save_every=2, max_seq_length=64)
    lora = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    train(
        config.build(
            {
                **common,
                "adapter_path": str(tmp / "runs" / "A"),
                "learning_rate": 5e-2,
                "lora_parameters": lora,
                "num_layers": 2,
            }
        )
    )
    train(
        config.build(
            {
                **common,
                "adapter_path": str(tmp / "runs" / "B"),
                "learning_rate": 1e-2,
                "fine_tune_type": "full",
                "num_layers": 1,
            }
        )
    )
    qlora = {**common, "adapter_path": str(tmp / "runs" / "C"), "learning_rate": 5e-2, "quantize": 4}
    train(config.build({**qlora, "lora_parameters": lora, "num_layers": 2}))
    (tmp / "runs" / "not-a-run").mkdir()
    return tmp / "runs"


def _fresh_answer(source: str) -> str:
    """The greedy answer of `source` loaded on its own, as `serve SOURCE` or `infer` would load it."""
    engine = Engine(loader.load(source))
    return engine.answer(engine.prompt([{"role": "user", "content": QUESTION}], GREEDY.max_tokens), GREEDY)[0]


@pytest.fixture(scope="module")
def truth(qwen2_dir, runs) -> dict[str, str]:
    return {
        "base": _fresh_answer(str(qwen2_dir)),
        "run:A": _fresh_answer(str(runs / "A")),
        "run:B": _fresh_answer(str(runs / "B")),
    }


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir), adapter=False))


@pytest.fixture
def app(engine, runs, tmp_path):
    cfg = ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", runs, data_dir=tmp_path / "data")
    return create_app(cfg, engine)


@pytest.fixture
def client(app):
    return app.test_client()


def test_studio_page_renders_with_the_model_label(app, engine):
    resp = app.test_client().get("/studio")
    assert resp.status_code == 200 and engine.loaded.label in resp.get_data(as_text=True)
    assert of(app).config.data_dir.name == "data"


def test_models_lists_the_base_every_run_and_every_checkpoint(client, qwen2_dir):
    body = client.get("/api/studio/models").get_json()
    ids = [m["id"] for m in body["models"]]
    assert ids[0] == "base" and {"run:A", "run:B", "run:A@step-0000002", "run:A@step-0000004"} <= set(ids)
    assert not any("not-a-run" in i for i in ids)
    a = next(m for m in body["models"] if m["id"] == "run:A@step-0000002")
    assert (a["kind"], a["run"], a["checkpoint"], a["base"]) == ("checkpoint", "A", "step-0000002", str(qwen2_dir))
    assert body["loaded"] in ids


def _compare(client, *models: str) -> list[dict]:
    resp = client.post(
        "/api/studio/compare", json={"message": QUESTION, "models": list(models), "max_tokens": 8, "temperature": 0}
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["answers"]


def test_runs_swap_on_one_base_and_answer_as_their_weights_say(client, truth):
    assert len(set(truth.values())) == 3, f"the runs must answer differently for this test to mean anything: {truth}"
    order = ["base", "run:A", "run:B", "run:A", "base", "run:B", "base"]
    answers = _compare(client, *order[:4]) + _compare(client, *order[4:])
    assert [a["model"] for a in answers] == order
    for a in answers:
        assert a["text"] == truth[a["model"]], a
        assert a["tokens"] == 8 and a["switch_ms"] >= 0 and a["seconds"] >= a["switch_ms"] / 1000
    assert client.get("/api/studio/models").get_json()["loaded"] == "base"


def test_a_checkpoint_answers_like_its_folder_loaded_alone(client, runs):
    (answer,) = _compare(client, "run:A@step-0000002")
    assert answer["text"] == _fresh_answer(str(runs / "A" / "checkpoints" / "step-0000002"))


def test_a_conversations_model_answers_it(client, truth):
    conv = client.post("/api/conversations", json={"model": "run:B", "max_tokens": 8, "temperature": 0}).get_json()
    assert conv["model"] == "run:B"
    resp = client.post("/api/chat", json={"message": QUESTION, "conversation_id": conv["id"]})
    assert resp.get_json()["response"] == truth["run:B"]
    assert client.patch(f"/api/conversations/{conv['id']}", json={"model": None}).get_json()["model"] is None
    client.post(f"/api/conversations/{conv['id']}/clear")
    resp = client.post("/api/chat", json={"message": QUESTION, "conversation_id": conv["id"]})
    assert resp.get_json()["response"] == truth["base"]  # the served model


def test_unknown_models_are_refused(client):
    for body in ({"model": "run:nope"}, {"model": "run:../A"}, {"model": 3}, {"model": "/etc"}):
        resp = client.post("/api/conversations", json=body)
        assert resp.status_code == 400 and "model" in resp.get_json()["error"], body
    conv = client.post("/api/conversations", json={}).get_json()
    resp = client.patch(f"/api/conversations/{conv['id']}", json={"model": "run:not-a-run"})
    assert resp.status_code == 400 and "unknown model" in resp.get_json()["error"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"message": "hi", "models": ["base", "run:nope"]}, "unknown model"),
        ({"message": "hi", "models": "base"}, "models"),
        ({"message": "hi", "models": []}, "models"),
        ({"message": "hi", "models": ["base"] * 5}, "models"),
        ({"message": "", "models": ["base"]}, "message"),
        ({"message": "hi", "models": ["base"], "min_p": 0.1}, "unknown field"),
        ({"message": "hi", "models": ["base"], "max_tokens": 2.5}, "max_tokens"),
        ({"message": "hi", "models": ["base"], "temperature": 9}, "temperature"),
    ],
)
def test_compare_refuses_bad_requests(client, body, words):
    resp = client.post("/api/studio/compare", json=body)
    assert resp.status_code == 400 and words in resp.get_json()["error"]


def test_foreign_origins_are_refused_on_the_studio_routes(client):
    for method, path in (("get", "/studio"), ("get", "/api/studio/models"), ("post", "/api/studio/compare")):
        resp = getattr(client, method)(path, json={"message": "hi", "models": ["base"]}, headers={"Origin": EVIL})
        assert resp.status_code == 403, path


def test_a_run_served_as_it_is_shares_its_base_with_the_others(runs, truth, tmp_path):
    engine = Engine(loader.load(str(runs / "A"), adapter=False))
    client = create_app(ServeConfig(str(runs / "A"), tmp_path / "c.db", runs), engine).test_client()
    assert client.get("/api/studio/models").get_json()["loaded"] == "run:A"
    answers = _compare(client, "run:A", "base", "run:B")
    assert [a["text"] for a in answers] == [truth["run:A"], truth["base"], truth["run:B"]]


def test_runs_serve_was_given_answer_by_name_in_the_studio_and_the_openai_api(engine, runs, truth, tmp_path):
    """`serve BASE RUNS/A` with a runs folder that does not hold A: A answers under its folder name."""
    cfg = ServeConfig(str(engine.loaded.source), tmp_path / "c.db", tmp_path / "empty", more_runs=[str(runs / "A")])
    client = create_app(cfg, engine).test_client()
    ids = [m["id"] for m in client.get("/api/studio/models").get_json()["models"]]
    assert ids == ["base", "A"]
    assert [m["id"] for m in client.get("/v1/models").get_json()["data"]] == [str(engine.loaded.source), "A", "base"]
    assert [a["text"] for a in _compare(client, "A", "base")] == [truth["run:A"], truth["base"]]
    body = {"model": "A", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    body["max_tokens"] = GREEDY.max_tokens
    answer = client.post("/v1/chat/completions", json=body).get_json()
    assert answer["model"] == "A" and answer["choices"][0]["message"]["content"] == truth["run:A"]


def test_a_variant_dropped_from_the_cache_is_rebuilt_the_same(client, truth, monkeypatch):
    from mlx_ft.inference import engine as engine_mod

    monkeypatch.setattr(engine_mod, "MAX_VARIANTS", 1)
    answers = _compare(client, "run:A", "run:B", "run:A", "base")
    assert [a["text"] for a in answers] == [truth["run:A"], truth["run:B"], truth["run:A"], truth["base"]]


def test_a_qlora_run_answers_from_its_own_quantized_base(client, runs, truth):
    fresh = _fresh_answer(str(runs / "C"))
    answers = _compare(client, "run:C", "base", "run:C", "run:A")
    assert [a["text"] for a in answers] == [fresh, truth["base"], fresh, truth["run:A"]]


def test_a_prompt_for_a_third_base_leaves_a_running_answer_on_another_alone(engine, runs, tmp_path):
    """C (4-bit QLoRA) answers from the one extra base kept; D (8-bit) needs another. Building D's prompt while C
    is answering reads D's tokenizer only: C's base stays loaded under its batch, and C's answers are whole."""
    cfg = config.load(runs / "C" / "config.yaml")
    train(config.build({**cfg.__dict__, "adapter_path": str(tmp_path / "D"), "quantize": 8}))
    from mlx_ft.inference.engine import ModelRef

    c, d = ModelRef("C", runs / "C"), ModelRef("D", tmp_path / "D")
    long = Sampling(temp=0.0, max_tokens=32, top_logprobs=0)  # a piece per token
    messages = [{"role": "user", "content": QUESTION}]
    alone_c = engine.answer(engine.prompt(messages, 32, c), long, c)[0]
    first = engine.submit(engine.prompt(messages, 32, c), long, c)
    pieces = first.pieces()
    head = [next(pieces)]
    d_prompt = engine.prompt(messages, 32, d)  # D's tokenizer, while C generates
    second = engine.submit(engine.prompt(messages, 32, c), long, c)
    assert "".join(p.text for p in second.pieces()) == alone_c
    assert "".join(p.text for p in head + list(pieces)) == alone_c
    fresh = Engine(loader.load(str(tmp_path / "D")))
    assert engine.answer(d_prompt, long, d)[0] == fresh.answer(fresh.prompt(messages, 32), long)[0]


SETTINGS_OF_GREEDY_8 = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "max_tokens": 8}


def _events(resp) -> list[dict]:
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream" and resp.is_streamed
    return [json.loads(x[len("data: ") :]) for x in resp.get_data(as_text=True).split("\n\n") if x.startswith("data: ")]


def test_compare_streams_every_answer_and_ends_each_with_its_figures(client, truth):
    models = ["base", "run:A", "run:B", "run:A"]
    body = {"message": QUESTION, "models": models, "max_tokens": 8, "temperature": 0, "stream": True}
    events = _events(client.post("/api/studio/compare", json=body))
    assert events[-1] == {"done": True} and sum(e == {"done": True} for e in events) == 1
    for i, model in enumerate(models):
        mine = [e for e in events if e.get("index") == i]
        assert all(e["model"] == model for e in mine)
        assert "".join(e["delta"] for e in mine[:-1]) == truth[model], "pieces, in order, then the end"
        end = mine[-1]
        assert end["done"] is True and end["finish_reason"] == "length" and end["tokens"] == 8
        assert end["settings"] == SETTINGS_OF_GREEDY_8
        assert 0 <= end["ttft_s"] <= end["seconds"] and end["seconds"] >= end["switch_ms"] / 1000
        assert type(end["cached_tokens"]) is int and 0 <= end["cached_tokens"] <= end["prompt_tokens"], end
    for answer in _compare(client, *models):  # the plain form reports the same settings
        assert answer["settings"] == SETTINGS_OF_GREEDY_8 and answer["finish_reason"] == "length"
        assert 0 <= answer["ttft_s"] <= answer["seconds"]
        assert type(answer["cached_tokens"]) is int and 0 <= answer["cached_tokens"] <= answer["prompt_tokens"]


def _fake_run(runs: Path, name: str, base: Path | str) -> None:
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {base}\nfine_tune_type: lora\n")
    (run / "adapter_config.json").write_text("{}")
    (run / loader.ADAPTERS).write_bytes(b"never read: its base fails first")


def test_a_model_that_fails_ends_with_an_error_and_the_others_answer(engine, qwen2_dir, tmp_path):
    """run:gone names a base that is not there (its prompt cannot be built); run:broken's base has the tokenizer
    but unreadable weights (it fails in the generation thread, when its turn comes)."""
    broken = tmp_path / "broken-base"
    broken.mkdir()
    for f in qwen2_dir.iterdir():
        if f.suffix != ".safetensors":
            (broken / f.name).symlink_to(f)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    _fake_run(tmp_path / "runs", "gone", "/nowhere/at/all")
    _fake_run(tmp_path / "runs", "broken", broken)
    client = create_app(ServeConfig(str(qwen2_dir), tmp_path / "c.db", tmp_path / "runs"), engine).test_client()
    base = client.post(
        "/api/studio/compare", json={"message": QUESTION, "models": ["base"], "max_tokens": 8, "temperature": 0}
    ).get_json()["answers"][0]["text"]
    body = {"message": QUESTION, "max_tokens": 8, "temperature": 0}
    events = _events(
        client.post("/api/studio/compare", json={**body, "models": ["run:gone", "base", "run:broken"], "stream": True})
    )
    errors = {e["index"]: e for e in events if "error" in e}
    assert set(errors) == {0, 2} and "/nowhere/at/all" in errors[0]["error"] and errors[2]["error"]
    assert [e["model"] for e in errors.values()] == ["run:gone", "run:broken"]
    assert "".join(e.get("delta", "") for e in events if e.get("index") == 1) == base
    assert [e["index"] for e in events if e.get("done") and "index" in e] == [1] and events[-1] == {"done": True}
    answers = _compare(client, "base", "run:broken")
    assert answers[0]["text"] == base and answers[1]["model"] == "run:broken" and answers[1]["error"]
    resp = client.post("/api/studio/compare", json={**body, "models": ["base", "run:gone"]})
    assert resp.status_code == 400 and "run:gone" in resp.get_json()["error"]


@pytest.fixture
def opinionated(qwen2_dir, tmp_path) -> Path:
    """The fixture model, with the sampling defaults its authors might ship: greedy (do_sample false, whatever the
    temperature says), and a repetition penalty that breaks the random model's loop of one token."""
    folder = tmp_path / "opinionated"
    folder.mkdir()
    for f in qwen2_dir.iterdir():
        if f.name != "generation_config.json":
            (folder / f.name).symlink_to(f)
    shipped = json.loads((qwen2_dir / "generation_config.json").read_text())
    shipped.update(do_sample=False, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=2.0)
    (folder / "generation_config.json").write_text(json.dumps(shipped))
    return folder


def test_the_models_own_generation_defaults_are_listed_and_answer_on_request(opinionated, tmp_path):
    own = {"temperature": 0.0, "top_p": 0.8, "top_k": 20, "repetition_penalty": 2.0}
    assert loader.generation_defaults(str(opinionated)) == own
    engine = Engine(loader.load(str(opinionated)))
    client = create_app(ServeConfig(str(opinionated), tmp_path / "c.db", tmp_path / "runs"), engine).test_client()
    (base,) = client.get("/api/studio/models").get_json()["models"]
    assert base["generation_defaults"] == own
    prompt = engine.prompt([{"role": "user", "content": QUESTION}], 8)
    greedy = engine.answer(prompt, GREEDY)[0]
    with_defaults = engine.answer(prompt, Sampling(temp=0.0, top_p=0.8, top_k=20, repetition_penalty=2.0, max_tokens=8))
    assert greedy != with_defaults[0], "the penalty must change the answer for this test to mean anything"
    body = {"message": QUESTION, "models": ["base"], "max_tokens": 8, "temperature": 0.0}
    (asked,) = client.post("/api/studio/compare", json=body).get_json()["answers"]
    assert asked["text"] == greedy and asked["settings"] == SETTINGS_OF_GREEDY_8
    body.update(temperature=1.5, top_k=5, use_model_defaults=True)  # the model's own win where it has them
    (answer,) = client.post("/api/studio/compare", json=body).get_json()["answers"]
    assert answer["text"] == with_defaults[0] and answer["settings"] == {**own, "max_tokens": 8}
    events = _events(client.post("/api/studio/compare", json={**body, "stream": True}))
    assert events[-2]["settings"] == {**own, "max_tokens": 8}


def test_generation_defaults_take_hugging_faces_keys_and_drop_what_is_not_a_setting(tmp_path, smollm2_dir):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": "high", "top_k": 2.5, "repetition_penalty": True, "max_length": 9})
    )
    assert loader.generation_defaults(str(tmp_path)) == {"temperature": 0.6}
    (tmp_path / "generation_config.json").write_text("{not json")
    assert loader.generation_defaults(str(tmp_path)) == {}
    assert loader.generation_defaults(str(tmp_path / "nothing")) == {}
    # The built-in model is imported from a GGUF file, which carries no sampling settings.
    assert loader.generation_defaults(str(smollm2_dir)) == {}


@pytest.mark.parametrize(
    "extra",
    [
        {"top_p": 1.5},
        {"top_k": -1},
        {"top_k": 10**7},
        {"top_k": 2.5},
        {"repetition_penalty": 0},
        {"repetition_penalty": 11},
        {"use_model_defaults": "yes"},
        {"stream": "true"},
        {"stream": 1},
    ],
)
def test_compare_refuses_bad_sampling_settings(client, extra):
    resp = client.post("/api/studio/compare", json={"message": "hi", "models": ["base"], **extra})
    (key,) = extra
    assert resp.status_code == 400 and resp.get_json()["error"].startswith(f"field {key!r} must be"), resp.get_json()
