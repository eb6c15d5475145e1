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
    src = write_jsonl(
        "miners.jsonl",
        [{"input": "m50s 26w 124t gtd 1020u $1020.0", "output": "MicroBT Whatsminer M50S - 124.0th/t $1020.0"}] * 1
        + [{"input": f"s19 {i}t", "output": f"Bitmain Antminer S19 - {i}.0th/t"} for i in range(9)],
    )
    data.prepare([src], tmp_path / "out", opts=data.Options(instruction="标准化：\n"), valid=0, test=0)
    rows = _read(tmp_path / "out" / "train.jsonl")
    assert len(rows) == 10
    first = next(r for r in rows if "m50s" in r["messages"][0]["content"])
    assert first["messages"] == [
        {"role": "user", "content": "标准化：\nm50s 26w 124t gtd 1020u $1020.0"},
        {"role": "assistant", "content": "MicroBT Whatsminer M50S - 124.0th/t $1020.0"},
    ]


def test_every_problem_is_reported_with_file_and_line(write_jsonl, tmp_path):
    src = write_jsonl(
        "bad.jsonl",
        [
            {"question": "ok", "answer": "fine"},
            "{not json",
            {"question": "", "answer": "empty question"},
            {"question": "q", "answer": 3},
            {"foo": "bar"},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        ],
    )
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
    data.prepare(
        [write_jsonl("b.jsonl", rows + [{"question": f"new {i}", "answer": "x"} for i in range(50)])], tmp_path / "b"
    )
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
    data.prepare(
        [REPO / p for p in recipe["inputs"]],
        tmp_path / "fc",
        opts=data.Options(system=recipe["system"]),
        valid=recipe["valid"],
        test=recipe["test"],
        seed=recipe["seed"],
    )
    for split in data.SPLITS:
        assert (tmp_path / "fc" / f"{split}.jsonl").read_text() == (shipped / f"{split}.jsonl").read_text()


def test_rewording_the_system_prompt_keeps_every_split(tmp_path):
    src = tmp_path / "qa.json"
    src.write_text(json.dumps([{"question": f"q{i}", "answer": f"a{i}"} for i in range(60)]))
    data.prepare([src], tmp_path / "a", opts=data.Options(system="You help."))
    data.prepare([src], tmp_path / "b", opts=data.Options(system="You are a careful helper."))
    for split in data.SPLITS:

        def users(d: str, split: str = split) -> list[str]:
            return sorted(r["messages"][1]["content"] for r in _read(tmp_path / d / f"{split}.jsonl"))

        assert users("a") == users("b")


def test_prepare_leaves_no_temporary_files(tmp_path):
    src = tmp_path / "qa.json"
    src.write_text(json.dumps([{"question": f"q{i}", "answer": "a"} for i in range(10)]))
    data.prepare([src], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "prepare.json",
        "test.jsonl",
        "train.jsonl",
        "valid.jsonl",
    ]


# ------------------------------------------------------------------------------------------------ more formats


def _all_rows(out: Path) -> list[dict]:
    return [r for s in data.SPLITS for r in _read(out / f"{s}.jsonl")]


def test_alpaca_joins_instruction_and_input_and_keeps_history(write_jsonl, tmp_path):
    src = write_jsonl(
        "alpaca.jsonl",
        [
            {
                "instruction": "Translate to French",
                "input": "cat",
                "output": "chat",
                "system": "You translate.",
                "history": [["Translate to French: dog", "chien"]],
            },
            {"instruction": "Name a colour", "input": "", "output": "blue"},
        ],
    )
    report = data.prepare([src], tmp_path / "out", valid=0, test=0, opts=data.Options(system="Default."))
    assert report.format == "alpaca", "alpaca records have input/output too, but are not io"
    rows = {r["messages"][-1]["content"]: r["messages"] for r in _read(tmp_path / "out" / "train.jsonl")}
    assert rows["chat"] == [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate to French: dog"},
        {"role": "assistant", "content": "chien"},
        {"role": "user", "content": "Translate to French\ncat"},
        {"role": "assistant", "content": "chat"},
    ]
    assert rows["blue"] == [
        {"role": "system", "content": "Default."},
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "blue"},
    ]


def test_alpaca_problems_name_the_field(write_jsonl, tmp_path):
    src = write_jsonl(
        "a.jsonl",
        [
            {"instruction": "x", "output": "y", "history": [["only one"]]},
            {"instruction": "x", "output": "y", "input": 3},
            {"instruction": " ", "output": "y"},
        ],
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [
        f"{src}:1: history[0] must be a [prompt, answer] pair of non-empty strings",
        f"{src}:2: field 'input' must be a string, not int",
        f"{src}:3: field 'instruction' is empty",
    ]


def test_sharegpt_roles_tools_and_system(write_jsonl, tmp_path):
    src = write_jsonl(
        "sg.jsonl",
        [
            {
                "system": "You call tools.",
                "tools": '[{"name": "weather", "parameters": {"type": "object"}}]',
                "conversations": [
                    {"from": "human", "value": "weather in Paris?"},
                    {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                    {"from": "observation", "value": "18C, sunny"},
                    {"from": "gpt", "value": "18C and sunny."},
                ],
            },
            {
                "conversations": [
                    {"from": "system", "value": "Own system."},
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                    {"from": "human", "value": "time?"},
                    {"from": "function_call", "value": '[{"name": "clock"}, {"name": "date", "arguments": "{}"}]'},
                    {"from": "function", "value": "noon"},
                    {"from": "function", "value": "Monday"},
                    {"from": "gpt", "value": "noon"},
                ]
            },
        ],
    )
    data.prepare([src], tmp_path / "out", valid=0, test=0)
    first, second = sorted(_read(tmp_path / "out" / "train.jsonl"), key=lambda r: len(r["messages"]))
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert first["messages"][0]["content"] == "You call tools."
    # The call and the tools stay structure, in OpenAI's shape (arguments a JSON string), never flattened to text.
    assert first["messages"][2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
    }
    assert first["messages"][3] == {"role": "tool", "content": "18C, sunny"}
    assert first["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    assert [m["role"] for m in second["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert second["messages"][0]["content"] == "Own system."
    assert [c["function"] for c in second["messages"][4]["tool_calls"]] == [
        {"name": "clock", "arguments": "{}"},
        {"name": "date", "arguments": "{}"},
    ]
    assert "tools" not in second


def test_sharegpt_unknown_role_and_bad_order(write_jsonl, tmp_path):
    ok = [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
    src = write_jsonl(
        "sg.jsonl",
        [
            {"conversations": ok + [{"from": "human", "value": "c"}, {"from": "bot", "value": "d"}]},
            {"conversations": ok + [{"from": "human", "value": "c"}]},
            {"conversations": ok + [{"from": "system", "value": "late"}, {"from": "gpt", "value": "x"}]},
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "observation", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ]
            },
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]},
        ],
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    p = err.value.problems
    assert p[0] == (
        f"{src}:1: conversations[3]: unknown role 'bot' (expected one of human, gpt, system, "
        "function_call, observation, function)"
    )
    assert p[1] == f"{src}:2: the conversation must end with an assistant message"
    assert p[2] == f"{src}:3: a system message may only come first"
    assert p[3] == f"{src}:4: a tool message cannot follow a user message"
    assert p[4] == f"{src}:5: conversations[1]: missing field 'value'"


def test_messages_accept_tool_results_after_an_assistant_turn():
    calls = [{"type": "function", "function": {"name": "calc", "arguments": f'{{"x": "{x}"}}'}} for x in ("2+2", "3+3")]
    chat = [
        {"role": "user", "content": "2+2 and 3+3?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "4"},
        {"role": "tool", "content": "6"},
        {"role": "assistant", "content": "4 and 6"},
    ]
    data.check_conversation(chat)  # parallel calls: several tool results in a row
    assert "tool" in data.ROLES
    for bad, msg in [
        (chat[:3], "must end with an assistant message"),
        ([chat[0], chat[2], chat[4]], "a tool message cannot follow a user message"),
        (chat[:3] + [{"role": "user", "content": "?"}, chat[4]], "a user message cannot follow a tool"),
        ([chat[1], chat[4]], "two assistant messages in a row"),
        ([chat[2], chat[4]], "must start with a user message"),
        ([chat[0], {"role": "assistant", "content": "calc"}, *chat[2:]], "must follow an assistant message with tool"),
        ([chat[0], chat[1], {"role": "user", "content": "?"}, chat[4]], "must be followed by their tool results"),
    ]:
        with pytest.raises(ValueError, match=msg):
            data.check_conversation(bad)


def test_text_examples_for_continued_pretraining(write_jsonl, tmp_path):
    docs = [{"text": f"Document number {i} about goldfish."} for i in range(40)]
    src = write_jsonl("c4.jsonl", docs + docs[:3] + [{"text": "  "}])
    report = data.prepare([src], tmp_path / "out", skip_invalid=True, opts=data.Options(system="ignored"))
    assert report.format == "text" and report.duplicates == 3 and report.skipped == 1
    rows = _all_rows(tmp_path / "out")
    assert sorted(r["text"] for r in rows) == sorted(d["text"] for d in docs)
    assert all(set(r) == {"text"} for r in rows)
    assert report.counts["valid"] >= 1 and report.counts["test"] >= 1
    examples = data.load_split(tmp_path / "out", "train")
    assert all(ex.messages == [] and ex.text and ex.where.endswith(f":{i}") for i, ex in enumerate(examples, 1))


def test_text_split_is_stable_when_data_is_appended(write_jsonl, tmp_path):
    docs = [{"text": f"doc {i}"} for i in range(100)]
    data.prepare([write_jsonl("a.jsonl", docs)], tmp_path / "a")
    data.prepare([write_jsonl("b.jsonl", docs + [{"text": f"new {i}"} for i in range(30)])], tmp_path / "b")
    for split in data.SPLITS:
        assert {r["text"] for r in _read(tmp_path / "a" / f"{split}.jsonl")} <= {
            r["text"] for r in _read(tmp_path / "b" / f"{split}.jsonl")
        }


def test_load_split_reads_chat_and_text_lines_and_reports_bad_ones(write_jsonl, tmp_path):
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    write_jsonl("train.jsonl", [chat, {"text": "raw"}])
    examples = data.load_split(tmp_path, "train")
    assert examples == [
        data.Example(f"{tmp_path / 'train.jsonl'}:1", chat["messages"]),
        data.Example(f"{tmp_path / 'train.jsonl'}:2", [], "raw"),
    ]
    assert [ex.row() for ex in examples] == [chat, {"text": "raw"}]
    write_jsonl("valid.jsonl", [{"text": ""}, {"messages": [{"role": "user", "content": "q"}]}, ["x"]])
    with pytest.raises(data.DataError) as err:
        data.load_split(tmp_path, "valid")
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "field 'text' is empty",
        "the conversation must end with an assistant message",
        "an example must be a JSON object",
    ]


def test_csv_header_gives_keys_and_problems_name_source_lines(tmp_path):
    src = tmp_path / "qa.csv"
    src.write_bytes('\ufeffquestion,answer\n"How often, really?","Twice\na day"\n\nq2,\nq3,a3,extra\nq4,a4\n'.encode())
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [f"{src}:5: field 'answer' is empty", f"{src}:6: 3 fields, but the header has 2"]
    report = data.prepare([src], tmp_path / "out", skip_invalid=True, valid=0, test=0)
    assert report.format == "qa" and report.skipped == 2
    rows = _read(tmp_path / "out" / "train.jsonl")
    assert rows[0]["messages"] == [
        {"role": "user", "content": "How often, really?"},
        {"role": "assistant", "content": "Twice\na day"},
    ]
    assert len(rows) == 2


def test_csv_alpaca_with_empty_optional_cells(tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("instruction,input,output,system\nSum,1 2,3,\nHi,,Hello,Be brief.\n", encoding="utf-8")
    data.prepare([src], tmp_path / "out", valid=0, test=0)
    assert [r["messages"] for r in _read(tmp_path / "out" / "train.jsonl")] == [
        [{"role": "user", "content": "Sum\n1 2"}, {"role": "assistant", "content": "3"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
    ]


def test_csv_non_utf8_and_unknown_file_types(tmp_path):
    src = tmp_path / "latin1.csv"
    src.write_bytes(b"question,answer\nok,fine\ncaf\xe9,x\n")
    with pytest.raises(data.DataError, match=r"latin1.csv:3: not UTF-8 text"):
        data.prepare([src], tmp_path / "out")
    (tmp_path / "notes.xml").write_text("<hi/>")
    with pytest.raises(UserError, match=r"notes.xml: unsupported file type '.xml'; use .json, .jsonl, .csv, .txt"):
        data.prepare([tmp_path / "notes.xml"], tmp_path / "out")


@pytest.mark.parametrize(
    "text, line, msg",
    [
        ('[\n {"question": "a", "answer": "b"},\n ,\n {"question": "c", "answer": "d"}\n]', 3, "Expecting value"),
        ('[\n {"question": "a", "answer": "b"}\n {"question": "c", "answer": "d"}\n]', 3, "Expecting ',' delimiter"),
        ('[ ,\n {"question": "a", "answer": "b"}\n]', 1, "Expecting value"),
        ('[\n {"question": "a", "answer": "b"},\n {"question": "c", "answer": "d"},\n]', 4, "Expecting value"),
        ('[\n {"question": "a", "answer": "b"}\n]\n]', 4, "Extra data"),
    ],
)
def test_json_arrays_are_judged_as_strictly_as_json_load(tmp_path, capsys, text, line, msg):
    """A stray, missing or trailing comma is an error at its line (exit 2, nothing written), as json.load says."""
    from mlx_ft import cli

    src = tmp_path / "bad.json"
    src.write_text(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert cli.main(["prepare", str(src), "--out", str(tmp_path / "out"), "--no-stats"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlx_ft: error: {src}:{line}: invalid JSON: {msg}") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_csv_header_that_fits_no_format_is_one_error_at_line_1(tmp_path):
    src = tmp_path / "qa.csv"
    src.write_text("question,reply\n" + "".join(f"q{i},a{i}\n" for i in range(50)), encoding="utf-8")
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    [problem] = err.value.problems
    assert problem.startswith(f"{src}:1: cannot tell the format from the header's columns (question, reply): ")
    assert "qa needs question + answer" in problem and "io needs input + output" in problem
    assert "alpaca needs instruction + output" in problem and "--format" in problem


def test_jsonl_records_with_the_same_unknown_keys_are_reported_once(write_jsonl, tmp_path):
    src = write_jsonl(
        "odd.jsonl",
        [{"question": "ok", "answer": "fine"}]
        + [{"prompt": f"p{i}", "completion": "c"} for i in range(30)]
        + [{"q": "x"}],
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [
        f"{src}:2: cannot tell the format of a record with keys (prompt, completion): {data.format_needs()}; "
        "rename them, or name the format with --format; and 29 more lines like it",
        f"{src}:32: cannot tell the format of a record with keys (q): {data.format_needs()}; "
        "rename them, or name the format with --format",
    ]
    report = data.prepare([src], tmp_path / "out", skip_invalid=True, valid=0, test=0)
    assert report.skipped == 31 and report.counts["train"] == 1


def test_txt_files_are_text_examples_one_per_line(tmp_path):
    src = tmp_path / "wiki_demo.txt"
    src.write_text(
        "Anarchism is a political philosophy.\r\n\n   \nAutism is a condition.\nThird document.", encoding="utf-8"
    )
    report = data.prepare([src], tmp_path / "out", valid=0, test=0)
    assert report.format == "text" and report.counts["train"] == 3
    assert _read(tmp_path / "out" / "train.jsonl") == [
        {"text": "Anarchism is a political philosophy."},
        {"text": "Autism is a condition."},
        {"text": "Third document."},
    ]
    # and as LLaMA-Factory names it in its dataset_info.json
    info = _dataset_info(tmp_path, {"wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}}})
    report = data.prepare([info], tmp_path / "lf", valid=0, test=0)
    assert report.format == "text" and _read(tmp_path / "lf" / "train.jsonl")[1] == {"text": "Autism is a condition."}
    (tmp_path / "latin1.txt").write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(data.DataError, match=r"latin1.txt:2: not UTF-8 text"):
        data.prepare([tmp_path / "latin1.txt"], tmp_path / "out")


def test_several_files_of_different_formats(write_jsonl, tmp_path):
    a = write_jsonl("a.jsonl", [{"question": "q", "answer": "a"}])
    b = tmp_path / "b.json"
    b.write_text(json.dumps([{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]}]))
    report = data.prepare([a, b], tmp_path / "out", valid=0, test=0)
    assert report.format == "messages+qa" and report.counts["train"] == 2


# ------------------------------------------------------------------------------------------- dataset_info.json


def _dataset_info(folder: Path, entries: dict) -> Path:
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return path


def test_dataset_info_maps_columns_and_tags(write_jsonl, tmp_path):
    write_jsonl("orca.jsonl", [{"question": "2+2?", "response": "4", "system_prompt": "Be exact."}])
    write_jsonl(
        "chat.jsonl",
        [
            {
                "dialog": [
                    {"who": "me", "say": "hi"},
                    {"who": "bot", "say": "hello"},
                    {"who": "me", "say": "temp?"},
                    {"who": "fn", "say": '{"name": "get_temp", "arguments": {}}'},
                    {"who": "result", "say": "21"},
                    {"who": "bot", "say": "21C"},
                ]
            }
        ],
    )
    write_jsonl("c4.jsonl", [{"content": "Plain text for pre-training."}])
    (tmp_path / "identity.json").write_text(
        json.dumps([{"instruction": "Who are you?", "input": "", "output": "A fish expert."}])
    )
    info = _dataset_info(
        tmp_path,
        {
            "orca": {
                "file_name": "orca.jsonl",
                "columns": {"prompt": "question", "response": "response", "system": "system_prompt"},
            },
            "chat": {
                "file_name": "chat.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "dialog"},
                "tags": {
                    "role_tag": "who",
                    "content_tag": "say",
                    "user_tag": "me",
                    "assistant_tag": "bot",
                    "function_tag": "fn",
                    "observation_tag": "result",
                },
            },
            "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "content"}},
            "identity": {"file_name": "identity.json"},
            "remote": {"hf_hub_url": "someone/data"},
        },
    )
    report = data.prepare([info], tmp_path / "out", valid=0, test=0)
    assert report.format == "alpaca+sharegpt+text"
    rows = _read(tmp_path / "out" / "train.jsonl")
    assert {"text": "Plain text for pre-training."} in rows
    assert {
        "messages": [
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    } in rows
    assert {
        "messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A fish expert."}]
    } in rows
    chat = next(r for r in rows if len(r.get("messages", [])) == 6)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    recipe = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert recipe["datasets"] == ["c4", "chat", "identity", "orca"]

    data.prepare([info], tmp_path / "two", datasets=["orca", "identity"], valid=0, test=0)
    assert len(_read(tmp_path / "two" / "train.jsonl")) == 2


def test_dataset_info_problems_are_one_line_each(write_jsonl, tmp_path):
    write_jsonl("d.jsonl", [{"instruction": "a", "output": "b"}])
    info = _dataset_info(
        tmp_path,
        {
            "good": {"file_name": "d.jsonl"},
            "remote": {"hf_hub_url": "someone/data"},
            "prefs": {"file_name": "d.jsonl", "ranking": "yes"},
            "odd": {"file_name": "d.jsonl", "formatting": "sharegpt", "tags": {"speaker_tag": "x"}},
            "pics": {"file_name": "d.jsonl", "columns": {"prompt": "instruction", "images": "images"}},
        },
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([info], tmp_path / "out", datasets=["good", "remote", "prefs", "odd", "pics"])
    assert err.value.problems == [
        f"{info}:5: dataset 'remote': hf_hub_url: only local files (file_name) are supported; download the data first",
        f"{info}:8: dataset 'prefs': 'ranking' must be true or false",
        f"{info}:12: dataset 'odd': tags.speaker_tag is unknown (known: role_tag, content_tag, user_tag, "
        "assistant_tag, observation_tag, function_tag, system_tag)",
        f"{info}:19: dataset 'pics': columns.images: multimodal datasets are not supported",
    ]
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="--dataset nope: no such entry in .*known: good, odd, pics, prefs, remote"):
        data.prepare([info], tmp_path / "out", datasets=["nope"])
    with pytest.raises(UserError, match="--dataset picks entries of a dataset_info.json"):
        data.prepare([tmp_path / "d.jsonl"], tmp_path / "out", datasets=["good"])
    (tmp_path / "remote").mkdir()
    remote_only = _dataset_info(
        tmp_path / "remote",
        {
            "r": {"hf_hub_url": "someone/data"},
            "p": {"file_name": "gone.json"},
            "q": {"file_name": "gone.json", "formatting": "odd"},
        },
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([remote_only], tmp_path / "out")
    assert err.value.problems == [
        f"{remote_only}:1: no entry mlx_ft can read (a supported kind, with a local file_name)",
        f"{remote_only}:5: dataset 'p': gone.json is not here",
        f"{remote_only}:8: dataset 'q': formatting 'odd' is not one of alpaca, sharegpt",
        f"{remote_only}: 1 hub or script entry (r): only local files are read; download one and name it with file_name",
    ]


def test_a_whole_dataset_info_takes_what_it_can_and_says_what_it_skipped(write_jsonl, tmp_path, capsys):
    """LLaMA-Factory's own data/ folder as a whole: its alpaca, sharegpt tool-call and text sets are read; the
    multimodal, KTO and hub entries are skipped with the reason, one line each; its preference (ranking) sets are
    read as pairs."""
    from mlx_ft import cli

    (tmp_path / "alpaca_demo.json").write_text(
        json.dumps([{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(6)])
    )
    (tmp_path / "glaive_toolcall_demo.json").write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Weather?"},
                        {"from": "function_call", "value": '{"name": "weather"}'},
                        {"from": "observation", "value": '{"t": 21}'},
                        {"from": "gpt", "value": "21C"},
                    ],
                    "tools": "[]",
                }
            ]
        )
    )
    (tmp_path / "wiki_demo.txt").write_text("One document.\nAnother document.\n")
    for name in ("mllm_demo.json", "kto_demo.json"):
        (tmp_path / name).write_text("[]")
    pair = {"conversations": [{"from": "human", "value": "Hi?"}], "chosen": {"from": "gpt", "value": "Hello!"}}
    (tmp_path / "dpo_demo.json").write_text(json.dumps([{**pair, "rejected": {"from": "gpt", "value": "Go away."}}]))
    info = _dataset_info(
        tmp_path,
        {
            "alpaca_demo": {"file_name": "alpaca_demo.json"},
            "alpaca_gpt4_en": {
                "hf_hub_url": "llamafactory/alpaca_gpt4_en",
                "ms_hub_url": "llamafactory/alpaca_gpt4_en",
            },
            "glaive_toolcall_demo": {
                "file_name": "glaive_toolcall_demo.json",
                "formatting": "sharegpt",
                "columns": {"messages": "conversations", "tools": "tools"},
            },
            "mllm_demo": {
                "file_name": "mllm_demo.json",
                "formatting": "sharegpt",
                "columns": {"messages": "messages", "images": "images"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                },
            },
            "dpo_demo": {
                "file_name": "dpo_demo.json",
                "ranking": True,
                "formatting": "sharegpt",
                "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
            },
            "kto_demo": {
                "file_name": "kto_demo.json",
                "formatting": "sharegpt",
                "columns": {"messages": "messages", "kto_tag": "label"},
            },
            "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
            "belle_multiturn": {"script_url": "belle_multiturn", "formatting": "sharegpt"},
        },
    )
    out = tmp_path / "out"
    assert cli.main(["prepare", str(info), "--out", str(out), "--valid", "0", "--test", "0", "--no-stats"]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = info.read_text().splitlines()
    starts = {json.loads(line.split(":")[0]): n for n, line in enumerate(lines, start=1) if line.startswith('  "')}
    at = {name: f"{info}:{starts[name]}" for name in ("mllm_demo", "kto_demo")}
    assert printed[:3] == [
        f"skipped {at['mllm_demo']}: dataset 'mllm_demo': columns.images: multimodal datasets are not supported",
        f"skipped {at['kto_demo']}: dataset 'kto_demo': columns.kto_tag: KTO datasets are not supported",
        f"skipped {info}: 2 hub or script entries (alpaca_gpt4_en, belle_multiturn): only local files are read; "
        "download one and name it with file_name",
    ]
    assert printed[3].startswith(f"{out}: train 10, valid 0, test 0 (alpaca+preference+sharegpt+text)")
    recipe = json.loads((out / "prepare.json").read_text())
    assert recipe["datasets"] == ["alpaca_demo", "dpo_demo", "glaive_toolcall_demo", "wiki_demo"]
    assert len(recipe["datasets_skipped"]) == 3
    # Naming an unsupported entry is still an error, with the reason.
    assert cli.main(["prepare", str(info), "--dataset", "kto_demo", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mlx_ft: error: {at['kto_demo']}: dataset 'kto_demo': columns.kto_tag: KTO datasets are not supported"
    )


def test_dataset_info_records_report_their_own_file(write_jsonl, tmp_path):
    bad = write_jsonl("bad.jsonl", [{"conversations": [{"from": "human", "value": "hi"}]}])
    info = _dataset_info(tmp_path, {"bad": {"file_name": "bad.jsonl", "formatting": "sharegpt"}})
    with pytest.raises(data.DataError) as err:
        data.prepare([info], tmp_path / "out")
    assert err.value.problems == [f"{bad}:1: the conversation must end with an assistant message"]


def _outside(info: Path, name: str, file_name: str) -> str:
    """The refusal of an entry whose file_name leads out of the folder of `info` (entries one a line)."""
    line = next(n for n, text in enumerate(info.read_text().splitlines(), 1) if text.startswith(f'  "{name}"'))
    return (
        f"{info}:{line}: dataset {name!r}: file_name {file_name!r} points outside the folder of dataset_info.json; "
        "put the file beside it"
    )


def test_dataset_info_file_names_stay_in_its_folder_whether_the_outside_file_exists_or_not(tmp_path, capsys):
    """Absolute, `..` and symlinked file_names are refused before anything looks at the file: the same one error
    for an outside file that exists and one that does not (no skipped note that would tell them apart), whether
    --dataset names the entry or not."""
    from mlx_ft import cli

    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("a private note\n")
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "ok.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    (folder / "link.txt").symlink_to(home / "notes.txt")
    (folder / "gone_link.txt").symlink_to(home / "gone.txt")
    (folder / "homedir").symlink_to(home, target_is_directory=True)
    text = {"columns": {"prompt": "text"}}
    entries = {
        "ok": {"file_name": "ok.jsonl"},
        "notes": {"file_name": str(home / "notes.txt"), **text},
        "gone": {"file_name": str(home / "gone.txt"), **text},
        "up": {"file_name": "../home/notes.txt", **text},
        "up_gone": {"file_name": "../home/gone.txt", **text},
        "odd": {"file_name": "../home/notes.txt", "formatting": "odd"},  # broken too: the outside comes first
        "odd_gone": {"file_name": "../home/gone.txt", "formatting": "odd"},
        "link": {"file_name": "link.txt", **text},
        "gone_link": {"file_name": "gone_link.txt", **text},
        "in_linked_dir": {"file_name": "homedir/notes.txt", **text},
    }
    info = folder / "dataset_info.json"
    info.write_text("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()) + "\n}\n")
    refusals = [_outside(info, name, entry["file_name"]) for name, entry in entries.items() if name != "ok"]
    out = tmp_path / "out"

    with pytest.raises(data.DataError) as err:
        data.prepare([info], out)
    assert err.value.problems == refusals
    # An existing outside file and a missing one read the same, but for the entry and file_name they were given.
    assert {r.split(".txt' ", 1)[1] for r in refusals} == {
        "points outside the folder of dataset_info.json; put the file beside it"
    }
    for picked in (["notes"], ["gone"], ["ok"]):  # named or not, an entry reaching outside refuses the file
        with pytest.raises(data.DataError) as err:
            data.prepare([info], out, datasets=picked)
        assert err.value.problems == refusals
    assert cli.main(["prepare", str(info), "--out", str(out), "--no-stats"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"mlx_ft: error: {refusals[0]}", *refusals[1:]]
    assert not out.exists()

    # Inside the folder, symlinks and `..` that stay in it are fine.
    (folder / "sub").mkdir()
    (folder / "alias.jsonl").symlink_to(folder / "ok.jsonl")
    inside = {"ok": {"file_name": "sub/../ok.jsonl"}, "alias": {"file_name": "alias.jsonl"}}
    info.write_text(json.dumps(inside, indent=2))
    report = data.prepare([info], out, valid=0, test=0)
    assert report.counts["train"] == 1 and report.duplicates == 1


def test_json_past_pythons_limits_is_a_file_line_problem(write_jsonl, tmp_path, capsys):
    """Nesting json cannot read (a RecursionError) and numbers longer than Python converts (a ValueError that says
    to call sys.set_int_max_str_digits) are data problems at their line, like any other; a tool or a call's
    arguments nesting past MAX_DEPTH too, so no later walk over them can hit the recursion limit."""
    import sys

    from mlx_ft import cli
    from mlx_ft.data.formats import MAX_DEPTH

    deep, digits = 100_000, sys.get_int_max_str_digits()
    long_number = "9" * (digits + 700)

    def nested(levels: int) -> dict:
        value: dict = {"type": "string"}
        for _ in range(levels):
            value = {"p": value}
        return value

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    call = {**chat, "messages": [chat["messages"][0], {"role": "assistant", "content": "", "tool_calls": []}]}
    call["messages"] += [{"role": "tool", "content": "r"}, {"role": "assistant", "content": "ok"}]

    def with_call(arguments) -> dict:
        msgs = [dict(m) for m in call["messages"]]
        msgs[1]["tool_calls"] = [{"name": "f", "arguments": arguments}]
        return {"messages": msgs}

    src = write_jsonl(
        "deep.jsonl",
        [
            {"question": "q", "answer": "a"},
            "[" * deep + "]" * deep,
            '{"a":' * deep + "1" + "}" * deep,
            '{"question": "q", "answer": "a", "task": ' + long_number + "}",
            {**chat, "tools": "[" * deep + "]" * deep},
            {**chat, "tools": '[{"name": "f", "parameters": {"max": ' + long_number + "}}]"},
            {**chat, "tools": [{"name": "f", "parameters": nested(MAX_DEPTH)}]},
            with_call(nested(MAX_DEPTH + 1)),
            with_call(json.dumps(nested(MAX_DEPTH + 1))),
        ],
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [
        f"{src}:2: JSON nested too deeply to read",
        f"{src}:3: JSON nested too deeply to read",
        f"{src}:4: a number longer than {digits} digits",
        f"{src}:5: field 'tools': JSON nested too deeply to read",
        f"{src}:6: field 'tools': a number longer than {digits} digits",
        f"{src}:7: tools[0] nests deeper than {MAX_DEPTH} levels",
        f"{src}:8: messages[1]: tool_calls.arguments nests deeper than {MAX_DEPTH} levels",
        f"{src}:9: messages[1]: tool_calls.arguments nests deeper than {MAX_DEPTH} levels",
    ]

    # A .json array and a dataset_info.json stop at the item, on its line; the terminal says it on one line.
    items = [json.dumps({"question": "q", "answer": "a"})] * 2
    for name, bad, said in [
        ("deep.json", '{"question": "q", "answer": ' + "[" * deep + "]" * deep + "}", "JSON nested too deeply to read"),
        ("long.json", '{"question": "q", "answer": ' + long_number + "}", f"a number longer than {digits} digits"),
    ]:
        path = tmp_path / name
        path.write_text("[\n" + ",\n".join([*items, bad]) + "\n]\n")
        with pytest.raises(data.DataError) as err:
            data.prepare([path], tmp_path / "out")
        assert err.value.problems == [f"{path}:4: {said}"]
        assert cli.main(["prepare", str(path), "--out", str(tmp_path / "out"), "--no-stats"]) == 2
        assert capsys.readouterr().err == f"mlx_ft: error: {path}:4: {said}\n"
    info = tmp_path / "dataset_info.json"
    info.write_text('{\n  "a": {"file_name": "deep.json"},\n  "b": ' + '{"a":' * deep + "1" + "}" * deep + "\n}\n")
    with pytest.raises(data.DataError) as err:
        data.prepare([info], tmp_path / "out")
    assert err.value.problems == [f"{info}:3: JSON nested too deeply to read"]
    assert not (tmp_path / "out").exists()

    # A tool nesting exactly MAX_DEPTH levels (wrapped, as stored) is kept, and its prepared line reads back.
    tool = {"name": "f", "parameters": nested(MAX_DEPTH - 3)}
    data.prepare([write_jsonl("ok.jsonl", [{**chat, "tools": [tool]}])], tmp_path / "out", valid=0, test=0)
    (ex,) = data.load_split(tmp_path / "out", "train")
    assert ex.tools == [{"type": "function", "function": tool}]


# ------------------------------------------------------------------------------------------------------ stats


def test_stats_are_token_lengths_under_the_chat_template(write_jsonl, tmp_path, qwen2_dir):
    from mlx_ft import chat_template
    from mlx_ft.data import stats as data_stats

    rows = [{"question": "q" * (i + 1), "answer": "answer " * (i % 7 + 1)} for i in range(30)]
    src = write_jsonl("qa.jsonl", rows + [{"text": "a raw document " * 5}])
    report = data.prepare([src], tmp_path / "out", stats=data_stats.StatsSettings(str(qwen2_dir), 30))
    tokenizer = data_stats.load_tokenizer(str(qwen2_dir))
    expected = {
        split: sorted(
            len(tokenizer.encode(ex.text)) + 1
            if ex.text  # + EOS, which training appends
            else len(chat_template.encode(tokenizer, ex.messages))
            for ex in data.load_split(tmp_path / "out", split)
        )
        for split in data.SPLITS
    }
    stats = report.stats
    assert stats is not None and stats.max_seq_length == 30
    for split, lengths in expected.items():
        s = stats.splits[split]
        assert (s.examples, s.min, s.max) == (len(lengths), lengths[0], lengths[-1])
        assert s.median == lengths[(len(lengths) - 1) // 2]
        assert s.truncated == sum(n > 31 for n in lengths)  # training keeps max_seq_length + 1 ids
    assert sum(s.truncated for s in stats.splits.values()) > 0, "the test should cut some examples"
    recipe = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert recipe["stats"] == stats.to_dict()
    assert f"token lengths under {qwen2_dir} (max_seq_length 30):" in report.summary()


def test_split_stats_by_hand():
    from mlx_ft.data import stats as data_stats

    s = data_stats.split_stats([5, 1, 9, 3, 7, 11, 2, 8, 4, 6, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20], 15)
    assert (s.examples, s.min, s.median, s.p95, s.max) == (20, 1, 10, 19, 20)
    assert s.truncated == 4  # 17, 18, 19, 20 are longer than 15 + 1
    assert data_stats.split_stats([], 8) == data_stats.SplitStats(0)


def test_stats_defaults_come_from_the_training_config():
    from mlx_ft import config
    from mlx_ft.data import stats as data_stats

    cfg = config.load(config.default_path())
    assert data_stats.settings() == data_stats.StatsSettings(cfg.model, cfg.max_seq_length)
    assert data_stats.settings("other", 64) == data_stats.StatsSettings("other", 64)
    with pytest.raises(UserError, match="--max-seq-length must be at least 1"):
        data_stats.settings("other", 0)


def test_cli_prepare_formats_come_from_data_and_errors_are_one_line(write_jsonl, tmp_path, capsys):
    from mlx_ft import cli

    parser = cli.build_parser()
    for name in data.FORMATS:
        assert parser.parse_args(["prepare", "f.csv", "--out", "o", "--format", name]).format == name
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "f.csv", "--out", "o", "--format", "nope"])
    capsys.readouterr()
    src = write_jsonl("qa.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(10)])
    assert cli.main(["prepare", str(src), "--out", str(tmp_path / "out"), "--no-stats"]) == 0
    assert "train" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["stats"] is None
    assert cli.main(["prepare", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x"), "--no-stats"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_task_and_named_fields_travel_to_the_splits_for_eval(write_jsonl, tmp_path):
    src = write_jsonl(
        "raw.jsonl",
        [
            {"question": "发服务怎么做？", "answer": "数据平台相关问题", "task": "scene", "category": "gis", "n": [1]},
            {"input": "今天天气", "output": "通用问题", "task": "scene"},
            {"question": "西安市地类图斑的数据怎么发服务", "answer": "西安市地类图斑", "task": "extract"},
        ],
    )
    from mlx_ft import cli

    assert (
        cli.main(
            [
                "prepare",
                str(src),
                "--out",
                str(tmp_path / "d"),
                "--valid",
                "0",
                "--test",
                "0",
                "--keep-field",
                "category",
                "--no-stats",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "d" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r.get("task") for r in rows] == ["scene", "scene", "extract"]
    assert rows[0]["category"] == "gis" and "n" not in rows[0], "only scalar fields named for keeping travel"
    loaded = data.load_split(tmp_path / "d", "train")
    assert [ex.meta for ex in loaded] == [{"task": "scene", "category": "gis"}, {"task": "scene"}, {"task": "extract"}]


def test_common_system_is_the_prompt_every_conversation_shares():
    def ex(system):
        head = [{"role": "system", "content": system}] if system else []
        return data.Example("x:1", head + [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])

    assert data.common_system([ex("你是观赏鱼专家。"), ex("你是观赏鱼专家。")]) == "你是观赏鱼专家。"
    assert data.common_system([ex("你是观赏鱼专家。"), ex(None)]) is None
    assert data.common_system([ex("a"), ex("b")]) is None


# ------------------------------------------------------------------------------------------------------- tool calls

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def test_openai_tool_calls_and_tools_are_kept_as_structure(write_jsonl, tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Köln"}}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Köln?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "12C"},
            {"role": "assistant", "content": "12C.", "tool_calls": []},
        ],
        "tools": [WEATHER],
    }
    src = write_jsonl("chat.jsonl", [row])
    data.prepare([src], tmp_path / "out", valid=0, test=0)
    (out,) = _read(tmp_path / "out" / "train.jsonl")
    assert out["tools"] == [WEATHER]
    assert out["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Köln"}'}}
        ],
    }
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "12C"}
    assert out["messages"][3] == {"role": "assistant", "content": "12C."}
    # A prepared split reads back to the same example: training sees what prepare wrote.
    (ex,) = data.load_split(tmp_path / "out", "train")
    assert ex.tools == [WEATHER] and ex.messages == out["messages"] and ex.uses_tools()


def test_bad_tools_and_calls_are_reported_at_their_line(write_jsonl, tmp_path):
    def chat(call, tools=None):
        row = {
            "messages": [
                {"role": "user", "content": "?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "r"},
                {"role": "assistant", "content": "a"},
            ]
        }
        return {**row, "tools": tools} if tools is not None else row

    ok = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    src = write_jsonl(
        "chat.jsonl",
        [
            chat({"type": "function", "function": {"arguments": "{}"}}),
            chat({"type": "function", "function": {"name": "f", "arguments": "{oops"}}),
            chat({"type": "function", "function": {"name": "f", "arguments": "[1]"}}),
            chat(ok, tools="not json"),
            chat(ok, tools=[{"description": "no name"}]),
            chat(ok, tools=[{"type": "retrieval"}]),
            chat({"type": "code", "function": {"name": "f"}}),
        ],
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [
        f"{src}:1: messages[1]: tool_calls.function needs a 'name'",
        f"{src}:2: messages[1]: tool_calls.function.arguments is not valid JSON: Expecting property name enclosed in "
        "double quotes (column 2)",
        f"{src}:3: messages[1]: tool_calls.function.arguments must be a JSON object",
        f"{src}:4: field 'tools' is not valid JSON: Expecting value (column 1)",
        f"{src}:5: tools[0] needs a 'name'",
        f'{src}:6: tools[0] must be {{"type": "function", "function": {{"name", …}}}}',
        f'{src}:7: messages[1]: tool_calls must be {{"type": "function", "function": {{"name", "arguments"}}}}',
    ]


LLAMA_FACTORY = Path(__file__).parent / "llamafactory"  # samples of its glaive_toolcall demos (see its README.md)


def test_llama_factory_glaive_toolcall_demos_keep_tools_and_calls(tmp_path):
    """The real-world check: LLaMA-Factory's own dataset_info.json entries and records. Its function_call turns
    become OpenAI tool_calls, observations tool messages, the `tools` column (a JSON string of bare schemas) the
    row's tools; a record whose observation follows a plain answer (two of the zh demo's 300) is refused at its
    line."""
    info = LLAMA_FACTORY / "dataset_info.json"
    with pytest.raises(data.DataError) as err:
        data.prepare([info], tmp_path / "out")
    zh = LLAMA_FACTORY / "glaive_toolcall_zh_demo.json"
    second = [n for n, line in enumerate(zh.read_text().splitlines(), start=1) if line == "  {"][1]
    assert err.value.problems == [f"{zh}:{second}: a tool message must follow an assistant message with tool_calls"]

    report = data.prepare([info], tmp_path / "out", valid=0, test=0, skip_invalid=True)
    assert report.skipped == 1 and report.format == "sharegpt"
    rows = _read(tmp_path / "out" / "train.jsonl")
    source = json.loads((LLAMA_FACTORY / "glaive_toolcall_en_demo.json").read_text())
    assert report.duplicates == 1, "the en demo repeats one record"
    kept = [r for i, r in enumerate(source) if r not in source[:i]] + json.loads(zh.read_text())[:1]
    assert len(rows) == len(kept)
    assert sum("tools" in r for r in rows) == sum(r["tools"] not in ("", "[]") for r in kept)
    first = next(r for r in rows if r["messages"][0]["content"] == source[0]["conversations"][0]["value"])
    roles = ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert [m["role"] for m in first["messages"]] == roles
    call = json.loads(source[0]["conversations"][3]["value"])
    assert first["messages"][3]["tool_calls"] == [
        {"type": "function", "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
    ]
    assert first["messages"][4] == {"role": "tool", "content": source[0]["conversations"][4]["value"]}
    assert first["tools"] == [{"type": "function", "function": t} for t in json.loads(source[0]["tools"])]
    calls = sum(m["from"] == "function_call" for r in kept for m in r["conversations"])
    assert calls and sum(len(m.get("tool_calls", [])) for r in rows for m in r["messages"]) == calls
    assert not any("<tool_call>" in m["content"] or '"arguments"' in m["content"] for r in rows for m in r["messages"])


def test_stats_measure_tool_conversations_with_their_tools(tmp_path, qwen2_dir, qwen3_dir):
    from mlx_ft import chat_template
    from mlx_ft.data import stats as data_stats
    from mlx_ft.errors import UserError

    info = LLAMA_FACTORY / "dataset_info.json"
    picked = dict(datasets=["glaive_toolcall_en_demo"], valid=0, test=0)
    report = data.prepare([info], tmp_path / "out", stats=data_stats.StatsSettings(str(qwen3_dir), 4096), **picked)
    tok = data_stats.load_tokenizer(str(qwen3_dir))
    examples = data.load_split(tmp_path / "out", "train")
    lengths = sorted(len(chat_template.encode(tok, ex.messages, tools=ex.tools)) for ex in examples)
    assert report.stats is not None and (report.stats.splits["train"].min, report.stats.splits["train"].max) == (
        lengths[0],
        lengths[-1],
    )
    without = sorted(len(chat_template.encode(tok, ex.messages)) for ex in examples)
    assert sum(lengths) > sum(without), "the tool schemas count"
    with pytest.raises(UserError, match=r"glaive_toolcall_en_demo.json:\d+ uses tools .* cannot render them"):
        data.prepare([info], tmp_path / "two", stats=data_stats.StatsSettings(str(qwen2_dir), 4096), **picked)
    assert not (tmp_path / "two").exists()
