"""Real MLX training steps through mlx_lm's tuner, on the real SmolLM2 and the tiny Qwen fixtures."""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from mlx_ft import config, data
from mlx_ft.chat_template import prompt_ids
from mlx_ft.train import TokenizedChats, iterate_batches, masked_loss, train
from tests.conftest import REPO

FACTS = [("金鱼每天喂几次？", "每天一到两次，三分钟内吃完。"), ("斗鱼要加热棒吗？", "要，水温保持26度左右。"),
         ("孔雀鱼怎么繁殖？", "卵胎生，母鱼直接产下小鱼。"), ("新缸多久放鱼？", "硝化建立后，一般两到四周。")]


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    src = tmp_path / "facts.json"
    src.write_text(json.dumps([{"question": q, "answer": a} for q, a in FACTS * 2], ensure_ascii=False))
    rows = [{"question": q + "?" * i, "answer": a} for i, (q, a) in enumerate(FACTS * 2)]
    src.write_text(json.dumps(rows, ensure_ascii=False))
    data.prepare([src], tmp_path / "data", valid=0.25, test=0.0)
    return tmp_path / "data"


def _cfg(model: Path, data_dir: Path, run: Path, **kw) -> config.TrainConfig:
    values = dict(model=str(model), data=str(data_dir), adapter_path=str(run), fine_tune_type="lora", num_layers=2,
                  batch_size=2, iters=6, learning_rate=1e-3, steps_per_report=2, steps_per_eval=3, save_every=3,
                  max_seq_length=128, lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.0})
    return config.build({**values, **kw})


def _last_logits(model, tok, question: str) -> np.ndarray:
    ids = prompt_ids(tok, [{"role": "user", "content": question}])
    return np.array(model(mx.array([ids]))[0, -1].astype(mx.float32))


def test_lora_run_on_smollm2_writes_a_loadable_adapter(smollm2_dir, tiny_data, tmp_path):
    run = train(_cfg(smollm2_dir, tiny_data, tmp_path / "run"))
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "adapter_config.json", "adapters.safetensors", "metrics.jsonl", "checkpoints"} <= names
    assert not [n for n in names if "partial" in n]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"], "six steps at lr 1e-3 on 8 examples must lower the loss"
    assert any("val_loss" in r for r in rows) and all(r.get("tokens_per_s", 1) > 0 for r in rows)
    assert config.load(run / "config.yaml").iters == 6

    base, tok = load(str(smollm2_dir))
    tuned, _ = load(str(smollm2_dir), adapter_path=str(run))  # mlx_lm's own loader accepts the run folder
    q = FACTS[0][0]
    assert not np.allclose(_last_logits(base, tok, q), _last_logits(tuned, tok, q), atol=1e-3)


@pytest.mark.parametrize("fixture, kind", [("qwen2_dir", "dora"), ("qwen3_dir", "full")])
def test_dora_and_full_on_qwen_fixtures(request, fixture, kind, tiny_data, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    run = train(_cfg(model_dir, tiny_data, tmp_path / "run", fine_tune_type=kind, iters=4, steps_per_eval=10))
    adapter = mx.load(str(run / "adapters.safetensors"))
    leaves = {k.rsplit(".", 1)[-1] for k in adapter}
    if kind == "dora":
        assert leaves == {"lora_a", "lora_b", "m"}
    else:
        assert "weight" in leaves and not any("lora" in k for k in adapter)
    load(str(model_dir), adapter_path=str(run))


def test_loss_counts_only_masked_positions(qwen2_dir):
    model, tok = load(str(qwen2_dir))
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in FACTS]
    ds = TokenizedChats(chats, tok, mask_prompt=True, desc="test")
    batch, weights = next(iterate_batches(ds, batch_size=4, max_seq_length=256))
    loss, ntoks = masked_loss(model, batch, weights)
    assert int(ntoks) == sum(sum(m) - m[0] for _, m in ds.items)
    logits = model(batch[:, :-1]).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, batch[:, 1:, None], axis=-1)[..., 0]
    w = weights[:, 1:].astype(mx.float32)
    assert float(loss) == pytest.approx(float(-(picked * w).sum() / w.sum()), rel=1e-4)


def test_batches_group_similar_lengths_and_cover_every_example(qwen2_dir):
    _, tok = load(str(qwen2_dir))
    chats = [[{"role": "user", "content": "问" * n}, {"role": "assistant", "content": "答"}] for n in range(1, 41)]
    ds = TokenizedChats(chats, tok, mask_prompt=True, desc="test")
    batches = list(iterate_batches(ds, batch_size=8, max_seq_length=512))
    assert sum(b.shape[0] for b, _ in batches) == 40
    widths = [b.shape[1] for b, _ in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_cli_reports_bad_data_in_one_line_and_exits_2(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = subprocess.run([sys.executable, "-m", "mlx_ft", "train", "--data", str(tmp_path / "d")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"mlx_ft: error: {tmp_path / 'd' / 'train.jsonl'}:1: the conversation must end with an assistant message")
    assert "Traceback" not in r.stderr


def test_bad_model_leaves_no_run_folder(tiny_data, tmp_path):
    from mlx_ft.errors import UserError

    with pytest.raises(UserError, match="not a model folder"):
        train(_cfg(tmp_path / "no-such-model", tiny_data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten(qwen2_dir, tiny_data, tmp_path):
    from mlx_ft.errors import UserError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapters.safetensors").write_bytes(b"precious")
    with pytest.raises(UserError, match="not empty"):
        train(_cfg(qwen2_dir, tiny_data, tmp_path / "run"))
    assert (tmp_path / "run" / "adapters.safetensors").read_bytes() == b"precious"
