"""The shipped recipes, run as recipes/README.md tells users to run them, only shorter (a few steps, a few examples).

The commands come from the README itself, so a recipe whose documented commands stop working fails here.
"""

import json
import shlex
import shutil
from pathlib import Path

import pytest

from mlx_ft import cli, config
from tests.conftest import REPO

README = REPO / "recipes" / "README.md"
# Appended to the README's commands: a short training and a quick look at the test split.
SHORT = {
    "train": ["--iters", "3", "--batch-size", "2", "--steps-per-eval", "3", "--val-batches", "1", "--save-every", "3"]
    + ["--group-size", "2", "--max-completion-tokens", "8"],  # a GRPO stage's sampling, kept short too
    "eval": ["--limit", "6", "--max-tokens", "12"],
}


def commands(recipe: str) -> list[list[str]]:
    """The `python -m mlx_ft …` lines of the README's bash block under `### <recipe>`."""
    section = README.read_text(encoding="utf-8").split(f"### {recipe}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[3:] for line in lines if line.startswith("python -m mlx_ft ")]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder laid out like a checkout (recipes/, data/<name>/ raw files) to run the commands in."""
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    for raw in ("miners/listings.jsonl", "router/router.jsonl", "fish_care/fish_care.json"):
        (tmp_path / "data" / raw).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "data" / raw, tmp_path / "data" / raw)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_recipe(recipe: str) -> dict:
    """Run the recipe's commands (shortened; `serve` left out: it serves until stopped, and tests/server/test_app.py
    covers it) and return the eval's metrics.json."""
    cmds = commands(recipe)
    assert [c[0] for c in cmds][:3] == ["prepare", "train", "eval"], cmds
    for cmd in cmds:
        if cmd[0] != "serve":
            assert cli.main(cmd + SHORT.get(cmd[0], [])) == 0, cmd
    run = Path(next(c for c in cmds if c[0] == "eval")[1])
    return json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))


def test_miner_recipe_runs_as_documented(workdir):
    metrics = run_recipe("miners")
    assert set(metrics["metrics"]) == {"base", "tuned"}
    for column in metrics["metrics"].values():
        assert column["n"] == 6 and 0 <= column["exact_match"] <= 1 and column["loss"] > 0
    prepared = json.loads((workdir / "data/miners/prepared/prepare.json").read_text())
    assert prepared["group_field"] == "group" and prepared["recipe"].endswith("miners/recipe.yaml")
    # The plan: SFT, then GRPO from it, rewarded by the recipe's fields; eval reports the GRPO run's mean reward.
    sft = config.load(workdir / "runs/miners-sft/config.yaml")
    grpo = config.load(workdir / "runs/miners-grpo/config.yaml")
    assert (sft.train_mode, grpo.train_mode, grpo.init_from) == ("sft", "grpo", "runs/miners-sft")
    assert metrics["rewards"] == {"fields": 1.0}
    assert all(0 <= c["reward_fields"] <= 1 for c in metrics["metrics"].values())


def test_router_recipe_reports_every_task(workdir):
    metrics = run_recipe("router")
    rows = [json.loads(x) for x in (workdir / "data/router/prepared/test.jsonl").read_text().splitlines()][:6]
    tasks = {r["task"] for r in rows}
    assert metrics["by_field"] == "task" and set(metrics["groups"]["tuned"]) == tasks and len(tasks) >= 2


def test_fish_care_recipe_trains_evaluates_and_exports(workdir):
    metrics = run_recipe("fish_care")
    for column in ("base", "tuned"):
        assert metrics["metrics"][column]["perplexity"] > 1 and 0 <= metrics["metrics"][column]["rouge_l"] <= 1
    assert (workdir / "fish_care.gguf").stat().st_size > 50e6
    modelfile = (workdir / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./fish_care.gguf" in modelfile and "观赏鱼养护专家" in modelfile
    assert "serve" in [c[0] for c in commands("fish_care")]
