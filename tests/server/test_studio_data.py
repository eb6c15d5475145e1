"""The studio's data API and new-run form through Flask's test client, on the tiny fixture model's tokenizer: uploads
(good, bad with file:line problems, dataset_info.json folders, too large, escaping names), shipped sets and recipes,
previews whose learned spans are training's own mask, and the form's config and command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mlx_ft import chat_template, cli, data
from mlx_ft import config as config_mod
from mlx_ft.export.tensor_types import FILE_TYPES
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.state import ServeConfig
from mlx_ft.training.batches import TokenizedChats

EVIL = "https://evil.example"
QA = [{"question": f"What is fish number {i}?", "answer": f"Fish {i} is a guppy."} for i in range(12)]


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir), adapter=False))


@pytest.fixture
def make_client(engine, tmp_path):
    def make(**kw):
        cfg = ServeConfig(
            str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", data_dir=tmp_path / "data", **kw
        )
        cfg.models_dir = kw.get("models_dir", tmp_path / "models")
        return create_app(cfg, engine).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def _jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows).encode()


def _upload(client, files: list[tuple[str, bytes]], **fields):
    body = {**{k: str(v) for k, v in fields.items()}, "files": [(io.BytesIO(b), name) for name, b in files]}
    return client.post("/api/studio/datasets", data=body, content_type="multipart/form-data")


def _stored(tmp_path: Path) -> list[str]:
    root = tmp_path / "data"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_datasets_lists_shipped_sets_and_recipes(client):
    listed = {d["name"]: d for d in client.get("/api/studio/datasets").get_json()["datasets"]}
    assert listed["fish_care"]["source"] == "shipped" and listed["fish_care"]["splits"]["train"] > 0
    assert listed["miners"]["source"] == "recipe" and listed["router"]["source"] == "recipe"


def test_a_dry_run_inspects_and_stores_nothing_then_an_upload_stores_the_set(client, tmp_path):
    resp = _upload(client, [("fish.jsonl", _jsonl(QA))], dry_run=1, max_seq_length=16)
    assert resp.status_code == 200, resp.get_json()
    got = resp.get_json()["dataset"]
    assert got["name"] == "fish" and got["format"] == "qa" and got["stored"] is False
    assert sum(got["splits"].values()) == 12
    tokens = got["stats"]["tokens"]
    assert 0 < tokens["min"] <= tokens["mean"] <= tokens["max"]
    assert got["stats"]["max_seq_length"] == 16 and got["stats"]["over_max_seq_length"] == 12  # every one is longer
    assert any("longer than max_seq_length" in n for n in got["notes"])
    assert _stored(tmp_path) == []

    resp = _upload(client, [("fish.jsonl", _jsonl(QA))], name="fish-1")
    got = resp.get_json()["dataset"]
    assert resp.status_code == 200 and got["stored"] and got["stats"]["over_max_seq_length"] == 0
    folder = tmp_path / "data" / "fish-1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "prepare.json",
        "raw",
        "test.jsonl",
        "train.jsonl",
        "valid.jsonl",
    ]
    assert json.loads((folder / "prepare.json").read_text())["inputs"] == ["raw/fish.jsonl"]
    assert len(data.load_split(folder, "train")) == got["splits"]["train"]
    listed = {d["name"]: d for d in client.get("/api/studio/datasets").get_json()["datasets"]}
    assert listed["fish-1"]["source"] == "uploaded" and listed["fish-1"]["splits"] == got["splits"]
    again = _upload(client, [("fish.jsonl", _jsonl(QA))], name="fish-1")
    assert again.status_code == 409 and "exists" in again.get_json()["error"]


def test_a_bad_upload_reports_every_problem_as_file_line_and_stores_nothing(client, tmp_path):
    rows = [QA[0], {"question": "no answer"}, "{not json", QA[1], {"question": "", "answer": "x"}]
    resp = _upload(client, [("good.jsonl", _jsonl(QA)), ("bad.jsonl", _jsonl(rows))])
    body = resp.get_json()
    assert resp.status_code == 400 and body["error"] == body["problems"][0]
    assert [p.split(":")[:2] for p in body["problems"]] == [["bad.jsonl", "2"], ["bad.jsonl", "3"], ["bad.jsonl", "5"]]
    assert "answer" in body["problems"][0] and str(tmp_path) not in json.dumps(body)
    assert not (tmp_path / "data").exists()  # not even the folder made for the upload


def test_file_names_in_any_language_are_kept(client, tmp_path):
    resp = _upload(client, [("鱼 数据.jsonl", _jsonl(QA))], name="fish")
    assert resp.status_code == 200, resp.get_json()
    assert (tmp_path / "data" / "fish" / "raw" / "鱼 数据.jsonl").is_file()


def test_a_dataset_info_folder_is_read_with_its_files(client, tmp_path):
    info = {"shop": {"file_name": "shop.json", "formatting": "alpaca"}}
    rows = [{"instruction": f"Price of item {i}?", "input": "", "output": f"{i} yuan"} for i in range(6)]
    files = [("shop/dataset_info.json", json.dumps(info).encode()), ("shop/shop.json", json.dumps(rows).encode())]
    resp = _upload(client, files)
    got = resp.get_json()["dataset"]
    assert resp.status_code == 200 and got["name"] == "shop" and got["format"] == "alpaca"
    assert (tmp_path / "data" / "shop" / "raw" / "shop" / "dataset_info.json").is_file()


@pytest.mark.parametrize(
    "filename",
    [
        "../evil.jsonl",
        "/etc/evil.jsonl",
        "a/../../evil.jsonl",
        "C:/evil.jsonl",
        "..\\evil.jsonl",
        ".hidden.jsonl",
        "a//b.jsonl",
        "x\x00.jsonl",
    ],
)
def test_upload_names_cannot_escape_the_data_folder(client, tmp_path, filename):
    resp = _upload(client, [(filename, _jsonl(QA))])
    assert resp.status_code == 400 and "file name" in resp.get_json()["error"]
    assert _stored(tmp_path) == [] and not (tmp_path / "evil.jsonl").exists()


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".x", "..", "x" * 101])
def test_dataset_names_are_confined(client, tmp_path, name):
    resp = _upload(client, [("fish.jsonl", _jsonl(QA))], name=name)
    assert resp.status_code == 400 and "name" in resp.get_json()["error"]
    assert _stored(tmp_path) == []


@pytest.mark.parametrize(
    "fields, files, status, words",
    [
        ({"format": "nope"}, [("a.jsonl", _jsonl(QA))], 400, "unknown format"),
        ({"colour": "red"}, [("a.jsonl", _jsonl(QA))], 400, "unknown field"),
        ({"model": "run:nope"}, [("a.jsonl", _jsonl(QA))], 400, "unknown model"),
        ({"max_seq_length": "many"}, [("a.jsonl", _jsonl(QA))], 400, "max_seq_length"),
        ({"dry_run": "maybe"}, [("a.jsonl", _jsonl(QA))], 400, "dry_run"),
        ({}, [("a.exe", b"MZ")], 400, "unsupported file type"),
        ({}, [("a.jsonl", b"")], 400, "no valid examples"),
        ({}, [("a.jsonl", b"\xff\xfe\n")], 400, "a.jsonl:1: not UTF-8"),
        ({}, [("a.jsonl", _jsonl(QA)), ("a.jsonl", _jsonl(QA))], 400, "uploaded twice"),
    ],
)
def test_upload_errors(client, tmp_path, fields, files, status, words):
    resp = _upload(client, files, **fields)
    assert resp.status_code == status and words in resp.get_json()["error"], resp.get_json()
    assert _stored(tmp_path) == []


def test_the_upload_limit_applies_to_uploads_only(make_client, tmp_path):
    client = make_client(max_body_bytes=4096, max_upload_bytes=64 << 10)
    big = _jsonl(QA * 10)
    assert 4096 < len(big) < 64 << 10
    assert _upload(client, [("big.jsonl", big)], dry_run=1).status_code == 200
    resp = client.post("/api/conversations", data=json.dumps({"title": "x" * 5000}), content_type="application/json")
    assert resp.status_code == 413
    resp = _upload(client, [("huge.jsonl", _jsonl(QA * 200))])
    assert resp.status_code == 413 and "too large" in resp.get_json()["error"]
    assert _stored(tmp_path) == []


def test_a_shipped_set_is_inspected_where_it_is(client, tmp_path):
    resp = client.post("/api/studio/datasets", json={"shipped": "fish_care", "max_seq_length": 64})
    got = resp.get_json()["dataset"]
    assert resp.status_code == 200 and got["stored"] is False and got["splits"]["train"] > 0
    assert got["stats"]["over_max_seq_length"] > 0 and _stored(tmp_path) == []
    assert client.post("/api/studio/datasets", json={"shipped": "nope"}).status_code == 404
    assert client.post("/api/studio/datasets", json={"shipped": "../fish_care"}).status_code == 400
    assert client.post("/api/studio/datasets", json={"shipped": "miners"}).status_code == 400  # a recipe


def test_a_recipe_is_prepared_with_its_template_into_the_data_folder(client, tmp_path):
    resp = client.post("/api/studio/datasets", json={"recipe": "router", "group_field": "group"})
    got = resp.get_json()["dataset"]
    assert resp.status_code == 200, resp.get_json()
    assert got["name"] == "router" and got["stored"] and got["splits"]["train"] > 0
    listed = {d["name"]: d for d in client.get("/api/studio/datasets").get_json()["datasets"]}
    assert listed["router"]["source"] == "recipe" and listed["router"]["path"] == str(tmp_path / "data" / "router")
    prepared = json.loads((tmp_path / "data" / "router" / "prepare.json").read_text())
    assert prepared["recipe"] and prepared["group_field"] == "group"
    assert client.post("/api/studio/datasets", json={"recipe": "nope"}).status_code == 400


def test_preview_marks_exactly_the_tokens_training_learns(client, engine):
    assert _upload(client, [("fish.jsonl", _jsonl(QA))], name="fish").status_code == 200
    resp = client.get("/api/studio/datasets/fish/preview?n=2&split=train&model=base")
    examples = resp.get_json()["examples"]
    assert resp.status_code == 200 and len(examples) == 2
    split = data.load_split(Path(client.application.extensions["mlx_ft"].config.data_dir) / "fish", "train")
    tok = engine.tokenizer
    for shown, ex in zip(examples, split):
        ids, mask = TokenizedChats([ex], tok, True, 2048, "t")[0]
        hf = chat_template.hf_tokenizer(tok)
        assert "".join(s["text"] for s in shown["segments"]) == hf.decode(ids)
        learned = "".join(s["text"] for s in shown["segments"] if s["learned"])
        assert learned == hf.decode([i for i, m in zip(ids[1:], mask[1:]) if m])
        assert ex.messages[-1]["content"] in learned and ex.messages[-2]["content"] not in learned
        assert shown["where"].startswith("train.jsonl:")
    cut = client.get("/api/studio/datasets/fish/preview?n=1&max_seq_length=4").get_json()["examples"][0]
    assert cut["truncated"] and cut.get("left_out")
    unmasked = client.get("/api/studio/datasets/fish/preview?n=1&mask_prompt=0").get_json()["examples"][0]
    assert all(s["learned"] for s in unmasked["segments"][1:])


@pytest.mark.parametrize(
    "url, status",
    [
        ("/api/studio/datasets/nope/preview", 404),
        ("/api/studio/datasets/..%2F..%2Fetc/preview", 404),
        ("/api/studio/datasets/fish_care/preview?split=secret", 400),
        ("/api/studio/datasets/fish_care/preview?n=0", 400),
        ("/api/studio/datasets/fish_care/preview?n=x", 400),
        ("/api/studio/datasets/fish_care/preview?colour=1", 400),
        ("/api/studio/datasets/fish_care/preview?model=run:nope", 400),
        ("/api/studio/datasets/miners/preview", 400),  # a recipe not prepared yet
    ],
)
def test_preview_errors(client, url, status):
    resp = client.get(url)
    assert resp.status_code == status and resp.get_json()["error"]


def test_the_form_offers_lora_config_keys_and_defaults_methods_and_recipe_presets(client):
    body = client.get("/api/studio/form").get_json()
    shipped = config_mod.load(config_mod.default_path()).to_dict()
    assert body["methods"] == ["lora", "dora", "qlora4", "qlora8", "full"]
    assert body["defaults"]["method"] == "dora" and body["defaults"]["data"] == "fish_care"
    for key, value in body["defaults"].items():
        if key not in ("method", "data"):
            assert shipped[key] == value, key
    presets = {p["name"]: p["values"] for p in body["presets"]}
    assert presets["miners"]["lora_parameters"]["rank"] == 16 and presets["miners"]["method"] == "lora"
    assert presets["miners"]["data"] == "miners"
    assert "fish_care" in body["datasets"] and any(m["id"] == "smollm2-135m-instruct" for m in body["models"])
    assert body["formats"] == list(data.FORMATS), "the upload's format menu: what prepare takes"
    assert body["gguf_types"] == list(FILE_TYPES), "the export's type menu: what export gguf takes"


def test_an_uploads_format_is_the_one_given_not_the_detected_one(client, tmp_path):
    """QA rows read as `qa` when asked (or detected), and fail as `alpaca` at their first line when that is asked."""
    assert _upload(client, [("a.jsonl", _jsonl(QA))], format="qa", dry_run=1).get_json()["dataset"]["format"] == "qa"
    resp = _upload(client, [("a.jsonl", _jsonl(QA))], format="alpaca", dry_run=1)
    assert resp.status_code == 400 and resp.get_json()["error"].startswith("a.jsonl:1:"), resp.get_json()
    assert _stored(tmp_path) == []


def test_the_forms_command_runs_exactly_the_config_it_shows(client, tmp_path):
    values = {"method": "qlora4", "iters": 5, "data": "fish_care", "name": "r1", "lora_parameters": {"rank": 4}}
    resp = client.post("/api/studio/form", json={"values": values})
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert body["name"] == "r1" and body["config"]["quantize"] == 4 and body["config"]["fine_tune_type"] == "lora"
    assert body["config"]["adapter_path"] == str(tmp_path / "runs" / "r1")
    assert body["config"]["lora_parameters"] == {"rank": 4, "scale": 20.0, "dropout": 0.0}
    assert body["command"].startswith("python -m mlx_ft train ")
    # The command a user copies reads as one they would type: a key's own flag, --set only for nested entries.
    assert "--iters=5" in body["command"] and "--quantize=4" in body["command"]
    assert "--set=lora_parameters.rank=4" in body["command"]
    args = cli.build_parser().parse_args(["train", *body["argv"]])
    assert config_mod.from_cli(args.config, config_mod.flags_of(args), args.set or []).to_dict() == body["config"]
    assert config_mod.build(__import__("yaml").safe_load(body["yaml"])).to_dict() == body["config"]
    assert not (tmp_path / "runs").exists()  # resolving writes nothing


@pytest.mark.parametrize(
    "values",
    [
        {"method": "full", "epochs": 2, "grad_checkpoint": True, "mask_prompt": False},
        {"train_mode": "dpo", "beta": 0.25, "early_stopping_patience": 3, "learning_rate": 1e-5},
        # 1e-05 written as JSON would come back from --set (YAML 1.1) as the string '1e-05'
        {"lr_schedule": {"name": "cosine_decay", "arguments": [1e-5, 100], "warmup": 5}},
        {"optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decay": 0.1}}, "lora_parameters": {"scale": 7.5}},
        {"seed": 3, "pack": True, "max_seq_length": 128},
    ],
)
def test_every_kind_of_key_survives_the_command_line(client, values):
    body = client.post("/api/studio/form", json={"values": {**values, "name": "r2"}}).get_json()
    assert "config" in body, body
    args = cli.build_parser().parse_args(["train", *body["argv"]])
    assert config_mod.from_cli(args.config, config_mod.flags_of(args), args.set or []).to_dict() == body["config"]
    for key, value in values.items():
        if key == "method":
            continue
        wanted = value if not isinstance(value, dict) or key == "lr_schedule" else {**body["config"][key], **value}
        assert body["config"][key] == wanted, key


@pytest.mark.parametrize(
    "values, words",
    [
        ({"iters": 0}, "iters"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"colour": 1}, "colour"),
        ({"method": "magic"}, "method"),
        ({"fine_tune_type": "full"}, "fine_tune_type"),
        ({"adapter_path": "/tmp/x"}, "adapter_path"),
        ({"model": "/etc"}, "model"),
        ({"model": "../../secret"}, "model"),
        ({"data": "../../etc"}, "data"),
        ({"data": "nope"}, "data"),
        ({"data": "miners"}, "not prepared"),
        ({"name": "../up"}, "run name"),
        ({"method": "full", "lora_parameters": {"rank": 0}}, "rank"),
    ],
)
def test_the_form_refuses_bad_values_naming_the_key(client, values, words):
    resp = client.post("/api/studio/form", json={"values": values})
    assert resp.status_code == 400 and words in resp.get_json()["error"], resp.get_json()


def test_the_models_folder_is_offered_and_no_other_local_path_is_taken(make_client, tmp_path):
    """Every folder with a config.json and every .gguf file directly in the models folder is offered and taken as
    `model`; a symlink put there counts (the folder's owner put it there), but no path through it, out of the
    folder, or to anything else in it does."""
    models, outside = tmp_path / "models", tmp_path / "outside"
    for folder in (models / "tiny", models / ".partial", models / "notes", outside / "inner"):
        folder.mkdir(parents=True)
    for folder in (models / "tiny", models / ".partial", outside, outside / "inner"):
        (folder / "config.json").write_text("{}")
    (models / "small.GGUF").write_bytes(b"GGUF")
    (models / "readme.txt").write_text("not a model")
    (models / "linked").symlink_to(outside, target_is_directory=True)
    client = make_client(models_dir=models)
    offered = {m["id"]: m["label"] for m in client.get("/api/studio/form").get_json()["models"]}
    in_folder = {k: v for k, v in offered.items() if k.startswith(str(models))}
    assert in_folder == {
        str(models / "linked"): "linked (models folder)",
        str(models / "small.GGUF"): "small.GGUF (models folder, GGUF)",
        str(models / "tiny"): "tiny (models folder)",
    }
    for i, value in enumerate(in_folder):
        resp = client.post("/api/studio/form", json={"values": {"model": value, "name": f"r{i}"}})
        assert resp.status_code == 200 and resp.get_json()["config"]["model"] == value, resp.get_json()
    refused = [
        "../x",
        "./models/tiny",
        f"{models}/tiny/",
        str(models / "linked" / "inner"),
        str(models / "linked" / ".." / "outside"),
        str(models / ".." / "outside"),
        str(outside),
        str(outside / "inner"),
        str(models / ".partial"),
        str(models / "notes"),
        str(models / "readme.txt"),
        str(models),
        "/etc",
        "~/.ssh",
        "models/../../etc",
        "elsewhere.gguf",
    ]
    for value in refused:
        resp = client.post("/api/studio/form", json={"values": {"model": value}})
        error = resp.get_json()["error"]
        assert resp.status_code == 400 and f"models folder {models}/" in error and "--models" in error, (value, error)
    job = client.post("/api/studio/jobs", json={"kind": "train", "values": {"model": str(outside)}})
    assert job.status_code == 400 and "models folder" in job.get_json()["error"]
    assert not (tmp_path / "runs").exists()


def test_the_form_refuses_an_existing_run_name_and_a_bad_body(client, tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    assert "exists" in client.post("/api/studio/form", json={"values": {"name": "taken"}}).get_json()["error"]
    assert client.post("/api/studio/form", json={"value": {}}).status_code == 400
    assert client.post("/api/studio/form", json={"values": []}).status_code == 400


def test_foreign_origins_are_refused_on_the_data_routes(client, tmp_path):
    for method, path in (
        ("get", "/api/studio/datasets"),
        ("post", "/api/studio/datasets"),
        ("get", "/api/studio/datasets/fish_care/preview"),
        ("get", "/api/studio/form"),
        ("post", "/api/studio/form"),
    ):
        resp = getattr(client, method)(path, json={"recipe": "router"}, headers={"Origin": EVIL})
        assert resp.status_code == 403, path
    assert _stored(tmp_path) == []


# ---- the form grouped for people: its schema, the server's words at the field, the estimate, a warm start --------

DROPOUT_WORDS = "config key 'lora_parameters.dropout' must be a finite number from 0 to 0.9"


def test_the_form_schema_gives_every_key_its_type_choices_bounds_help_and_group(client):
    schema = {f["key"]: f for f in client.get("/api/studio/form").get_json()["schema"]}
    keys = set(config_mod.FIELDS) - {"lora_parameters", "fine_tune_type", "quantize", "adapter_path"}
    keys -= {"resume_adapter_file", "init_from"}  # set by start_from
    keys -= {"reward_file"}  # code from a file: the terminal's (tests/server/test_grpo_studio.py)
    keys |= {f"lora_parameters.{k}" for k in config_mod.LORA_KEYS} | {"method", "name", "start_from"}
    assert set(schema) == keys
    groups = {g: [k for k, f in schema.items() if f["group"] == g] for g in ("basics", "adapter", "preference")}
    assert groups["basics"] == ["start_from", "model", "data", "method", "name", "iters", "epochs", "learning_rate"]
    assert groups["adapter"] == [*(f"lora_parameters.{k}" for k in config_mod.LORA_KEYS), "num_layers"]
    assert groups["preference"] == ["train_mode", "beta", "reference_adapter_file"]
    assert {schema[k]["group"] for k in ("batch_size", "optimizer", "pack", "lr_schedule")} == {"advanced"}
    assert schema["method"]["choices"] == ["lora", "dora", "qlora4", "qlora8", "full"]
    assert schema["optimizer"]["type"] == "choice" and schema["optimizer"]["choices"] == list(config_mod.OPTIMIZERS)
    assert schema["train_mode"]["choices"] == list(config_mod.TRAIN_MODES)
    assert schema["pack"]["type"] == "bool" and schema["iters"]["type"] == "int" and schema["beta"]["type"] == "float"
    assert schema["lr_schedule"]["type"] == "json" and schema["lora_parameters.keys"]["type"] == "list"
    assert schema["reference_adapter_file"]["type"] == "run" and schema["start_from"]["type"] == "run"
    assert schema["lora_parameters.dropout"]["bounds"] == {"lo": 0, "hi": 0.9, "lo_open": False, "also": []}
    assert schema["num_layers"]["bounds"]["also"] == [-1] and schema["learning_rate"]["bounds"]["lo_open"]
    assert schema["learning_rate"]["help"] == config_mod.FIELDS["learning_rate"].metadata["help"]
    assert schema["epochs"]["nullable"] and not schema["iters"]["nullable"]
    assert schema["lora_parameters.rank"]["when"] == {"method": ["lora", "dora", "qlora4", "qlora8"]}
    assert schema["beta"]["when"] == {"train_mode": ["dpo", "orpo", "grpo"]}
    assert schema["reference_adapter_file"]["when"] == {"train_mode": ["dpo", "grpo"]}
    assert schema["lora_parameters.rank"]["default"] == 8 and schema["iters"]["default"] == 24


@pytest.mark.parametrize(
    "values, words",
    [
        (
            {"lora_parameters": {"dropout": 5}},
            "config key 'lora_parameters.dropout' must be a finite number from 0 to 0.9",
        ),
        ({"learning_rate": 0}, "config key 'learning_rate' must be a finite number above 0"),
        ({"iters": None}, "config key 'iters' must not be empty"),
        ({"data": ""}, "config key 'data' must name a data set"),
    ],
)
def test_the_form_answers_a_bad_value_with_the_words_of_the_config_check(client, values, words):
    resp = client.post("/api/studio/form", json={"values": values})
    assert resp.status_code == 400 and resp.get_json()["error"].startswith(words), resp.get_json()


def _metrics_run(runs: Path, name: str, model: str, rows: list[dict], **cfg) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    values = {"model": model, "data": "data/fish_care", "fine_tune_type": "lora", "iters": 4, "batch_size": 2, **cfg}
    (run / "config.yaml").write_text(config_mod.dump(config_mod.build(values)), encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def _done_job(client, run: Path, state: str = "done", created: float = 1.0) -> None:
    from mlx_ft.services.job_store import Job

    job = Job(Job.new_id(), "train", run.name, str(run), [], "", str(run / "studio.log"), created, state=state)
    client.application.extensions["mlx_ft"].jobs.store.save(job)


def test_the_estimate_counts_tokens_and_says_when_nothing_was_measured(client, engine):
    values = {"data": "fish_care", "iters": 10, "method": "lora", "model": str(engine.loaded.source)}
    body = client.post("/api/studio/form", json={"values": values}).get_json()
    est = body["estimate"]
    train = data.load_split(Path(body["config"]["data"]), "train")
    cap = body["config"]["max_seq_length"] + 1
    from mlx_ft.data.stats import token_length

    mean = sum(min(token_length(engine.tokenizer, ex), cap) for ex in train) / len(train)
    assert est["tokens"] == round(10 * body["config"]["batch_size"] * mean) and est["steps"] == 10
    assert est["seconds"] is None and est["peak_memory_gb"] is None
    assert "no measurement yet" in est["basis"] and f"{len(train)} training examples" in est["basis"]
    # Epochs decide the steps; a preference objective runs both answers of a pair.
    est2 = client.post("/api/studio/form", json={"values": {**values, "epochs": 2}}).get_json()["estimate"]
    assert est2["steps"] == 2 * (len(train) // body["config"]["batch_size"])


def test_the_estimate_uses_the_newest_finished_run_of_the_same_model(client, engine, tmp_path):
    model = str(engine.loaded.source)
    rows = [
        {"step": 0, "val_loss": 3.0},
        {"step": 1, "loss": 3.0, "tokens_per_s": 10.0, "peak_memory_gb": 1.0},  # the first report: compile time
        {"step": 2, "loss": 2.0, "tokens_per_s": 400.0, "peak_memory_gb": 1.5},
        {"step": 3, "loss": 1.5, "tokens_per_s": 600.0, "peak_memory_gb": 1.25},
    ]
    other = _metrics_run(tmp_path / "runs", "other-model", "smollm2-135m-instruct", rows)
    _done_job(client, other, created=3.0)  # newer, but another model: not its speed
    stopped = _metrics_run(tmp_path / "runs", "stopped", model, [{**r, "tokens_per_s": 1.0} for r in rows])
    _done_job(client, stopped, state="stopped", created=2.0)  # not finished
    _done_job(client, _metrics_run(tmp_path / "runs", "measured", model, rows), created=1.0)
    values = {"data": "fish_care", "iters": 10, "method": "lora", "model": model}
    est = client.post("/api/studio/form", json={"values": values}).get_json()["estimate"]
    assert est["seconds"] == round(est["tokens"] / 500.0, 1) and est["peak_memory_gb"] == 1.5
    assert "run measured" in est["basis"] and "500 tokens/s" in est["basis"]
    other_model = {**values, "model": "smollm2-135m-instruct"}
    est = client.post("/api/studio/form", json={"values": other_model}).get_json()["estimate"]
    assert est["seconds"] is not None and "run other-model" in est["basis"]


def _adapter_run(runs: Path, name: str, model: str, **cfg) -> Path:
    run = _metrics_run(runs, name, model, [], **cfg)
    (run / "adapters.safetensors").write_bytes(b"{}")
    return run


def test_a_run_can_start_from_a_finished_runs_adapter_and_dpo_takes_it_as_reference(client, engine, tmp_path):
    model = str(engine.loaded.source)
    sft = _adapter_run(tmp_path / "runs", "sft", model, num_layers=2, lora_parameters={"rank": 4, "keys": ["q_proj"]})
    offered = client.get("/api/studio/form").get_json()["runs"]
    assert [r["name"] for r in offered] == ["sft"]
    assert offered[0]["method"] == "lora" and offered[0]["lora_parameters"]["rank"] == 4
    values = {"start_from": "sft", "method": "lora", "data": "fish_care", "train_mode": "dpo", "name": "dpo"}
    resp = client.post("/api/studio/form", json={"values": values})
    cfg = resp.get_json()["config"]
    assert resp.status_code == 200, resp.get_json()
    assert cfg["model"] == model and cfg["resume_adapter_file"] == str(sft / "adapters.safetensors")
    assert cfg["reference_adapter_file"] == str(sft / "adapters.safetensors")
    assert (
        cfg["num_layers"] == 2 and cfg["lora_parameters"]["rank"] == 4 and cfg["lora_parameters"]["keys"] == ["q_proj"]
    )
    args = cli.build_parser().parse_args(["train", *resp.get_json()["argv"]])
    assert config_mod.from_cli(args.config, config_mod.flags_of(args), args.set or []).to_dict() == cfg
    # SFT again from it (no reference), with a scale of its own; the shapes stay the run's.
    again = {"start_from": "sft", "data": "fish_care", "lora_parameters": {"scale": 5.0}}
    cfg = client.post("/api/studio/form", json={"values": again}).get_json()["config"]
    assert cfg["reference_adapter_file"] is None and cfg["lora_parameters"]["scale"] == 5.0
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["rank"] == 4


@pytest.mark.parametrize(
    "values, words",
    [
        ({"start_from": "../sft"}, "key 'start_from' must be a name"),
        ({"start_from": "/etc"}, "key 'start_from' must be a name"),
        ({"start_from": "nope"}, "key 'start_from' must name a run of"),
        ({"start_from": "no-adapter"}, "key 'start_from' must name a run of"),
        ({"start_from": "sft", "lora_parameters": {"rank": 16}}, "'lora_parameters.rank' is set by start_from"),
        ({"start_from": "sft", "num_layers": 4}, "'num_layers' is set by start_from"),
        ({"start_from": "sft", "method": "dora"}, "'method' is set by start_from"),
        ({"start_from": "sft", "model": "smollm2-135m-instruct"}, "'model' is set by start_from"),
        ({"resume_adapter_file": "/etc/passwd"}, "'resume_adapter_file' is set by the form"),
        ({"train_mode": "dpo", "reference_adapter_file": "../../etc"}, "reference_adapter_file"),
    ],
)
def test_start_from_names_only_a_run_with_an_adapter_and_keeps_its_shapes(client, engine, tmp_path, values, words):
    _adapter_run(tmp_path / "runs", "sft", str(engine.loaded.source), num_layers=2)
    _metrics_run(tmp_path / "runs", "no-adapter", str(engine.loaded.source), [])
    resp = client.post("/api/studio/form", json={"values": {"data": "fish_care", **values}})
    assert resp.status_code == 400 and words in resp.get_json()["error"], resp.get_json()


def test_the_runs_page_says_the_studios_word_for_a_runs_state(client, engine, tmp_path):
    model = str(engine.loaded.source)
    rows = [{"step": s, "loss": 1.0} for s in range(1, 5)]
    _metrics_run(tmp_path / "runs", "finished", model, rows)  # 4 of 4 steps, no job: done
    _metrics_run(tmp_path / "runs", "half", model, rows[:2])  # written just now: running
    _done_job(client, _metrics_run(tmp_path / "runs", "by-job", model, rows[:2]), state="stopped")
    _done_job(client, _metrics_run(tmp_path / "runs", "broke", model, rows[:2]), state="failed")
    got = {r["name"]: (r["status"], r["running"]) for r in client.get("/api/runs").get_json()["runs"]}
    assert got == {
        "finished": ("done", False),
        "half": ("running", True),
        "by-job": ("stopped", False),
        "broke": ("failed", False),
    }
