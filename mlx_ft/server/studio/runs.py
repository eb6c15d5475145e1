"""The runs dashboard's data: every run folder under the runs folder, its config, latest metrics and its status, in
the studio's words: the state of the newest studio job that trained it (done, running, stopped, interrupted,
failed, …), else what its folder says (all `iters` steps reported: done; metrics.jsonl written recently and the last
step short of `iters`: running; otherwise stopped)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify

from mlx_ft.server.http import ApiError
from mlx_ft.server.state import current
from mlx_ft.training.loss_plot import read_metrics

bp = Blueprint("runs", __name__, url_prefix="/api/runs")
RUNNING_WITHIN_S = 120  # a run that has written no metrics for this long is not training any more


def _config(run: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def status(step: int, iters: Any, recent: bool, job_state: str | None = None) -> str:
    """One word for a run's state, the word the studio's Jobs tab uses for the same run."""
    if job_state is not None and job_state != "cancelled":  # a cancelled resume leaves the run as it was
        return job_state
    if isinstance(iters, int) and step >= iters:
        return "done"
    return "running" if recent and isinstance(iters, int) else "stopped"


def summary(run: Path, job_state: str | None = None) -> dict[str, Any]:
    """A run's row; `job_state`: the state of the newest studio job that trains it, if there is one."""
    cfg = _config(run)
    rows = read_metrics(run / "metrics.jsonl")
    losses = [r for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    step = max((r.get("step", 0) for r in rows), default=0)
    metrics = run / "metrics.jsonl"
    recent = metrics.is_file() and time.time() - metrics.stat().st_mtime < RUNNING_WITHIN_S
    iters = cfg.get("iters")
    return {
        "name": run.name,
        "path": str(run),
        "model": cfg.get("model"),
        "fine_tune_type": cfg.get("fine_tune_type"),
        "iters": iters,
        "step": step,
        "loss": losses[-1]["loss"] if losses else None,
        "val_loss": vals[-1] if vals else None,
        "best_val_loss": min(vals) if vals else None,
        "status": (word := status(step, iters, recent, job_state)),
        "running": word in ("running", "stopping"),
        "config": cfg,
    }


def _runs() -> dict[str, Path]:
    root = Path(current().config.runs_dir)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.yaml").is_file()}


def _job_states() -> dict[str, str]:
    """Each run's newest studio train job's state, by run name."""
    states: dict[str, str] = {}
    for job in current().jobs.jobs():  # newest first
        if job.kind == "train":
            states.setdefault(job.run, job.state)
    return states


@bp.get("")
def list_runs() -> Response:
    states = _job_states()
    runs = sorted((summary(p, states.get(p.name)) for p in _runs().values()), key=lambda r: r["name"], reverse=True)
    return jsonify(runs=runs)


@bp.get("/<name>/metrics")
def run_metrics(name: str) -> Response:
    run = _runs().get(name)  # only names that are run folders: no path from the request reaches the filesystem
    if run is None:
        raise ApiError(404, f"no run {name!r} in {current().config.runs_dir}")
    return jsonify(rows=read_metrics(run / "metrics.jsonl"))
