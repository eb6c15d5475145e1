"""GRPO's rewards: each built-in on crafted answers with values computed by hand, their weighted total, every
build-time refusal as one line, and reward files (loading, their functions, their failures at score time)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from mlx_ft.errors import UserError
from mlx_ft.training import rewards
from mlx_ft.training.rewards import build, describe

MINER_PROMPT = "矿机信息标准化：m50s 26w 124t gtd $1020"
MINER_REFERENCE = "MicroBT Whatsminer M50S - 124.0th/t $1020.0"


def refused(specs: list, **kwargs) -> str:
    """The one line `build` refuses `specs` with."""
    with pytest.raises(UserError) as e:
        build(specs, **kwargs)
    message = str(e.value)
    assert "\n" not in message, message
    return message


def test_exact() -> None:
    r = build([{"name": "exact"}])
    assert r.names == ("exact",) and r.weights == (1.0,)
    assert r.score("p", "  Paris\n", "Paris") == [1.0]
    assert r.score("p", "paris", "Paris") == [0.0]
    assert r.score("p", "Paris", None) == [0.0], "no reference, nothing to match"


def test_fields_with_the_miners_recipe() -> None:
    # The pattern's groups: brand, series, model, hashrate, unit, price: 6 fields.
    r = build([{"name": "fields"}], recipe="miners")
    score = lambda completion: r.score(MINER_PROMPT, completion, MINER_REFERENCE)[0]  # noqa: E731
    assert score(MINER_REFERENCE) == 1.0
    assert score("MicroBT Whatsminer M50S - 124th/t $1020") == 1.0, "124 == 124.0: numbers compare as numbers"
    assert score("MicroBT Whatsminer M50S - 124.0th/t $999.0") == pytest.approx(5 / 6), "price wrong"
    assert score("MicroBT Whatsminer M50S+ - 126.0th/t $1020.0") == pytest.approx(4 / 6), "model, hashrate wrong"
    assert score("Bitmain Antminer S19 - 95.0th/t $1.0") == pytest.approx(1 / 6), "only the unit right"
    assert score("MicroBT Whatsminer M50S") == 0.0, "not the pattern at all"
    assert r.score(MINER_PROMPT, "n/a", "n/a") == [1.0], "a reference off the pattern: exact match"
    assert r.score(MINER_PROMPT, "n/b", "n/a") == [0.0]
    assert r.score(MINER_PROMPT, MINER_REFERENCE, None) == [0.0]
    # A one-task recipe needs no template match: any prompt is that task's.
    assert r.score("m50s 124t", MINER_REFERENCE, MINER_REFERENCE) == [1.0]


def test_fields_with_the_router_recipe_and_a_pattern_option() -> None:
    r = build([{"name": "fields"}], recipe="router")
    assert r.score("类型分类：把数据导出来", "任务处理", "任务处理") == [1.0]
    assert r.score("类型分类：把数据导出来", "问题回答", "任务处理") == [0.0]
    # The answer task has no pattern: exact match.
    assert r.score("回答平台问题：怎么导出？", " 点击导出。\n", "点击导出。") == [1.0]
    assert r.score("回答平台问题：怎么导出？", "不知道", "点击导出。") == [0.0]
    with pytest.raises(UserError, match="not the template of any task of recipe router"):
        r.score("翻译：hello", "x", "x")

    given = build([{"name": "fields", "pattern": r"(?P<city>\w+), (?P<temp>-?\d+)C"}], recipe="router")
    assert given.score("翻译：any prompt", "Oslo, 4C", "Oslo, 4C") == [1.0], "the pattern option wins over the recipe"
    assert given.score("p", "Oslo, 5C", "Oslo, 4C") == [0.5]


def test_choice_with_the_router_recipe() -> None:
    r = build([{"name": "choice"}], recipe="router")
    assert r.labels == {"scene": ("数据平台相关问题", "通用问题", "无关问题"), "type": ("问题回答", "任务处理")}
    prompt = "场景分类：今天天气怎么样"
    assert r.score(prompt, "通用问题\n", "通用问题") == [1.0]
    assert r.score(prompt, "无关问题", "通用问题") == [0.0], "a wrong label"
    assert r.score(prompt, "天气", "通用问题") == [0.0], "no label at all"
    assert r.score("提取数据名称：打开 roads.shp", "roads.shp", "roads.shp") == [1.0], "no labels: exact"

    given = build([{"name": "choice", "labels": ["yes", "no", "yes"]}])
    assert given.labels == {None: ("yes", "no")}
    assert given.score("p", "yes", "yes") == [1.0] and given.score("p", "no", "yes") == [0.0]


@pytest.mark.parametrize(
    "pattern, labels",
    [
        ("(?P<label>问题回答|任务处理)", ("问题回答", "任务处理")),
        ("(?:a|b)", ("a", "b")),
        (r"yes|no|n\.a\.", ("yes", "no", "n.a.")),
        ("solo", ("solo",)),
        (r"(?P<x>\S+)", None),
        ("a|b(c)", None),
        ("(?i)a|b", None),
        ("a||b", None),
        ("(a)|(b)", None),
    ],
)
def test_label_alternations(pattern: str, labels: tuple[str, ...] | None) -> None:
    assert rewards._alternation(re.compile(pattern)) == labels


def test_regex() -> None:
    r = build([{"name": "regex", "pattern": r"\d{3}-\d{4}"}])
    assert r.score("p", " 555-1234\n", None) == [1.0], "stripped; needs no reference"
    assert r.score("p", "555-12345", None) == [0.0], "the whole answer must match"


def test_length() -> None:
    r = build([{"name": "length", "min": 5, "max": 10}])
    assert r.score("p", "abcdefg", None) == [1.0]
    assert r.score("p", "  abcde  ", None) == [1.0], "surrounding whitespace is not counted"
    assert r.score("p", "abc", None) == [pytest.approx(0.8)], "2 short: 1 - 2/10"
    assert r.score("p", "x" * 15, None) == [pytest.approx(0.5)], "5 long: 1 - 5/10"
    assert r.score("p", "x" * 25, None) == [0.0], "15 long: floored at 0"
    assert build([{"name": "length", "max": 4}]).score("p", "", None) == [1.0], "min defaults to 0"


def test_weights_total_and_describe() -> None:
    r = build(
        [
            {"name": "exact", "weight": 2},
            {"name": "length", "max": 10, "weight": 0.1},
            {"name": "regex", "pattern": "[a-z]+", "weight": -0.5},
        ]
    )
    assert r.weights == (2.0, 0.1, -0.5)
    values = r.score("p", "abcdefghijklmno", "abcdefghijklmno")  # exact; 5 too long: 0.5; matches
    assert values == [1.0, pytest.approx(0.5), 1.0]
    assert r.total(values) == pytest.approx(2 * 1.0 + 0.1 * 0.5 - 0.5 * 1.0)
    assert describe(r) == "rewards: exact x2.0 + length x0.1 + regex x-0.5"
    with pytest.raises(ValueError):
        r.total([1.0])


@pytest.mark.parametrize(
    "specs, recipe, expected",
    [
        ([{"name": "exactt"}], None, "rewards[0]: unknown reward 'exactt'; built-in: exact, fields, choice, regex, "),
        ([{"name": "length", "max": 40, "maxx": 3}], None, "rewards[0] (length): unknown option 'maxx'; length takes"),
        ([{"name": "exact", "pattern": "x"}], None, "rewards[0] (exact): unknown option 'pattern'; exact takes only"),
        ([{"name": "exact", "weight": math.nan}], None, "rewards[0] (exact): weight must be a finite number, not nan"),
        ([{"name": "exact", "weight": math.inf}], None, "weight must be a finite number"),
        ([{"name": "exact", "weight": "x"}], None, "rewards[0] (exact): weight must be a finite number, not 'x'"),
        ([{"name": "exact", "weight": True}], None, "weight must be a finite number"),
        ([{"name": "exact"}, {"name": "length"}], None, "rewards[1] (length): max must be a positive integer"),
        ([{"name": "length", "max": 0}], None, "max must be a positive integer"),
        ([{"name": "length", "max": 4.5}], None, "max must be a positive integer"),
        ([{"name": "length", "min": 50, "max": 40}], None, "min must be an integer from 0 to max (40)"),
        ([{"name": "regex"}], None, "rewards[0] (regex): needs a `pattern` option"),
        ([{"name": "regex", "pattern": "("}], None, "rewards[0] (regex): bad pattern: missing ), unterminated"),
        ([{"name": "fields"}], None, "rewards[0] (fields): needs a `pattern` option with named groups, or a recipe"),
        ([{"name": "fields", "pattern": r"\d+"}], None, "rewards[0] (fields): the pattern has no named groups"),
        ([{"name": "choice"}], None, "rewards[0] (choice): needs a `labels` option, or a recipe"),
        ([{"name": "choice"}], "miners", "no task of recipe miners has a pattern that is an alternation of labels"),
        ([{"name": "choice", "labels": []}], None, "labels must be a non-empty list of non-empty strings"),
        ([{"name": "choice", "labels": "yes|no"}], None, "labels must be a non-empty list"),
        ([{"name": "json_schema"}], None, "rewards[0] (json_schema): needs a `schema` option"),
        ([{"name": "json_schema", "schema": {"type": "object"}}], None, "needs the model's tokenizer"),
        ([{"name": "exact"}, {"name": "exact"}], None, "rewards[1] (exact): listed twice"),
        (["exact"], None, "rewards[0] must be a mapping with a name"),
        ([], None, "config key 'rewards' must be a non-empty list"),
        ([{"name": "fields"}], "no-such-recipe", "no recipe at no-such-recipe"),
    ],
)
def test_build_refusals(specs: list, recipe: str | None, expected: str) -> None:
    assert expected in refused(specs, recipe=recipe)


def test_fields_refuses_a_recipe_without_patterns(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("tasks:\n  a: {template: 'A: {input}'}\n  b: {template: 'B: {input}'}\n")
    assert "rewards[0] (fields): no task of recipe" in refused([{"name": "fields"}], recipe=str(tmp_path))


# --- json_schema, with a real tokenizer ------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    from mlx_lm.tokenizer_utils import load

    return load(smollm2_dir)


def test_json_schema(tokenizer) -> None:
    r = build([{"name": "json_schema", "schema": SCHEMA}], tokenizer=tokenizer)
    score = lambda completion: r.score("p", completion, None)[0]  # noqa: E731
    assert score('{"name": "Ann", "age": 3}') == 1.0
    assert score('\n{"age": 3, "name": "Ann", "pet": "cat"}  ') == 1.0, "keys in any order; extra keys allowed"
    assert score("{\n" + " " * 40 + '"name": "Zoë",\n"age": 30\n}') == 1.0, "any whitespace"
    assert score('{"name": "Ann"}') == 0.0, "a required key missing"
    assert score('{"name": "Ann", "age": "3"}') == 0.0, "a string for an integer"
    assert score("Ann, 3") == 0.0, "not JSON"
    assert score('{"name": "Ann", "age": 3') == 0.0, "cut short"


def test_json_schema_refuses_a_bad_schema(tokenizer) -> None:
    message = refused([{"name": "json_schema", "schema": {"type": "objectx"}}], tokenizer=tokenizer)
    assert message.startswith("rewards[0] (json_schema): the json schema cannot be used: "), message


# --- reward files ----------------------------------------------------------------------------------------------

GOOD = """\
import os.path
from os.path import join  # imported into the file: not one of its rewards


def digits(prompt, completion, reference):
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def short(prompt, completion, reference, /):
    return 1 if len(completion) < 5 else 0


def _helper(prompt, completion, reference):
    return 0.5


def two(prompt, completion):
    return 0.0
"""


def write(tmp_path: Path, text: str, name: str = "my_rewards.py") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_reward_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    before = list(sys.path)
    assert rewards.list_functions(path) == ["digits", "short"]
    assert sys.path == before, "the file's folder is on sys.path only while it runs"

    alone = build([{"name": "exact"}], reward_file=path)  # names none of the file's: all of them, after
    assert alone.names == ("exact", "digits", "short") and alone.weights == (1.0, 1.0, 1.0)
    assert alone.score("p", "a1b2", "a1b2") == [1.0, 0.5, 1.0]
    assert describe(alone) == "rewards: exact x1.0 + digits x1.0 + short x1.0"

    chosen = build([{"name": "short", "weight": 2}, {"name": "length", "max": 4}], reward_file=path)
    assert chosen.names == ("short", "length") and chosen.score("p", "123456", None) == [0.0, 0.5]

    assert "rewards[0] (short): unknown option 'max'; short takes only weight" in refused(
        [{"name": "short", "max": 3}], reward_file=path
    )
    assert f"rewards[0]: {path}: `two` is not a reward: it must take exactly" in refused(
        [{"name": "two"}], reward_file=path
    )
    assert refused([{"name": "join"}], reward_file=path) == (
        "rewards[0]: unknown reward 'join'; built-in: exact, fields, choice, regex, json_schema, length; or a "
        f"function of {path} (digits, short)"
    )


def test_reward_file_load_errors(tmp_path: Path) -> None:
    syntax = write(tmp_path, "def ok(p, c, r):\n    return 1\n\ndef bad(:\n", "syntax.py")
    assert refused([], reward_file=syntax).startswith(f"{syntax}:4: syntax error: ")

    crash = write(tmp_path, "def ok(p, c, r):\n    return 1\nx = 1 / 0\n", "crash.py")
    assert refused([], reward_file=crash) == (
        f"{crash}:3: running the reward file raised ZeroDivisionError: division by zero"
    )
    none = write(tmp_path, "from os.path import join\n\ndef _private(p, c, r):\n    return 1\n", "none.py")
    assert refused([], reward_file=none).startswith(f"reward_file {none}: no reward in it")
    clash = write(tmp_path, "def exact(p, c, r):\n    return 1\n", "clash.py")
    assert "function `exact` has a built-in reward's name" in refused([], reward_file=clash)
    missing = str(tmp_path / "missing.py")
    assert refused([{"name": "exact"}], reward_file=missing) == f"reward_file {missing}: no such file"


@pytest.mark.parametrize(
    "body, said",
    [
        ("return 1 / 0", "raised ZeroDivisionError: division by zero (prompt 'what is 1/0? Answer with…')"),
        ("raise ValueError('bad\\nsecond line')", "raised ValueError: bad (prompt "),
        ("return 'x'", "returned 'x' (str), not a finite number (prompt "),
        ("return float('nan')", "returned nan (float), not a finite number"),
        ("return True", "returned True (bool), not a finite number"),
        ("return None", "returned None (NoneType), not a finite number"),
    ],
)
def test_reward_file_failures_at_score_time(tmp_path: Path, body: str, said: str) -> None:
    path = write(tmp_path, f"def judge(prompt, completion, reference):\n    {body}\n")
    r = build([], reward_file=path)
    with pytest.raises(UserError) as e:
        r.score("what is 1/0? Answer with a number", "1", "1")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: reward `judge` {said}"), message


def test_reward_file_numbers(tmp_path: Path) -> None:
    """Any finite real number will do (numpy's too); the values come back as floats."""
    path = write(tmp_path, "import numpy as np\n\ndef judge(p, c, r):\n    return np.float32(0.25) + len(c)\n")
    values = build([], reward_file=path).score("p", "ab", None)
    assert values == [2.25] and type(values[0]) is float
