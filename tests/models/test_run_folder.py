"""The run folder's one owner: its checkpoints in one order, its metrics, config, adapters and status."""

import json
import os
import time
from pathlib import Path

import pytest

from mlx_ft import config as config_mod
from mlx_ft.errors import UserError
from mlx_ft.models import loader
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.models.run_folder import RUNNING_WITHIN_S, Run, read_metrics
from mlx_ft.training import checkpoints


def _run(tmp_path: Path, iters: int = 4, rows: list[dict] | None = None) -> Run:
    run = Run(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(config_mod.dump(config_mod.TrainConfig(iters=iters)), encoding="utf-8")
    run.adapter_config_file.write_text(json.dumps({"system_prompt": "Be brief."}), encoding="utf-8")
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in rows or []), encoding="utf-8")
    return run


def _checkpoint(run: Run, name: str, adapter: bool = True) -> Path:
    folder = run.checkpoints_dir / name
    folder.mkdir(parents=True)
    if adapter:
        (folder / ADAPTERS).write_bytes(b"")
    return folder


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_checkpoints_are_ordered_by_step_everywhere(tmp_path):
    run = _run(tmp_path)
    for name in ("step-10", "step-9", "step-0000002"):
        _checkpoint(run, name)
    _checkpoint(run, "step-11", adapter=False)
    _checkpoint(run, ".step-0000012.x1y2.tmp")  # an atomic write in progress is no checkpoint
    (run.checkpoints_dir / "step-13").write_text("not a folder", encoding="utf-8")
    assert [p.name for p in run.checkpoints()] == ["step-0000002", "step-9", "step-10", "step-11"]
    assert checkpoints.latest(run.path) == run.checkpoints_dir / "step-11"
    (run.best_dir).mkdir()
    (run.best_dir / ADAPTERS).write_bytes(b"")
    assert [name for name, _ in run.adapters()] == ["best", "step-0000002", "step-9", "step-10"]
    checkpoints.prune(run.path, 2)
    assert [p.name for p in run.checkpoints()] == ["step-10", "step-11"], "prune keeps the newest steps"
    assert checkpoints.checkpoint_dir(run.path, 7) == run.checkpoint_dir(7) == run.checkpoints_dir / "step-0000007"


def test_a_run_without_its_final_adapter_points_at_best_and_the_newest_checkpoint(tmp_path):
    run = _run(tmp_path)
    for name in ("step-9", "step-10"):
        _checkpoint(run, name)
    with pytest.raises(UserError, match=r"no adapters.safetensors \(did the training finish\?\); try .*step-10$"):
        loader.load(str(run.path))
    run.best_dir.mkdir()
    (run.best_dir / ADAPTERS).write_bytes(b"")
    with pytest.raises(UserError) as e:
        loader.load(str(run.path))
    assert str(e.value).endswith(f"try {run.best_dir} or {run.checkpoints_dir / 'step-10'}")


def test_metrics_leave_a_line_being_written_for_the_next_read(tmp_path):
    run = _run(tmp_path, rows=[{"step": 1, "loss": 2.0}])
    with run.metrics_file.open("a", encoding="utf-8") as f:
        f.write('{"step": 2, "lo')
    assert run.metrics() == read_metrics(run.metrics_file) == [{"step": 1, "loss": 2.0}]
    assert Run(tmp_path / "nothing").metrics() == []


def test_config_is_checked_and_raw_config_is_as_written(tmp_path):
    run = _run(tmp_path, iters=7)
    assert run.config().iters == 7 and run.iters() == 7 and run.raw_config()["iters"] == 7
    assert run.system_prompt() == "Be brief." == loader.training_system(run.path)
    assert run.is_run() and run.is_loadable() and loader.find_run(run.best_dir) == (run.path, run.best_dir / ADAPTERS)
    run.config_file.write_text("iters: [", encoding="utf-8")
    assert run.raw_config() == {} and run.iters() is None
    with pytest.raises(UserError, match="invalid YAML"):
        run.config()
    missing = Run(tmp_path / "missing")
    assert not missing.is_run() and missing.raw_config() == {} and missing.system_prompt() is None


@pytest.mark.parametrize(
    "rows, age, job_state, word",
    [
        ([1, 2, 3, 4], 0, None, "done"),
        ([1, 2], 0, None, "running"),
        ([1, 2], RUNNING_WITHIN_S + 5, None, "stopped"),
        ([1, 2], 0, "failed", "failed"),
        ([1, 2], RUNNING_WITHIN_S + 5, "cancelled", "stopped"),  # a cancelled resume leaves the run as it was
        ([1, 2, 3, 4], 0, "interrupted", "interrupted"),
    ],
)
def test_status_is_the_jobs_word_else_what_the_folder_says(tmp_path, rows, age, job_state, word):
    run = _run(tmp_path, iters=4, rows=[{"step": s, "loss": 1.0} for s in rows])
    _age(run.metrics_file, age)
    assert run.status(job_state) == word
    assert run.status(job_state, run.metrics()) == word


def test_a_run_without_readable_iters_is_stopped(tmp_path):
    run = _run(tmp_path, rows=[{"step": 9, "loss": 1.0}])
    run.config_file.write_text("iters: many\n", encoding="utf-8")
    assert run.status() == "stopped"


def test_finished_needs_the_last_checkpoint_the_final_adapter_after_it_and_the_last_metrics(tmp_path):
    run = _run(tmp_path, iters=4, rows=[{"step": s, "loss": 1.0} for s in (1, 2, 3, 4)])
    assert not run.finished(), "no checkpoint yet"
    ckpt = _checkpoint(run, "step-0000004")
    run.adapter_file.write_bytes(b"")
    assert run.finished()
    _age(run.adapter_file, 60)
    assert not run.finished(), "a final adapter older than the last checkpoint is not the run's end"
    os.utime(run.adapter_file)
    run.metrics_file.write_text(json.dumps({"step": 4, "val_loss": 1.0}) + "\n", encoding="utf-8")
    assert not run.finished(), "no training report at the last step"
    (ckpt / ADAPTERS).unlink()
    assert not run.finished()
