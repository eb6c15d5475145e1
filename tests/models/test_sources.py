from pathlib import Path

import pytest

from mlx_ft import models
from mlx_ft.errors import UserError


def test_builtin_resolves_to_a_cached_folder(smollm2_dir):
    assert models.resolve("smollm2-135m-instruct") == str(smollm2_dir)
    assert Path(smollm2_dir).is_relative_to(models.cache_home())
    assert (Path(smollm2_dir) / "tokenizer.json").is_file()


def test_gguf_path_is_imported_once(tmp_path, monkeypatch):
    gguf = models.builtin_gguf("smollm2-135m-instruct")
    monkeypatch.setenv(models.HOME_ENV, str(tmp_path / "home"))
    first = models.resolve(str(gguf))
    assert Path(first).parent == tmp_path / "home" / "models"
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert models.resolve(str(gguf)) == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp, "a second resolve must reuse the import"


def test_folders_and_hub_ids(tmp_path, qwen2_dir):
    assert models.resolve(str(qwen2_dir)) == str(qwen2_dir)
    assert models.resolve("Qwen/Qwen2-1.5B-Instruct") == "Qwen/Qwen2-1.5B-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no such GGUF file"):
        models.resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="not a model folder"):
        models.resolve("./nowhere")
