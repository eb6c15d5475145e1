"""The folders we write load in transformers and give the same logits as in MLX (transformers 5 and
mlx-lm 0.32 read RoPE base from different keys, so a config missing either spelling runs a different model).

Needs torch, which is no dependency of mlx_ft: CI installs the CPU build just for this (.ci/run)."""

import os

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from mlx_ft.chat_template import prompt_ids

if os.environ.get("CI"):
    import torch  # noqa: F401  (in CI a missing torch is a failure, not a skip)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CHAT = [{"role": "user", "content": "What is the capital of France? 法国的首都是哪里？"}]


@pytest.mark.parametrize("fixture", ["smollm2_dir", "qwen2_dir", "qwen3_dir"])
def test_mlx_and_transformers_agree_on_logits(request, fixture):
    folder = request.getfixturevalue(fixture)
    model, tok = load(str(folder))
    ids = prompt_ids(tok, CHAT)
    ours = np.array(model(mx.array([ids]))[0].astype(mx.float32))

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].float().numpy()

    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 2e-3 * scale, f"max diff {np.abs(ours - theirs).max()} (scale {scale})"
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99
