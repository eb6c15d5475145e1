"""Preference pairs through `prepare`: the spellings users have (text or message answers, OpenAI, ShareGPT, alpaca
and LLaMA-Factory ranking entries), one prepared line shape, and file:line problems."""

import json
import subprocess
from pathlib import Path

import pytest

from mlx_ft import data
from mlx_ft.data import stats as data_stats

LF_DATA = Path("/tmp/lf/data")
LF_MIRROR = Path("/work/.mirror/hiyouga+LLaMA-Factory/repo")

HELLO = {"role": "assistant", "content": "Hello! How can I help?"}
GO_AWAY = {"role": "assistant", "content": "Go away."}


def _lines(folder: Path) -> list[dict]:
    return [json.loads(x) for s in data.SPLITS for x in (folder / f"{s}.jsonl").read_text().splitlines()]


def test_every_spelling_of_a_pair_prepares_to_one_line_shape(write_jsonl, tmp_path):
    user = {"role": "user", "content": "Hi?"}
    src = write_jsonl(
        "pairs.jsonl",
        [
            {"prompt": "Hi?", "chosen": HELLO["content"], "rejected": GO_AWAY["content"]},
            {"messages": [user], "chosen": HELLO, "rejected": GO_AWAY},
            {"prompt": [user], "chosen": [HELLO], "rejected": [GO_AWAY]},  # TRL's conversational spelling
            {
                "conversations": [{"from": "human", "value": "Hi?"}],
                "chosen": {"from": "gpt", "value": HELLO["content"]},
                "rejected": {"from": "gpt", "value": GO_AWAY["content"]},
            },
            {"instruction": "Hi?", "input": "", "chosen": HELLO["content"], "rejected": GO_AWAY["content"]},
            {"messages": [user, HELLO], "rejected": GO_AWAY},  # a prepared line reads back as itself
        ],
    )
    report = data.prepare([src], tmp_path / "out", valid=0.0, test=0.0, opts=data.Options(system="Be kind."))
    assert report.format == "preference" and report.duplicates == 5, "six spellings of one pair"
    (line,) = _lines(tmp_path / "out")
    assert line == {"messages": [{"role": "system", "content": "Be kind."}, user, HELLO], "rejected": GO_AWAY}
    (ex,) = data.load_split(tmp_path / "out", "train")
    assert ex.messages[-1] == HELLO and ex.rejected == GO_AWAY


def test_pair_problems_are_reported_with_file_and_line(write_jsonl, tmp_path):
    src = write_jsonl(
        "pairs.jsonl",
        [
            {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same. "},
            {"prompt": "Hi?", "chosen": "", "rejected": "No."},
            {"prompt": "Hi?", "chosen": "Yes.", "rejected": {"role": "user", "content": "No."}},
            {"prompt": "Hi?", "rejected": "No."},
            {"chosen": "Yes.", "rejected": "No."},
            {"messages": [{"role": "user", "content": "a"}, HELLO], "chosen": "Yes.", "rejected": "No."},
            {"prompt": "Hi?", "chosen": "Yes.", "rejected": 3},
        ],
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([src], tmp_path / "out")
    assert err.value.problems == [
        f"{src}:1: 'chosen' and 'rejected' are the same answer: nothing to prefer",
        f"{src}:2: field 'chosen' is empty",
        f"{src}:3: field 'rejected' must be an assistant message, not a user one",
        f"{src}:4: missing field 'chosen'",
        f"{src}:5: a preference pair needs its prompt: a 'prompt', 'messages', 'conversations' or 'instruction' field",
        f"{src}:6: two assistant messages in a row",
        f"{src}:7: field 'rejected' must be an answer: a string, or one assistant message",
    ]
    assert not (tmp_path / "out").exists()


def test_a_prompt_that_leaves_no_room_for_the_answers_is_counted_not_refused(write_jsonl, tmp_path, qwen2_dir):
    """A real set has some such pairs: it is prepared, the pair named by its line and counted as left out."""
    src = write_jsonl(
        "pairs.jsonl",
        [
            {"prompt": "short?", "chosen": "Yes.", "rejected": "No."},
            {"prompt": "long " * 80, "chosen": "Yes.", "rejected": "No."},
        ],
    )
    report = data.prepare(
        [src], tmp_path / "out", valid=0.0, test=0.0, stats=data_stats.StatsSettings(str(qwen2_dir), 64)
    )
    assert [(x.where, x.fate) for x in report.stats.long] == [(f"{src}:2", "left_out")]
    assert report.stats.splits["train"].left_out == 1 and "1 pairs have prompts that fill" in report.summary()
    ok = data_stats.StatsSettings(str(qwen2_dir), 512)
    report = data.prepare([src], tmp_path / "ok", valid=0.0, test=0.0, stats=ok)
    assert report.stats.splits["train"].max > 80, "a pair's length is its longer side, prompt included"


def test_dataset_info_ranking_entries_read_pairs_and_kto_stays_refused(write_jsonl, tmp_path):
    write_jsonl("ab.jsonl", [{"q": "2+2?", "good": "4", "bad": "5", "sys": "Be exact."}])
    write_jsonl(
        "sg.jsonl",
        [
            {
                "messages": [{"role": "user", "content": "Hi?"}],
                "c": {"role": "assistant", "content": "Hello!"},
                "r": {"role": "assistant", "content": "Bye."},
            }
        ],
    )
    info = tmp_path / "dataset_info.json"
    info.write_text(
        json.dumps(
            {
                "ab": {
                    "file_name": "ab.jsonl",
                    "ranking": True,
                    "columns": {"prompt": "q", "chosen": "good", "rejected": "bad", "system": "sys"},
                },
                "sg": {
                    "file_name": "sg.jsonl",
                    "ranking": True,
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages", "chosen": "c", "rejected": "r"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                    },
                },
                "loose": {"file_name": "ab.jsonl", "columns": {"prompt": "q", "chosen": "good"}},
                "kto": {"file_name": "sg.jsonl", "columns": {"kto_tag": "label"}},
            },
            indent=2,
        )
    )
    data.prepare([info], tmp_path / "out", datasets=["ab", "sg"], valid=0.0, test=0.0)
    assert sorted(_lines(tmp_path / "out"), key=str) == sorted(
        [
            {
                "messages": [
                    {"role": "system", "content": "Be exact."},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ],
                "rejected": {"role": "assistant", "content": "5"},
            },
            {
                "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
                "rejected": {"role": "assistant", "content": "Bye."},
            },
        ],
        key=str,
    )
    with pytest.raises(data.DataError) as err:
        data.prepare([info], tmp_path / "x", datasets=["loose", "kto"])
    assert [p.split(": ", 1)[1] for p in err.value.problems] == [
        "dataset 'loose': columns.chosen belongs to preference pairs: the entry needs \"ranking\": true",
        "dataset 'kto': columns.kto_tag: KTO datasets are not supported",
    ]


@pytest.fixture(scope="session")
def lf_data() -> Path:
    """LLaMA-Factory's own data folder, extracted from its mirrored repository when it is not there yet."""
    if not (LF_DATA / "dpo_en_demo.json").is_file():
        if not LF_MIRROR.is_dir():
            pytest.skip("LLaMA-Factory's data folder is not on this machine")
        LF_DATA.parent.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", f"--git-dir={LF_MIRROR}", "archive", "HEAD", "data"], capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(LF_DATA.parent)], input=archive.stdout, check=True)
    return LF_DATA


def test_llama_factory_dpo_demos_prepare_without_a_problem(lf_data, tmp_path):
    report = data.prepare([lf_data / "dataset_info.json"], tmp_path / "out", datasets=["dpo_en_demo", "dpo_zh_demo"])
    assert report.format == "preference" and sum(report.counts.values()) + report.duplicates == 600
    examples = [ex for s in data.SPLITS for ex in data.load_split(tmp_path / "out", s)]
    assert all(ex.rejected is not None and ex.messages[-1]["role"] == "assistant" for ex in examples)
    assert all(ex.rejected["content"] != ex.messages[-1]["content"] for ex in examples)
