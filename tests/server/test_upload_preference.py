"""Uploading a real-sized preference set through the studio's data API (a generated one in the shape of
LLaMA-Factory's dpo_en_demo.json, tests/data/dpo_demo.py): long pairs are stored with notes, named by the user's
file and record, with `fixes` that the upload then honours; what it counts is what training does; the page's
words; and the preview of a pair showing both answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_ft import chat_template, data
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.state import ServeConfig
from mlx_ft.training.batches import TokenizedPairs
from tests.data import dpo_demo
from tests.server.test_studio_data import _jsonl, _stored, _upload

LIMIT = 512
PAIRS = [
    {"prompt": f"Is {thing} {what}?", "chosen": f"Yes, {thing} is {what}.", "rejected": f"No idea about {thing}."}
    for thing, what in [("the sea", "salty"), ("fire", "hot"), ("snow", "white"), ("ice", "cold")] * 3
]


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir), adapter=False))


@pytest.fixture
def client(engine, tmp_path):
    cfg = ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", data_dir=tmp_path / "data")
    cfg.models_dir = tmp_path / "models"
    return create_app(cfg, engine).test_client()


@pytest.fixture(scope="module")
def demo() -> list[tuple[str, bytes]]:
    info = json.dumps(dpo_demo.ENTRY, indent=2).encode()
    return [("dataset_info.json", info), ("dpo_en_demo.json", dpo_demo.dump(dpo_demo.records()).encode())]


def _taken(resp) -> dict:
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["dataset"]


def _folder(client, name: str) -> Path:
    return Path(client.application.extensions["mlx_ft"].config.data_dir) / name


def test_a_long_preference_set_is_stored_with_its_long_pairs_named_and_fixes_offered(client, demo, engine):
    got = _taken(_upload(client, demo, name="dpo", max_seq_length=LIMIT))
    stats, long = got["stats"], got["long"]
    assert got["stored"] and got["format"] == "preference" and sum(got["splits"].values()) == 300
    left_out = [x for x in long if x["fate"] == "left_out"]
    assert len(left_out) == stats["left_out"] > 50 and len(long) == stats["over_max_seq_length"]
    # Named by the user's file and the line its record starts on; never the scratch folder or a prepared split.
    lines = dpo_demo.dump(dpo_demo.records()).splitlines()
    assert all(x["where"].startswith("dpo_en_demo.json:") and x["tokens"] > LIMIT + 1 for x in long)
    assert all(lines[int(x["where"].split(":")[1]) - 1] == "  {" for x in long)
    assert ".upload-" not in json.dumps(got) and "train.jsonl" not in json.dumps(got)
    assert any(f"{len(left_out)} pairs are longer than max_seq_length {LIMIT}" in n for n in got["notes"])
    longest = max(x["tokens"] for x in long)
    assert [f["id"] for f in got["fixes"]] == ["raise", "truncate", "skip"]
    raise_, truncate, skip = got["fixes"]
    assert raise_["fields"] == {"max_seq_length": 2048} and 1024 < longest <= 2048
    assert truncate["fields"] == {"truncate": "prompt"} and "start of the prompt" in truncate["label"]
    assert skip["fields"] == {"skip_long": True} and f"Skip the {len(long)} examples" in skip["label"]
    # What the upload counted is what training does with the stored set.
    folder = _folder(client, "dpo")
    pairs = [TokenizedPairs(data.load_split(folder, s), engine.tokenizer, LIMIT, s) for s in data.SPLITS]
    assert sum(p.dropped for p in pairs) == len(left_out) and sum(p.truncated for p in pairs) == len(long)
    assert json.loads((folder / "prepare.json").read_text())["fit"]["truncate"] == "none"


def test_each_fix_sent_back_does_what_its_label_says(client, demo, engine, tmp_path):
    first = _taken(_upload(client, demo, dry_run=1, max_seq_length=LIMIT))
    n_long, fixes = len(first["long"]), {f["id"]: f["fields"] for f in first["fixes"]}

    raised = _taken(_upload(client, demo, dry_run=1, **{"max_seq_length": LIMIT, **fixes["raise"]}))
    assert raised["long"] == [] and raised["fixes"] == [] and raised["stats"]["max_seq_length"] == 2048

    cut = _taken(_upload(client, demo, name="cut", max_seq_length=LIMIT, **fixes["truncate"]))
    assert cut["stats"]["left_out"] == 0 and cut["stats"]["prompt_cut"] == n_long
    assert {x["fate"] for x in cut["long"]} == {"prompt_cut"} and [f["id"] for f in cut["fixes"]] == ["raise", "skip"]
    assert any(f"{n_long} examples are longer" in n and "prompts' start" in n for n in cut["notes"])
    folder = _folder(client, "cut")
    assert json.loads((folder / "prepare.json").read_text())["fit"] == {
        "max_seq_length": LIMIT,
        "truncate": "prompt",
        "skip_long": False,
        "skipped_long": 0,
    }
    pairs = [TokenizedPairs(data.load_split(folder, s), engine.tokenizer, LIMIT, s) for s in data.SPLITS]
    assert sum(p.dropped for p in pairs) == 0 and sum(p.prompt_cut for p in pairs) == n_long, "training cuts so too"

    skipped = _taken(_upload(client, demo, dry_run=1, max_seq_length=LIMIT, skip_long="true"))
    assert skipped["stats"]["skipped_long"] == n_long and sum(skipped["splits"].values()) == 300 - n_long
    assert skipped["stats"]["over_max_seq_length"] == 0 and skipped["fixes"] == []
    assert {x["fate"] for x in skipped["long"]} == {"skipped"}
    assert any(f"skipped {n_long} examples longer than max_seq_length {LIMIT}" in n for n in skipped["notes"])


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"truncate": "middle"}, "field 'truncate' must be one of none, prompt"),
        ({"truncate": "true"}, "field 'truncate' must be one of none, prompt"),
        ({"skip_long": "maybe"}, "field 'skip_long' must be"),
    ],
)
def test_the_fit_fields_are_checked(client, tmp_path, fields, words):
    resp = _upload(client, [("pairs.jsonl", _jsonl(PAIRS))], **fields)
    assert resp.status_code == 400 and words in resp.get_json()["error"], resp.get_json()
    assert _stored(tmp_path) == []
    resp = client.post("/api/studio/datasets", json={"shipped": "fish_care", "skip_long": True})
    assert resp.status_code == 400 and "shipped set is used as it is" in resp.get_json()["error"]


def test_upload_problems_speak_the_pages_words(client, tmp_path):
    resp = _upload(client, [("x.json", b"")])
    assert resp.status_code == 400 and resp.get_json()["error"] == "x.json: the file is empty"
    resp = _upload(client, [("x.json", b"  \n")])
    assert resp.get_json()["problems"] == ["x.json: the file is empty"]
    resp = _upload(client, [("odd.jsonl", _jsonl([{"colour": "red"}]))])
    error = resp.get_json()["error"]
    assert (
        resp.status_code == 400
        and error.startswith("odd.jsonl:1: ")
        and "choose the format in the Format menu" in error
    )
    assert _upload(client, [("x.jsonl", b"")]).get_json()["error"] == "no valid examples in x.jsonl: the file is empty"
    assert _stored(tmp_path) == []
    for url in ("/api/studio/datasets/nope/preview", "/api/studio/datasets/miners/preview"):
        error = client.get(url).get_json()["error"]
        assert "GET " not in error and "POST " not in error and "--" not in error, error


def test_a_pair_preview_shows_both_answers_marked_and_a_chat_preview_keeps_its_shape(client, engine, demo):
    assert _upload(client, [("pairs.jsonl", _jsonl(PAIRS))], name="pairs").status_code == 200
    examples = client.get("/api/studio/datasets/pairs/preview?n=3").get_json()["examples"]
    split = data.load_split(_folder(client, "pairs"), "train")
    hf = chat_template.hf_tokenizer(engine.tokenizer)
    for shown, ex in zip(examples, split):
        assert set(shown) == {"where", "segments", "truncated", "pair"} and set(shown["pair"]) == {
            "prompt",
            "chosen",
            "rejected",
        }
        (chosen, rejected) = TokenizedPairs([ex], engine.tokenizer, 2048, "t").items[0]
        pair = shown["pair"]
        for side, (ids, mask) in (("chosen", chosen), ("rejected", rejected)):
            runs = pair["prompt"] + pair[side]
            assert "".join(r["text"] for r in runs) == hf.decode(ids)
            learned = "".join(r["text"] for r in runs if r["learned"])
            assert learned == hf.decode([i for i, m in zip(ids[1:], mask[1:]) if m])
        assert not any(r["learned"] for r in pair["prompt"]) and ex.messages[-2]["content"] in pair["prompt"][0]["text"]
        assert ex.messages[-1]["content"] in "".join(r["text"] for r in pair["chosen"] if r["learned"])
        assert ex.rejected["content"] in "".join(r["text"] for r in pair["rejected"] if r["learned"])
        assert shown["segments"] == _chosen_runs(pair), "`segments` stays the chosen side whole"

    # A pair training leaves out is shown whole, nothing learned, and says so.
    assert _upload(client, demo, name="dpo", max_seq_length=LIMIT).status_code == 200
    shown = client.get(f"/api/studio/datasets/dpo/preview?n=20&max_seq_length={LIMIT}").get_json()["examples"]
    out = [x for x in shown if x.get("left_out")]
    assert out and all(x["truncated"] and "pair" in x for x in out)
    assert not any(r["learned"] for x in out for side in x["pair"].values() for r in side)

    assert _upload(client, [("qa.jsonl", _jsonl([{"question": "Hi?", "answer": "Hello."}] * 1))], name="qa")
    (chat,) = client.get("/api/studio/datasets/qa/preview?n=1").get_json()["examples"]
    assert set(chat) == {"where", "segments", "truncated"}


def _chosen_runs(pair: dict) -> list[dict]:
    """The prompt's and the chosen answer's runs joined back into one run list (a run may span the seam)."""
    runs: list[dict] = []
    for r in pair["prompt"] + pair["chosen"]:
        if runs and runs[-1]["learned"] == r["learned"]:
            runs[-1] = {"text": runs[-1]["text"] + r["text"], "learned": r["learned"]}
        else:
            runs.append(dict(r))
    return runs
