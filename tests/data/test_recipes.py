"""Recipes: task templates as the one source of the prompt wording, grouped splits, and the shipped recipes' data."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_ft import cli, data
from mlx_ft.data import recipes
from mlx_ft.errors import UserError
from tests.conftest import REPO


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shipped_miner_recipe_wraps_listings_and_parses_answers():
    recipe = recipes.load("miners")
    task = recipe.task(None)  # one task: no name needed
    listing = "m50s 26w 124t gtd 1020u $1020.0"
    assert task.render(listing) == "矿机信息标准化：" + listing
    assert task.fields("MicroBT Whatsminer M50S - 124.0th/t $1020.0") == {
        "brand": "MicroBT",
        "series": "Whatsminer",
        "model": "M50S",
        "hashrate": 124.0,
        "unit": "th",
        "price": 1020.0,
    }
    assert task.fields("Bitmain Antminer S19j Pro - 104.0th/t $1300.5")["model"] == "S19j Pro"
    assert task.fields("sorry, I cannot") is None


def test_a_template_with_braces_is_not_a_format_string(tmp_path):
    (tmp_path / "recipe.yaml").write_text('tasks:\n  t:\n    template: "JSON {\\"a\\": 1} then {input} {x}"\n')
    assert recipes.load(tmp_path).task("t").render("in") == 'JSON {"a": 1} then in {x}'


@pytest.mark.parametrize(
    "body, message",
    [
        ("tasks: {}", "at least one task"),
        ("tasks:\n  t:\n    template: no placeholder", "exactly once"),
        ("tasks:\n  t:\n    template: '{input}'\n    pattern: '(unclosed'", "bad pattern"),
        ("tasks:\n  t:\n    template: '{input}'\n    max_token: 5", "unknown keys max_token"),
        ("tasks: [", "not valid YAML"),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, body, message):
    (tmp_path / "recipe.yaml").write_text(body)
    with pytest.raises(UserError, match=re.escape(message)):
        recipes.load(tmp_path)
    with pytest.raises(UserError, match="no recipe at"):
        recipes.load(tmp_path / "nowhere")


def test_prepare_renders_each_task_with_its_template_and_names_bad_lines(write_jsonl, tmp_path):
    src = write_jsonl(
        "raw.jsonl",
        [
            {"task": "scene", "input": "明天会下雨吗？", "output": "无关问题"},
            {"task": "extract", "input": "我有一批西安市地类图斑的数据，怎么进行发服务", "output": "西安市地类图斑"},
        ],
    )
    router = recipes.load("router")
    assert (
        cli.main(
            [
                "prepare",
                str(src),
                "--recipe",
                "router",
                "--out",
                str(tmp_path / "d"),
                "--valid",
                "0",
                "--test",
                "0",
                "--no-stats",
            ]
        )
        == 0
    )
    rows = _rows(tmp_path / "d" / "train.jsonl")
    assert [r["messages"][0]["content"] for r in rows] == [
        router.task("scene").render("明天会下雨吗？"),
        router.task("extract").render("我有一批西安市地类图斑的数据，怎么进行发服务"),
    ]
    assert [r["task"] for r in rows] == ["scene", "extract"]
    assert json.loads((tmp_path / "d" / "prepare.json").read_text())["recipe"].endswith("recipe.yaml")

    bad = write_jsonl(
        "bad.jsonl",
        [
            {"task": "scene", "input": "a", "output": "b"},
            {"task": "nope", "input": "a", "output": "b"},
            {"input": "no task", "output": "b"},
        ],
    )
    with pytest.raises(data.DataError) as e:
        data.prepare([bad], tmp_path / "e", opts=data.Options(recipe=router))
    assert [line.split(": ", 1)[0] for line in e.value.problems] == [f"{bad}:2", f"{bad}:3"]
    assert "unknown task 'nope'" in e.value.problems[0] and "several" in e.value.problems[1]
    assert not (tmp_path / "e").exists()
    with pytest.raises(UserError, match="--instruction and --recipe"):
        cli._cmd_prepare(
            cli.build_parser().parse_args(
                ["prepare", str(src), "--out", "o", "--recipe", "router", "--instruction", "x"]
            )
        )


def test_group_field_keeps_every_group_in_one_split(write_jsonl, tmp_path):
    rows = [
        {"input": f"listing {g} v{v}", "output": f"standard {g}", "group": f"g{g}"} for g in range(40) for v in range(3)
    ]
    src = write_jsonl("raw.jsonl", rows)
    report = data.prepare([src], tmp_path / "d", group="group", valid=0.2, test=0.2)
    where = {}
    for split in data.SPLITS:
        for r in _rows(tmp_path / "d" / f"{split}.jsonl"):
            where.setdefault(r["group"], set()).add(split)
    assert len(where) == 40 and all(len(s) == 1 for s in where.values())
    assert all(report.counts[s] % 3 == 0 and report.counts[s] > 0 for s in data.SPLITS)
    # Without grouping the same rows do share groups between splits: the option is what keeps them apart.
    data.prepare([src], tmp_path / "u", valid=0.2, test=0.2, opts=data.Options(keep=("group",)))
    mixed = {}
    for split in data.SPLITS:
        for r in _rows(tmp_path / "u" / f"{split}.jsonl"):
            mixed.setdefault(r["group"], set()).add(split)
    assert any(len(s) > 1 for s in mixed.values())

    src = write_jsonl("nogroup.jsonl", rows[:3] + [{"input": "x", "output": "y"}])
    with pytest.raises(data.DataError, match=r"nogroup.jsonl:4: missing field 'group'"):
        data.prepare([src], tmp_path / "n", group="group")


def test_miner_generator_is_deterministic_and_every_fact_is_in_the_listing(tmp_path):
    out = tmp_path / "listings.jsonl"
    subprocess.run(
        [sys.executable, str(REPO / "data/miners/generate.py"), "--out", str(out)], check=True, capture_output=True
    )
    assert out.read_bytes() == (REPO / "data/miners/listings.jsonl").read_bytes(), "shipped file is regenerated"
    rows = _rows(out)
    task = recipes.load("miners").task(None)
    models = set()
    for r in rows:
        f = task.fields(r["output"])
        assert f is not None, r
        models.add(f["model"])
        digits = re.findall(r"\d+(?:\.\d+)?", r["input"])
        assert any(float(d) == float(f["hashrate"]) for d in digits), r
        assert any(float(d) == float(f["price"]) for d in digits), r
        assert r["group"] == f"{f['model']}|{float(f['price']):g}"
    assert len(models) >= 25 and {"S19j Pro", "M30S++", "A1246", "L7", "KS3"} <= models
    noise = " ".join(r["input"] for r in rows)
    for word in ("gtd", "usdt", "现货", "二手", "包邮", "蚂蚁", "神马", "阿瓦隆", "w "):
        assert word in noise.lower(), word


def test_router_data_is_consistent_per_message():
    rows = _rows(REPO / "data/router/router.jsonl")
    assert len(rows) >= 400
    router = recipes.load("router")
    by_group: dict[str, dict[str, dict]] = {}
    for r in rows:
        router.task(r["task"])
        by_group.setdefault(r["group"], {})[r["task"]] = r
    for tasks in by_group.values():
        scene = router.task("scene").fields(tasks["scene"]["output"])["label"]
        kind = tasks.get("type") and router.task("type").fields(tasks["type"]["output"])["label"]
        assert (kind is not None) == (scene == "数据平台相关问题")
        assert ("answer" in tasks) == (kind == "问题回答") and ("extract" in tasks) == (kind == "任务处理")
        if "extract" in tasks:
            assert tasks["extract"]["output"] in tasks["extract"]["input"]
