"""Examples longer than max_seq_length: the cut `prepare` counts is the cut training makes (`fit_rows`, shared), the
set records how it was fitted (prepare.json's "fit") and training follows it, and a run at another max_seq_length
says at its start how many pairs it leaves out, never quietly. The set is a generated one in the shape of
LLaMA-Factory's dpo_en_demo.json (tests/data/dpo_demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_ft import config, data
from mlx_ft.data import stats as data_stats
from mlx_ft.training.batches import TokenizedChats, TokenizedPairs
from tests.data import dpo_demo


@pytest.fixture(scope="module")
def tokenizer(qwen2_dir):
    return data_stats.load_tokenizer(str(qwen2_dir))


def _prepare(tmp_path: Path, tokenizer, max_seq_length: int, n: int = 300, **fit) -> data.Report:
    info = dpo_demo.write(tmp_path / "raw", n)
    how = data_stats.StatsSettings("qwen2-tiny", max_seq_length, **fit)
    return data.prepare([info], tmp_path / "set", stats=how, tokenizer=tokenizer)


def _pairs(folder: Path, tokenizer, max_seq_length: int) -> list[TokenizedPairs]:
    return [TokenizedPairs(data.load_split(folder, s), tokenizer, max_seq_length, s) for s in data.SPLITS]


def test_fit_rows_cuts_the_end_or_first_the_shared_prompts_start():
    prompt, chosen, rejected = list(range(10)), [50, 51, 52], [60, 61]
    rows = [(prompt + chosen, [0] * 10 + [1] * 3), (prompt + rejected, [0] * 10 + [1] * 2)]
    assert data_stats.fit_rows(rows, 12) == (rows, 0), "13 ids fit: max_seq_length 12 keeps 13"
    ends, start = data_stats.fit_rows(rows, 8)
    assert start == 0 and [ids for ids, _ in ends] == [prompt[:9], prompt[:9]]
    assert not data_stats.keeps_answers(ends), "cut at the end, a 10-token prompt leaves no answer at 8"
    cut, start = data_stats.fit_rows(rows, 8, "prompt")
    assert start == 4 and [ids for ids, _ in cut] == [prompt[4:] + chosen, prompt[4:] + rejected]
    assert data_stats.keeps_answers(cut)
    tiny, start = data_stats.fit_rows(rows, 2, "prompt")
    assert start == 9 and [ids for ids, _ in tiny] == [[9, 50, 51], [9, 60, 61]], "one prompt id stays, then the end"


def test_prepare_counts_exactly_the_pairs_training_leaves_out_and_names_them_by_record(tokenizer, tmp_path):
    report = _prepare(tmp_path, tokenizer, 512)
    stats = report.stats
    left_out = stats.count("left_out")
    assert left_out == sum(s.left_out for s in stats.splits.values()) > 50, "a third of the prompts are long"
    assert left_out == sum(p.dropped for p in _pairs(tmp_path / "set", tokenizer, 512))
    assert len(stats.long) == sum(p.truncated for p in _pairs(tmp_path / "set", tokenizer, 512))
    # Named by the user's file and the line its record starts on, which holds that very prompt.
    raw = tmp_path / "raw" / "dpo_en_demo.json"
    lines = raw.read_text().splitlines()
    first = min((x for x in stats.long if x.fate == "left_out"), key=lambda x: int(x.where.rsplit(":", 1)[1]))
    file, line = first.where.rsplit(":", 1)
    assert file == str(raw) and lines[int(line) - 1].strip() == "{"
    assert json.loads((tmp_path / "set" / "prepare.json").read_text())["fit"] == {
        "max_seq_length": 512,
        "truncate": "none",
        "skip_long": False,
        "skipped_long": 0,
    }


def test_a_set_fitted_with_its_prompts_cut_is_cut_so_by_training(tokenizer, tmp_path):
    report = _prepare(tmp_path, tokenizer, 512, truncate="prompt")
    assert report.stats.count("left_out") == 0 and report.stats.count("prompt_cut") > 50
    split = data.load_split(tmp_path / "set", "train")
    assert split.fit == data_stats.Fit(512, "prompt")
    pairs = TokenizedPairs(split, tokenizer, 512, "train")
    assert pairs.dropped == 0 and pairs.prompt_cut == report.stats.splits["train"].prompt_cut
    chosen, rejected = zip(*pairs.items)
    assert all(len(ids) <= 513 for ids, _ in chosen + rejected)
    # The answers are kept whole: what is learned is what the uncut pair learns.
    for ex, (c, r) in zip(split, pairs.items):
        whole = data_stats.pair_rows(tokenizer, ex)
        assert [i for i, m in zip(c[0], c[1]) if m] == [i for i, m in zip(*whole[0]) if m]
        assert [i for i, m in zip(r[0], r[1]) if m] == [i for i, m in zip(*whole[1]) if m]
    # Told otherwise, training cuts the end, and the pairs whose prompt fills the length are left out.
    assert 0 < TokenizedPairs(split, tokenizer, 512, "train", truncate="none").dropped <= pairs.prompt_cut
    chats = TokenizedChats(split, tokenizer, True, 512, "train")
    assert chats.truncate == "prompt" and chats.dropped == 0


def test_skip_long_leaves_the_long_examples_out_of_the_stored_set(tokenizer, tmp_path):
    report = _prepare(tmp_path, tokenizer, 512, skip_long=True)
    skipped = report.stats.count("skipped")
    assert skipped > 50 and sum(report.counts.values()) + skipped == 300 and report.skipped_long == skipped
    assert all(s.truncated == 0 for s in report.stats.splits.values())
    assert f"skipped {skipped} longer than max_seq_length" in report.summary()
    assert json.loads((tmp_path / "set" / "prepare.json").read_text())["fit"]["skipped_long"] == skipped
    assert sum(p.truncated + p.dropped for p in _pairs(tmp_path / "set", tokenizer, 512)) == 0


def test_a_set_stored_at_8192_and_trained_at_512_says_at_the_start_how_many_pairs_it_leaves_out(
    qwen2_dir, tokenizer, tmp_path, capsys
):
    from mlx_ft.training.run import train  # here: loads mlx's training stack

    report = _prepare(tmp_path, tokenizer, 8192, n=60)  # a fifth of the set: the run is what this test is about
    assert report.stats.long == [], "at 8192 every pair fits"
    dropped = TokenizedPairs(data.load_split(tmp_path / "set", "train"), tokenizer, 512, "t").dropped
    assert dropped > 5
    cfg = config.build(
        dict(
            model=str(qwen2_dir),
            data=str(tmp_path / "set"),
            adapter_path=str(tmp_path / "run"),
            train_mode="dpo",
            num_layers=1,
            batch_size=2,
            iters=1,
            steps_per_report=1,
            steps_per_eval=100,
            val_batches=1,
            max_seq_length=512,
            lora_parameters={"rank": 2, "scale": 10.0, "dropout": 0.0},
        )
    )
    train(cfg)
    err = capsys.readouterr().err
    train_line = next(line for line in err.splitlines() if "train.jsonl:" in line)
    assert f"{dropped} of them keep no token of an answer and are left out" in train_line, train_line
    assert "checked at max_seq_length 8192" in train_line and "--truncate prompt" in train_line


def test_prepare_flags_fit_the_set_as_the_upload_fields_do(qwen2_dir, tmp_path, capsys):
    """`prepare --truncate prompt` and `--skip-long` record the same fit the studio's upload fields do."""
    from mlx_ft import cli

    info = dpo_demo.write(tmp_path / "raw", 60)
    common = [str(info), "--model", str(qwen2_dir), "--max-seq-length", "512"]
    assert cli.main(["prepare", *common, "--out", str(tmp_path / "cut"), "--truncate", "prompt"]) == 0
    cut = json.loads((tmp_path / "cut" / "prepare.json").read_text())["fit"]
    assert cut["truncate"] == "prompt" and cut["max_seq_length"] == 512 and not cut["skip_long"]
    assert cli.main(["prepare", *common, "--out", str(tmp_path / "skip"), "--skip-long"]) == 0
    skip = json.loads((tmp_path / "skip" / "prepare.json").read_text())["fit"]
    assert skip["skip_long"] and skip["skipped_long"] > 0
    assert sum(len(data.load_split(tmp_path / "skip", s)) for s in data.SPLITS) == 60 - skip["skipped_long"]
