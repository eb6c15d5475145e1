"""`export hf`: the fused folder is the run (same logits as base + adapter in MLX, in mlx_lm and in transformers),
with no trace of MLX quantization, and carries the tokenizer and chat template."""

import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from mlx_ft import cli, config
from mlx_ft.chat_template import has_template, prompt_ids
from mlx_ft.models import loader
from mlx_ft.training.run import train

CHAT = [{"role": "user", "content": "金鱼每天喂几次？ How often?"}]


def _run(model: Path, tmp: Path, **kw) -> Path:
    data_dir = tmp / "data"
    data_dir.mkdir(exist_ok=True)
    rows = [
        {"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"答案{i}"}]}
        for i in range(8)
    ]
    (data_dir / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    values = dict(
        model=str(model),
        data=str(data_dir),
        adapter_path=str(tmp / "run"),
        num_layers=2,
        batch_size=4,
        iters=3,
        learning_rate=1e-2,
        steps_per_eval=100,
        max_seq_length=64,
        lora_parameters={"rank": 4, "scale": 20.0, "dropout": 0.0},
    )
    return train(config.build({**values, **kw}))


def _logits(model, ids) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


@pytest.mark.parametrize(
    "kind",
    [dict(fine_tune_type="lora"), dict(fine_tune_type="dora"), dict(fine_tune_type="lora", quantize=4)],
    ids=["lora", "dora", "qlora"],
)
def test_fused_export_answers_like_base_plus_adapter(qwen2_dir, tmp_path, kind):
    run = _run(qwen2_dir, tmp_path, **kind)
    assert cli.main(["export", "hf", str(run), "--out", str(tmp_path / "fused")]) == 0
    out = tmp_path / "fused"

    ref = loader.load(str(run), fuse=False)
    ids = prompt_ids(ref.tokenizer, CHAT)
    expected = _logits(ref.model, ids)
    base = _logits(loader.load(str(qwen2_dir)).model, ids)
    assert np.abs(expected - base).max() > 1e-2, "the adapter changed the model, so the comparison means something"

    model, tok = load(str(out))
    got = _logits(model, ids)
    assert np.abs(got - expected).max() < 1e-3 and (got.argmax(-1) == expected.argmax(-1)).all()
    assert has_template(tok) and prompt_ids(tok, CHAT) == ids, "tokenizer and chat template travel with it"

    cfg = json.loads((out / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    from safetensors import safe_open

    for f in out.glob("*.safetensors"):
        with safe_open(f, "np") as st:
            for name in st.keys():
                assert not name.endswith((".scales", ".biases")) and "lora" not in name, name
                assert st.get_tensor(name).dtype == np.float32, name


def test_transformers_loads_the_export_with_the_same_logits(qwen2_dir, tmp_path):
    if os.environ.get("CI"):
        import torch  # noqa: F401  (in CI a missing torch is a failure, not a skip)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    run = _run(qwen2_dir, tmp_path, quantize=4)
    ref = loader.load(str(run), fuse=False)
    ids = prompt_ids(ref.tokenizer, CHAT)
    expected = _logits(ref.model, ids)
    out = tmp_path / "fused"
    cli.main(["export", "hf", str(run), "--out", str(out)])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    scale = np.abs(expected).max()
    assert np.abs(theirs - expected).max() <= 2e-3 * scale and (theirs.argmax(-1) == expected.argmax(-1)).mean() > 0.99
