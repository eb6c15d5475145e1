"""The runs dashboard's data: every run folder under the runs folder, its config, latest metrics and its status, in
the studio's words: the state of the newest studio job that trained it (done, running, stopped, interrupted,
failed, …), else what its folder says (all `iters` steps reported: done; metrics.jsonl written recently and the last
step short of `iters`: running; otherwise stopped): `Run.status` decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from mlx_ft.models.run_folder import Run, last_step
from mlx_ft.server.http import ApiError
from mlx_ft.server.state import current

bp = Blueprint("runs", __name__, url_prefix="/api/runs")


def summary(run: Run, job_state: str | None = None) -> dict[str, Any]:
    """A run's row; `job_state`: the state of the newest studio job that trains it, if there is one."""
    cfg = run.raw_config()  # the page shows the values as written, even ones `train` would now refuse
    rows = run.metrics()
    losses = [r for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    return {
        "name": run.name,
        "path": str(run.path),
        "model": cfg.get("model"),
        "fine_tune_type": cfg.get("fine_tune_type"),
        "iters": cfg.get("iters"),
        "step": last_step(rows),
        "loss": losses[-1]["loss"] if losses else None,
        "val_loss": vals[-1] if vals else None,
        "best_val_loss": min(vals) if vals else None,
        "status": (word := run.status(job_state, rows)),
        "running": word in ("running", "stopping"),
        "config": cfg,
    }


def _runs() -> dict[str, Run]:
    root = Path(current().config.runs_dir)
    if not root.is_dir():
        return {}
    return {p.name: Run(p) for p in sorted(root.iterdir()) if p.is_dir() and Run(p).is_run()}


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
    return jsonify(rows=run.metrics())
