"""A run folder, in one place: `train` writes it, the loader, resume, the jobs and the studio read it.

    RUN/config.yaml            the resolved config, as run (`config()`, or `raw_config()` for the values as written)
    RUN/adapter_config.json    mlx-lm's adapter config, with the system prompt every training example had
    RUN/adapters.safetensors   the final adapter (written at the end, also when stopped)
    RUN/best/                  the adapter of the best validation loss (weights + adapter_config.json)
    RUN/checkpoints/step-NNNNNNN/   adapter + optimizer state + counters (`training.checkpoints`)
    RUN/metrics.jsonl          one JSON row per report or validation (`metrics()`)
    RUN/loss.png

Checkpoints are ordered by their step number, everywhere (step-9 before step-10, whatever the padding). A folder
whose name is not `step-N` (an atomic write's hidden temporary) is no checkpoint.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlx_ft import config as config_mod
from mlx_ft.models.adapters import ADAPTERS

CONFIG = config_mod.RUN_CONFIG
ADAPTER_CONFIG = "adapter_config.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
BEST = "best"
CHECKPOINTS = "checkpoints"
RUNNING_WITHIN_S = 120  # a run that has written no metrics for this long is not training any more
_STEP = re.compile(r"^step-(\d+)$")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line still being written (no newline yet) is left for the next read."""
    rows = []
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else ""
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            rows.append(json.loads(line))
    return rows


def step_of(checkpoint: Path) -> int:
    """The step a checkpoint folder (`step-NNNNNNN`) was taken at."""
    return int(checkpoint.name.removeprefix("step-"))


@dataclass(frozen=True)
class Run:
    """A run folder; nothing is read until asked, so a `Run` may name a folder that does not exist (yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def adapter_config_file(self) -> Path:
        return self.path / ADAPTER_CONFIG

    @property
    def adapter_file(self) -> Path:
        return self.path / ADAPTERS

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def loss_plot(self) -> Path:
        return self.path / LOSS_PLOT

    @property
    def best_dir(self) -> Path:
        return self.path / BEST

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:07d}"

    def is_run(self) -> bool:
        """Whether `train` has made this folder a run (it writes config.yaml first)."""
        return self.config_file.is_file()

    def is_loadable(self) -> bool:
        """Whether the loader can rebuild the run (config and adapter config; the adapter itself may be missing)."""
        return self.is_run() and self.adapter_config_file.is_file()

    def has_adapter(self) -> bool:
        return self.adapter_file.is_file()

    def config(self) -> config_mod.TrainConfig:
        """The run's config, checked as `train` checks one (UserError when it cannot be read)."""
        return config_mod.load(self.config_file)

    def raw_config(self) -> dict[str, Any]:
        """config.yaml's values as written, unchecked: {} when it is missing, unreadable or not a mapping."""
        try:
            values = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return values if isinstance(values, dict) else {}

    def iters(self) -> int | None:
        """The steps the run trains (config.yaml's `iters`), None when that cannot be read."""
        iters = self.raw_config().get("iters")
        return iters if isinstance(iters, int) else None

    def system_prompt(self) -> str | None:
        """The system prompt every training example had, if one (inference defaults to it)."""
        try:
            return json.loads(self.adapter_config_file.read_text(encoding="utf-8")).get("system_prompt")
        except (OSError, ValueError):
            return None

    def metrics(self) -> list[dict]:
        """metrics.jsonl's rows ([] before the first); OSError or ValueError when it cannot be read."""
        return read_metrics(self.metrics_file)

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders, oldest step first."""
        found = [p for p in self.checkpoints_dir.glob("step-*") if _STEP.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: (step_of(p), p.name))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def adapters(self) -> list[tuple[str, Path]]:
        """(name, folder) of every adapter the run saved besides its final one: best/, then each checkpoint's,
        oldest step first."""
        best = [(BEST, self.best_dir)] if (self.best_dir / ADAPTERS).is_file() else []
        return best + [(p.name, p) for p in self.checkpoints() if (p / ADAPTERS).is_file()]

    def finished(self) -> bool:
        """Whether the run trained all its iters: its last checkpoint at the last step, the final adapter written
        after it, and metrics at that step (what train leaves at its end, even when stopped in that step)."""
        ckpt, iters = self.latest_checkpoint(), self.iters()
        if ckpt is None or iters is None or step_of(ckpt) < iters:
            return False
        try:
            final_adapter = self.adapter_file.stat().st_mtime_ns >= (ckpt / ADAPTERS).stat().st_mtime_ns
            rows = self.metrics()
        except (OSError, ValueError):
            return False
        return final_adapter and any(r.get("step") == iters and "loss" in r for r in rows)

    def recently_written(self) -> bool:
        """Whether metrics.jsonl changed in the last RUNNING_WITHIN_S: a sign that the run is training now."""
        metrics = self.metrics_file
        return metrics.is_file() and time.time() - metrics.stat().st_mtime < RUNNING_WITHIN_S

    def status(self, job_state: str | None = None, rows: list[dict] | None = None) -> str:
        """One word for the run's state, the word the studio's Jobs tab uses for it: `job_state` (the newest job
        that trained it) when there is one, else what the folder says: all `iters` steps reported: done; metrics
        written recently: running; otherwise stopped. `rows`: metrics() when the caller has read them already."""
        if job_state is not None and job_state != "cancelled":  # a cancelled resume leaves the run as it was
            return job_state
        iters = self.iters()
        if iters is None:
            return "stopped"
        if last_step(self.metrics() if rows is None else rows) >= iters:
            return "done"
        return "running" if self.recently_written() else "stopped"


def last_step(rows: list[dict]) -> int:
    """The highest step metrics rows report (0 before the first)."""
    return max((r.get("step", 0) for r in rows), default=0)
