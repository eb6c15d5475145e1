import json
from pathlib import Path

import pytest

from mlx_ft import data
from mlx_ft.errors import UserError
from tests.conftest import REPO


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_qa_json_array_becomes_chat_with_system(tmp_path):
    src = tmp_path / "fish.json"
    src.write_text(json.dumps([{"question": f"问{i}", "answer": f"答{i}"} for i in range(30)], ensure_ascii=False))
    report = data.prepare([src], tmp_path / "out", opts=data.Options(system="你是专家"))
    assert report.format == "qa"
    assert sum(report.counts.values()) == 30
    assert report.counts["valid"] >= 1 and report.counts["test"] >= 1
    rows = [r for s in data.SPLITS for r in _read(tmp_path / "out" / f"{s}.jsonl")]
    assert {r["messages"][1]["content"] for r in rows} == {f"问{i}" for i in range(30)}
    assert all(r["messages"][0] == {"role": "system", "content": "你是专家"} for r in rows)
    assert all(r["messages"][2]["role"] == "assistant" for r in rows)


def test_io_jsonl_with_instruction(write_jsonl, tmp_path):
    src = write_jsonl("miners.jsonl", [{"input": "m50s 26w 124t gtd 1020u $1020.0",
                                         "output": "MicroBT Whatsminer M50S - 124.0th/t $1020.0"}] * 1
                      + [{"input": f"s19 {i}t", "output": f"Bitmain Antminer S19 - {i}.0th/t"} for i in range(9)])
    data.prepare([src], tmp_path / "out", opts=data.Options(instruction="标准化：\n"), valid=0, test=0)
    rows = _read(tmp_path / "out" / "train.jsonl")
    assert len(rows) == 10
    first = next(r for r in rows if "m50s" in r["messages"][0]["content"])
    assert first["messages"] == [
        {"role": "user", "content": "标准化：\nm50s 26w 124t gtd 1020u $1020.0"},
        {"role": "assistant", "content": "MicroBT Whatsminer M50S - 124.0th/t $1020.0"},
    ]


def test_every_problem_is_reported_with_file_and_line(write_jsonl, tmp_path):
    src = write_jsonl("bad.jsonl", [
        {"question": "ok", "answer": "fine"},
        "{not json",
        {"question": "", "answer": "empty question"},
        {"question": "q", "answer": 3},
        {"foo": "bar"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
    ])
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    problems = err.value.problems
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5", "6", "7"]
    assert all(p.startswith(f"{src}:") for p in problems)
    assert "invalid JSON" in problems[0]
    assert "'question' is empty" in problems[1]
    assert "'answer' must be a string" in problems[2]
    assert "cannot tell the format" in problems[3]
    assert "must end with an assistant message" in problems[4]
    assert "unknown role 'robot'" in problems[5]
    assert not (tmp_path / "out").exists(), "nothing may be written when the data has problems"


def test_json_array_lines_are_the_lines_items_start_on(tmp_path):
    src = tmp_path / "a.json"
    src.write_text('[\n {"question": "a", "answer": "b"},\n {"question": "c",\n  "answer": ""}\n]\n')
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [f"{src}:3: field 'answer' is empty"]


def test_non_utf8_is_reported(tmp_path):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(b'{"question": "ok", "answer": "fine"}\n{"question": "caf\xe9", "answer": "x"}\n')
    with pytest.raises(data.DataError, match=r"latin1.jsonl:2: not UTF-8"):
        data.prepare([src], tmp_path / "out")


def test_skip_invalid_and_duplicates_are_counted(write_jsonl, tmp_path):
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(20)]
    src = write_jsonl("d.jsonl", rows + rows[:5] + [{"question": "q", "answer": ""}])
    report = data.prepare([src], tmp_path / "out", skip_invalid=True)
    assert report.duplicates == 5 and report.skipped == 1
    assert sum(report.counts.values()) == 20


def test_split_is_stable_when_data_is_appended(write_jsonl, tmp_path):
    rows = [{"question": f"question {i}", "answer": f"answer {i}"} for i in range(200)]
    data.prepare([write_jsonl("a.jsonl", rows)], tmp_path / "a")
    data.prepare([write_jsonl("b.jsonl", rows + [{"question": f"new {i}", "answer": "x"} for i in range(50)])],
                 tmp_path / "b")
    for split in data.SPLITS:
        before = {json.dumps(r) for r in _read(tmp_path / "a" / f"{split}.jsonl")}
        after = {json.dumps(r) for r in _read(tmp_path / "b" / f"{split}.jsonl")}
        assert before <= after, f"an example left the {split} split when data was appended"
    assert 10 <= len(_read(tmp_path / "a" / "valid.jsonl")) <= 35


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        data.prepare([tmp_path / "nope.jsonl"], tmp_path / "out")


def test_shipped_fish_care_split_is_what_prepare_makes(tmp_path):
    """The committed data/fish_care/*.jsonl must never drift from its source and recipe."""
    shipped = REPO / "data" / "fish_care"
    recipe = json.loads((shipped / "prepare.json").read_text(encoding="utf-8"))
    assert len(json.loads((shipped / "fish_care.json").read_text(encoding="utf-8"))) >= 100
    data.prepare([REPO / p for p in recipe["inputs"]], tmp_path / "fc", opts=data.Options(system=recipe["system"]),
                 valid=recipe["valid"], test=recipe["test"], seed=recipe["seed"])
    for split in data.SPLITS:
        assert (tmp_path / "fc" / f"{split}.jsonl").read_text() == (shipped / f"{split}.jsonl").read_text()


def test_rewording_the_system_prompt_keeps_every_split(tmp_path):
    src = tmp_path / "qa.json"
    src.write_text(json.dumps([{"question": f"q{i}", "answer": f"a{i}"} for i in range(60)]))
    data.prepare([src], tmp_path / "a", opts=data.Options(system="You help."))
    data.prepare([src], tmp_path / "b", opts=data.Options(system="You are a careful helper."))
    for split in data.SPLITS:
        users = lambda d: sorted(r["messages"][1]["content"] for r in _read(tmp_path / d / f"{split}.jsonl"))
        assert users("a") == users("b")


def test_prepare_leaves_no_temporary_files(tmp_path):
    src = tmp_path / "qa.json"
    src.write_text(json.dumps([{"question": f"q{i}", "answer": "a"} for i in range(10)]))
    data.prepare([src], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "prepare.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
