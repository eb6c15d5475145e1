"""eval's per-example generation budget and the progress lines of eval and `infer --file`, with real MLX generation
on the tiny random Qwen2 fixture: its answers never end by themselves, so each one runs exactly to its budget."""

import json
from pathlib import Path

import pytest

from mlx_ft import cli, config, progress
from mlx_ft.inference import evaluate, generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.training.run import train

SHORT = [("金鱼每天喂几次？", "两次。"), ("斗鱼要加热棒吗？", "要。"), ("孔雀鱼怎么繁殖？", "卵胎生。")]
LONG = ("怎么养金鱼？", "金鱼要大缸、强过滤，每周换三分之一的水，少喂多餐，水温保持凉爽，氧气充足。" * 4)


@pytest.fixture(scope="module")
def run(qwen2_dir, tmp_path_factory) -> Path:
    """A 2-step LoRA run on a set of three short answers and one long one (every split: those four)."""
    tmp = tmp_path_factory.mktemp("budget")
    data_dir = tmp / "data"
    data_dir.mkdir()
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in SHORT]
    rows.append({"messages": [{"role": "user", "content": LONG[0]}, {"role": "assistant", "content": LONG[1]}]})
    for split in ("train", "valid", "test"):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = dict(model=str(qwen2_dir), data=str(data_dir), adapter_path=str(tmp / "run"), num_layers=2, batch_size=2)
    return train(config.build({**cfg, "iters": 2, "steps_per_eval": 2, "max_seq_length": 256}))


def _records(err: str) -> list[progress.Record]:
    return [r for line in err.splitlines() if (r := progress.parse(line)) is not None]


def test_each_example_stops_near_its_own_reference(run, tmp_path, capsys, monkeypatch):
    """Budgets of 2 x each reference + 16 tokens: the short answers no longer generate as long as the long one's
    budget, which the old shared budget (2 x the longest + 16, for every example) made them. Both passes print
    progress lines for their loss and their answers, each stage ending at done == total."""
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line at every update
    tokenizer = loader.load(str(run), adapter=False).tokenizer
    refs = [len(tokenizer.encode(a, add_special_tokens=False)) for _, a in [*SHORT, LONG]]
    per_example = [2 * n + 16 for n in refs]
    shared = len(refs) * (2 * max(refs) + 16)

    assert cli.main(["eval", str(run), "--compare-base", "--out", str(tmp_path / "ev"), "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["generation_budget"] == "per example: 2 x reference + 16 tokens (cap 1024)" and m["max_tokens"] == 1024
    assert m["budget_tokens"] == sum(per_example) < shared / 2
    # A random model never ends an answer by itself (bar a chance end-of-turn token): each runs to its budget.
    for column in ("base", "tuned"):
        assert sum(per_example) - 20 <= m["generated_tokens"][column] <= sum(per_example), m["generated_tokens"]
    assert m["limit"] is None and set(m["generation_seconds"]) == {"base", "tuned"}
    assert "generation budget: per example: 2 x reference + 16 tokens (cap 1024)" in out

    records = _records(err)
    stages = list(dict.fromkeys(r.stage for r in records))
    assert stages == ["scoring base loss", "scoring base", "scoring tuned loss", "scoring tuned"], stages
    for stage in stages:
        mine = [r for r in records if r.stage == stage]
        assert mine[0].done == 0 and mine[0].eta_s is None, mine[0]
        assert mine[-1].done == mine[-1].total == 4 and mine[-1].eta_s == 0 and mine[-1].rate_unit == "tok/s"
        assert len(mine) > 2 and all(a.done <= b.done for a, b in zip(mine, mine[1:])), "one line per update"
    assert {r.unit for r in records if r.stage == "scoring tuned"} == {progress.ANSWERS}

    assert cli.main(["eval", str(run), "--max-tokens", "20", "--out", str(tmp_path / "capped"), "--limit", "2"]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "capped" / "metrics.json").read_text())
    assert m["budget_tokens"] == sum(min(20, b) for b in per_example[:2]) and m["limit"] == 2
    assert m["generation_budget"].endswith("(cap 20)") and m["generated_tokens"]["tuned"] <= m["budget_tokens"]


def test_generate_many_stops_each_prompt_at_its_own_budget(run, capsys):
    loaded = loader.load(str(run))
    capsys.readouterr()
    prompts = generation.prompts_for(loaded.tokenizer, [[{"role": "user", "content": q}] for q, _ in SHORT])
    answers = generation.generate_many(loaded.model, loaded.tokenizer, prompts, Sampling(temp=0.0), [2, 9, 5])
    lengths = [len(a) for a in answers]
    assert all(n <= cap for n, cap in zip(lengths, [2, 9, 5])) and sum(lengths) >= 12, lengths
    assert capsys.readouterr().err == "", "no stage, no progress lines"
    assert generation.answer_many_ids(loaded.model, loaded.tokenizer, prompts, Sampling(temp=0.0), [2, 9, 5]) == [
        loaded.tokenizer.decode(a) for a in answers
    ], "the same greedy answers, as text"
    with pytest.raises(ValueError, match="2 max_tokens for 3 prompts"):
        generation.generate_many(loaded.model, loaded.tokenizer, prompts, Sampling(), [1, 2])


def test_infer_file_prints_progress_and_ends_with_everything_answered(run, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": q}, ensure_ascii=False) + "\n" for q, _ in SHORT * 3))
    dest = tmp_path / "out.jsonl"
    assert cli.main(["infer", str(run), "--file", str(src), "--out", str(dest), "--max-tokens", "6"]) == 0
    records = _records(capsys.readouterr().err)
    assert records[0].stage == "answering" and records[0].done == 0
    last = records[-1]
    assert (last.stage, last.done, last.total, last.unit, last.eta_s) == ("answering", 9, 9, "answers", 0.0)
    assert last.rate_unit == "tok/s" and last.rate > 0 and len(dest.read_text().splitlines()) == 9


def test_the_label_table_names_every_score_once():
    """One table for the terminal, metrics.json's readers and the studio: keys, labels and shown values."""
    keys = [m.key for m in evaluate.METRICS]
    assert len(keys) == len(set(keys)) and {"pairs", "preference_accuracy", "exact_match", "n"} <= set(keys)
    rows = evaluate.labelled(
        {"base": {"pairs": 12, "preference_accuracy": 0.5, "bleu4": None}, "tuned": {"pairs": 12.0, "loss": 1.5}}
    )
    by_key = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows] == ["loss", "pairs", "preference_accuracy", "bleu4"], "METRICS order"
    assert by_key["pairs"]["label"] == "Pairs" and by_key["pairs"]["shown"] == {"base": "12", "tuned": "12"}
    assert by_key["preference_accuracy"]["label"] == "Preference accuracy"
    assert by_key["preference_accuracy"]["shown"] == {"base": "50.0%", "tuned": "-"}
    assert by_key["loss"]["shown"] == {"base": "-", "tuned": "1.500"} and by_key["bleu4"]["shown"]["base"] == "n/a"
