"""eval reports rewards: a GRPO run's own (base vs tuned, per task, per answer), and any run's with --rewards, equal to
what `rewards.build(...).score` gives on the answers eval wrote."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlx_ft import cli
from mlx_ft.inference import evaluate
from mlx_ft.models.run_folder import Run
from mlx_ft.training import rewards
from mlx_ft.training.run import train
from tests.training.test_run import _cfg as run_cfg

QA = [
    ("Name a fish.", "Carp", "animal"),
    ("Name a bird.", "Robin", "animal"),
    ("Name a tree.", "Oak", "plant"),
    ("Name a flower.", "Rose", "plant"),
]
GRPO_REWARDS = [{"name": "length", "max": 16}, {"name": "exact", "weight": 0.5}]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "task": task}
        for q, a, task in QA
    ]
    for split in ("train", "valid", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def _run(qwen2_dir: Path, data_dir: Path, run: Path, **kw) -> Path:
    """A one-step run of test_run's small settings, reporting and evaluating at that step."""
    short = dict(iters=1, steps_per_report=1, steps_per_eval=1, val_batches=1, save_every=1, max_seq_length=64)
    return train(run_cfg(qwen2_dir, data_dir, run, **{**short, **kw}))


def _predictions(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_a_grpo_runs_rewards_score_base_and_tuned(qwen2_dir, data_dir, tmp_path, capsys):
    run = _run(
        qwen2_dir,
        data_dir,
        tmp_path / "grpo",
        train_mode="grpo",
        rewards=GRPO_REWARDS,
        group_size=2,
        max_completion_tokens=4,
    )
    out = tmp_path / "ev"
    assert cli.main(["eval", str(run), "--compare-base", "--out", str(out), "--max-tokens", "6"]) == 0
    table = capsys.readouterr().out
    assert "mean reward" in table and "reward: length" in table and "reward: exact" in table
    assert "rewards: length x1.0 + exact x0.5" in table

    result = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert result["rewards"] == {"length": 1.0, "exact": 0.5}
    rows = _predictions(out)
    scoring = rewards.build(GRPO_REWARDS)
    for column in ("base", "tuned"):
        metrics = result["metrics"][column]
        mine = []
        for r in rows:
            values = scoring.score(r["input"][-1]["content"], r[column], r["expected"])
            want = {"reward": scoring.total(values), "reward_length": values[0], "reward_exact": values[1]}
            assert {k: r["scores"][column][k] for k in want} == pytest.approx(want)
            mine.append(want)
        for key in ("reward", "reward_length", "reward_exact"):
            assert metrics[key] == pytest.approx(_mean([m[key] for m in mine]))
        assert "no_label" not in metrics, "no choice reward, no label set"
        plants = [m["reward"] for m, r in zip(mine, rows) if r["task"] == "plant"]
        assert result["groups"][column]["plant"]["reward"] == pytest.approx(_mean(plants))
    assert "task = plant" in table


def test_any_run_is_scored_with_the_rewards_given(qwen2_dir, data_dir, tmp_path, capsys):
    run = _run(qwen2_dir, data_dir, tmp_path / "sft")
    out = tmp_path / "ev"
    argv = ["eval", str(run), "--out", str(out), "--max-tokens", "4"]
    # A choice reward's labels besides: the share of answers that are none of them.
    given = "[{name: exact}, {name: choice, labels: [Carp, Robin, Oak, Rose]}]"
    assert cli.main([*argv, "--rewards", given]) == 0
    assert "reward: exact" in capsys.readouterr().out
    tuned = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["metrics"]["tuned"]
    assert tuned["reward_exact"] == tuned["exact_match"] == tuned["reward_choice"]
    assert tuned["reward"] == pytest.approx(2 * tuned["exact_match"])
    labels = {a for _, a, _ in QA}
    assert tuned["no_label"] == _mean([r["tuned"].strip() not in labels for r in _predictions(out)])

    # An SFT run has no rewards of its own: nothing to report unless given.
    sft = SimpleNamespace(cfg=Run(run).config(), tokenizer=None)
    assert evaluate.eval_rewards(sft) is None
    assert evaluate.eval_rewards(sft, [{"name": "exact"}]).names == ("exact",)


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--rewards", "[{name: lenght}]"], "rewards[0]: unknown reward 'lenght'"),
        (["--rewards", "{name: exact}"], "--rewards must be a non-empty list"),
        (["--rewards", "[{name: exact"], "--rewards: not a YAML list"),
        (["--recipe", "router"], "--recipe goes with --constrained"),
        (["--constrained"], "--constrained and --recipe go together"),
    ],
)
def test_bad_rewards_are_one_line(qwen2_dir, data_dir, tmp_path, capsys, extra, said):
    out = tmp_path / "ev"
    assert cli.main(["eval", str(qwen2_dir), "--data", str(data_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and not out.exists()
