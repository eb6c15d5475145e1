"""`loss.png`: the training and validation loss curves of a run, redrawn from its metrics.jsonl (read by
`models.run_folder.read_metrics`, still importable from here)."""

from __future__ import annotations

from pathlib import Path

from mlx_ft.atomic import atomic_path
from mlx_ft.models.run_folder import read_metrics


def draw(metrics: Path, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never a GUI window popping up mid-training
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train), label="train", color="#1f77b4")
        if val:
            ax.plot(*zip(*val), label="validation", color="#d62728", marker="o", markersize=3)
            best = min(val, key=lambda p: p[1])
            ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend()
        fig.tight_layout()
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
