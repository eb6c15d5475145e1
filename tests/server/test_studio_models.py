"""The studio's models: the page, `serve` with no RUN, the models list, a conversation's model, compare, and real
adapter swapping on the tiny fixture model."""

from __future__ import annotations

import pytest

from mlx_ft.cli import build_parser
from mlx_ft.config import TrainConfig
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.engine import Engine
from mlx_ft.server.state import MAX_UPLOAD_BYTES, ServeConfig, of


def test_serve_without_run_serves_the_builtin_model_with_studio_folders():
    args = build_parser().parse_args(["serve"])
    assert args.run == TrainConfig.model
    args = build_parser().parse_args(["serve", "--data-dir", "d", "--exports-dir", "e", "--max-upload-mb", "2"])
    assert (args.data_dir, args.exports_dir, args.max_upload_mb) == ("d", "e", 2)
    assert build_parser().parse_args(["serve"]).max_upload_mb << 20 == MAX_UPLOAD_BYTES


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


@pytest.fixture
def app(engine, tmp_path):
    cfg = ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", data_dir=tmp_path / "data")
    return create_app(cfg, engine)


def test_studio_page_renders_with_the_model_label(app, engine):
    resp = app.test_client().get("/studio")
    assert resp.status_code == 200 and engine.loaded.label in resp.get_data(as_text=True)
    assert of(app).config.data_dir.name == "data"
