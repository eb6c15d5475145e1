"""Find the files that ship with mlx_ft: top-level folders in a source checkout, inside the package in a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource(name: str) -> Path:
    """Path of a shipped file or folder such as `templates`, `data/fish_care` or `lora_config.yaml`."""
    for base in (_PACKAGE, _PACKAGE.parent):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"mlx_ft resource {name!r} is missing from this installation")
