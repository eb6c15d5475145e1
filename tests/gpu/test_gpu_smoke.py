"""The everyday commands on a GPU: train 20 steps, evaluate, serve one chat, all on the device MLX picks.

Skipped where MLX has no GPU (CUDA or Metal), which includes CI. `MLX_FT_GPU_TESTS=cpu` runs them on the CPU, to
check the tests themselves on a machine without one. The model is the tiny random-weight Qwen3 test fixture (real
Qwen tokenizer, 152k-word vocabulary), so the chunked loss path runs; carry `~/.cache/mlx_ft/fixtures` to a GPU
machine that cannot build it (it needs dashscope's qwen.tiktoken from PyPI).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from tests.conftest import REPO
from tests.serving import call, free_port, start_server

ON_CPU = os.environ.get("MLX_FT_GPU_TESTS") == "cpu"
pytestmark = pytest.mark.skipif(
    not (mx.cuda.is_available() or mx.metal.is_available() or ON_CPU),
    reason="MLX has no GPU here (CUDA or Metal); MLX_FT_GPU_TESTS=cpu runs these anyway",
)


def _cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mlx_ft", *args], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_doctor_sees_the_gpu():
    facts = json.loads(_cli("doctor", "--json").stdout)
    assert facts["device"] == ("cpu" if ON_CPU else "cuda" if mx.cuda.is_available() else "metal")
    assert facts["device_name"]


def test_train_evaluate_and_serve_on_the_gpu(qwen3_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    r = _cli(
        "train",
        "--model",
        str(qwen3_dir),
        "--data",
        "data/fish_care",
        "--adapter-path",
        str(run),
        "--fine-tune-type",
        "lora",
        "--num-layers",
        "-1",
        "--batch-size",
        "4",
        "--iters",
        "20",
        "--learning-rate",
        "1e-3",
        "--steps-per-report",
        "10",
        "--steps-per-eval",
        "20",
        "--val-batches",
        "2",
        "--max-seq-length",
        "256",
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == [10, 20]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert all(row["tflops"] > 0 and row["peak_memory_gb"] > 0 for row in train_rows)
    if not ON_CPU and mx.cuda.is_available():
        assert all(0 < row.get("mfu", 0) < 1 for row in train_rows), "known NVIDIA GPUs report MFU"
    assert "real tokens" in r.stderr

    _cli("eval", str(run), "--limit", "4", "--max-tokens", "16")
    assert json.loads((run / "eval" / "metrics.json").read_text())

    port = free_port()
    server = start_server(run, port, tmp_path / "chat.db")
    try:
        reply = call(port, "POST", "/api/chat", {"message": "金鱼每天喂几次？"})
        assert reply["response"] and reply["conversation_id"]
    finally:
        server.terminate()
        server.wait(timeout=30)
