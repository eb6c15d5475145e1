"""A recipe's plan (`train --recipe`): SFT, then GRPO from it, each in its own run folder; run again, it keeps what
is finished and resumes what was cut short."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mlx_ft import cli, config, data
from mlx_ft.data import recipes
from mlx_ft.errors import UserError
from mlx_ft.models.run_folder import Run

WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "flame"]


@pytest.fixture
def recipe(tmp_path: Path, qwen2_dir: Path) -> Path:
    folder = tmp_path / "echo"
    folder.mkdir()
    spec = {
        "name": "echo",
        "tasks": {"echo": {"template": "Repeat: {input}", "max_tokens": 8, "pattern": r"(?P<word>\w+)"}},
        "plan": [{"name": "sft", "config": "sft.yaml"}, {"name": "grpo", "config": "grpo.yaml"}],
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(spec))
    common = dict(
        model=str(qwen2_dir),
        data=str(tmp_path / "data"),
        num_layers=1,
        lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.0},
        batch_size=2,
        iters=2,
        save_every=1,
        steps_per_eval=10,
        steps_per_report=1,
        max_seq_length=64,
    )
    (folder / "sft.yaml").write_text(yaml.safe_dump(common))
    grpo = dict(common, train_mode="grpo", rewards=[{"name": "fields"}], group_size=2, max_completion_tokens=4)
    (folder / "grpo.yaml").write_text(yaml.safe_dump(grpo))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input": w, "output": w}) + "\n" for w in WORDS))
    data.prepare([rows], tmp_path / "data", opts=data.Options(recipe=recipes.load(folder)), valid=0.0, test=0.0)
    shutil.copy(tmp_path / "data" / "train.jsonl", tmp_path / "data" / "valid.jsonl")
    return folder


def test_plan_trains_each_stage_from_the_one_before_and_goes_on_where_it_stopped(recipe, tmp_path, capsys):
    base = tmp_path / "runs" / "echo"
    argv = ["train", "--recipe", str(recipe), "--adapter-path", str(base)]
    assert cli.main(argv) == 0
    sft, grpo = base.with_name("echo-sft"), base.with_name("echo-grpo")
    assert Run(sft).finished() and Run(grpo).finished()
    cfg = config.load(grpo / "config.yaml")
    assert cfg.train_mode == "grpo" and cfg.init_from == str(sft) and cfg.recipe == str(recipe)
    assert cfg.resume_adapter_file == str(sft / "adapters.safetensors")
    assert config.load(sft / "config.yaml").recipe == str(recipe), "every stage knows its recipe"
    assert str(grpo) in capsys.readouterr().out

    # Cut the second stage short after its first step (as a crash would leave it), then run the plan again.
    shutil.rmtree(Run(grpo).checkpoint_dir(2))
    (grpo / "adapters.safetensors").unlink()
    sft_mtime = (sft / "adapters.safetensors").stat().st_mtime_ns
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "stage 1/2 (sft, sft.yaml)" in err and "already trained, kept" in err
    assert "stage 2/2 (grpo, grpo.yaml)" in err and "resuming" in err
    assert (sft / "adapters.safetensors").stat().st_mtime_ns == sft_mtime
    assert Run(grpo).finished()
    assert [r["step"] for r in Run(grpo).metrics() if "loss" in r] == [1, 2], "each step reported once"


def test_a_bad_plan_is_refused_naming_the_recipe(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    spec = {"tasks": {"t": {"template": "{input}"}}, "plan": [{"name": "sft", "config": "../x.yaml"}]}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=r"recipe.yaml: plan\[0\]: config must name a file in the recipe's folder"):
        recipes.load(folder)
    spec["plan"] = [{"name": "Bad Name", "config": "recipe.yaml"}]
    (folder / "recipe.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="plan\\[0\\]: the name"):
        recipes.load(folder)
    assert recipes.load("miners").plan[0].config.name == "lora_config.yaml"
