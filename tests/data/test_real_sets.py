"""The hand-written held-out sets (data/miners/heldout/real_listings.jsonl, data/router/heldout/real_questions.jsonl):
they load, their answers follow the recipes, none of their inputs is in the training data, and a recipe's data
folder never offers them for training (the studio prepares every .jsonl file directly in data/<recipe>/)."""

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

from mlx_ft.data import recipes
from tests.conftest import REPO

MINERS = REPO / "data/miners"
ROUTER = REPO / "data/router"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _catalogue() -> dict:
    """The generator's catalogue (model -> Miner); no listing is generated here."""
    spec = importlib.util.spec_from_file_location("miners_generate", MINERS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return {m.model: m for m in module.MINERS}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _numbers(text: str) -> set[float]:
    """The numbers a reader sees in a listing: `2,850` is 2850, `1.2k` 1200 and `9.5G` (megahashes) 9500."""
    out = set()
    for m in re.finditer(r"(\d+(?:\.\d+)?)\s*([kg])?", text.replace(",", ""), re.I):
        out.add(float(m.group(1)) * (1000 if m.group(2) else 1))
    return out


def test_real_listings_follow_the_recipe_and_the_catalogue():
    rows = _rows(MINERS / "heldout" / "real_listings.jsonl")
    assert len(rows) == 120
    task = recipes.load("miners").task(None)
    catalogue = _catalogue()
    models = Counter()
    for r in rows:
        assert set(r) == {"input", "output"}, r
        f = task.fields(r["output"])
        assert f is not None, r
        m = catalogue.get(f["model"])
        assert m is not None, r
        assert (f["brand"], f["series"], f["unit"]) == (m.brand, m.series, m.unit), r
        assert f["hashrate"] in m.rates, r
        assert r["output"] == f"{m.brand} {m.series} {m.model} - {f['hashrate']:.1f}{m.unit}/t ${f['price']:.1f}", r
        assert {f["hashrate"], f["price"]} <= _numbers(r["input"]), r
        models[m.model] += 1
    assert len(models) == len(catalogue), set(catalogue) - set(models)
    assert len({r["input"] for r in rows}) == len(rows)


def test_real_listings_are_not_in_the_training_data():
    train = {_norm(r["input"]) for r in _rows(MINERS / "listings.jsonl")}
    held_out = [r["input"] for r in _rows(MINERS / "heldout" / "real_listings.jsonl")]
    assert not [x for x in held_out if _norm(x) in train]


def test_real_questions_use_the_router_labels():
    rows = _rows(ROUTER / "heldout" / "real_questions.jsonl")
    router = recipes.load("router")
    assert Counter(r["task"] for r in rows) == {"scene": 30, "type": 30}
    for r in rows:
        assert set(r) == {"task", "input", "output", "group"}, r
        assert router.task(r["task"]).fields(r["output"]) is not None, r
        assert r["input"].strip(), r
    labels = Counter((r["task"], r["output"]) for r in rows)
    assert labels[("scene", "数据平台相关问题")] and labels[("scene", "通用问题")] and labels[("scene", "无关问题")]
    assert labels[("type", "问题回答")] and labels[("type", "任务处理")]
    assert len({r["group"] for r in rows}) == len({r["input"] for r in rows}) == len(rows)


def test_real_questions_are_not_in_the_training_data():
    train = {_norm(r["input"]) for r in _rows(ROUTER / "router.jsonl")}
    held_out = [r["input"] for r in _rows(ROUTER / "heldout" / "real_questions.jsonl")]
    assert not [x for x in held_out if _norm(x) in train]


def test_held_out_files_are_not_where_a_recipe_takes_its_training_files():
    for folder in (MINERS, ROUTER):
        assert not any("real" in p.name for p in folder.glob("*.jsonl")), folder
