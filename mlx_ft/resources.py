"""Find the files that ship with mlx_ft: top-level folders in a source checkout, inside the package in a wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# In a wheel they sit in mlx_ft/shipped/ (not mlx_ft/data/, which would shadow-fight the mlx_ft.data module).
_BASES = (_PACKAGE / "shipped", _PACKAGE.parent)


def resource(name: str) -> Path:
    """Path of a shipped file or folder such as `data/fish_care` or `lora_config.yaml`."""
    for base in _BASES:
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"mlx_ft resource {name!r} is missing from this installation")


def local_or_shipped(name: str) -> Path:
    """`name` as given when it exists (or is absolute), else the copy mlx_ft ships, else `name` as given: a relative
    `data/fish_care` or `lora_config.yaml` then works outside a checkout too."""
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute():
        return path
    try:
        return resource(name)
    except FileNotFoundError:
        return path
