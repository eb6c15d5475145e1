"""Real MLX training steps through our loop on mlx_lm's pieces, on the real SmolLM2 and the tiny Qwen fixtures."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load

from mlx_ft import config, data
from mlx_ft.chat_template import prompt_ids
from mlx_ft.errors import UserError
from mlx_ft.training.batches import TokenizedChats, iterate_batches, pack_rows
from mlx_ft.training.loss import masked_loss
from mlx_ft.training.run import train
from tests.conftest import REPO

FACTS = [
    ("金鱼每天喂几次？", "每天一到两次，三分钟内吃完。"),
    ("斗鱼要加热棒吗？", "要，水温保持26度左右。"),
    ("孔雀鱼怎么繁殖？", "卵胎生，母鱼直接产下小鱼。"),
    ("新缸多久放鱼？", "硝化建立后，一般两到四周。"),
]


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    src = tmp_path / "facts.json"
    rows = [{"question": q + "?" * i, "answer": a} for i, (q, a) in enumerate(FACTS * 2)]
    src.write_text(json.dumps(rows, ensure_ascii=False))
    data.prepare([src], tmp_path / "data", valid=0.25, test=0.0)
    return tmp_path / "data"


def _cfg(model: Path, data_dir: Path, run: Path, **kw) -> config.TrainConfig:
    values = dict(
        model=str(model),
        data=str(data_dir),
        adapter_path=str(run),
        fine_tune_type="lora",
        num_layers=2,
        batch_size=2,
        iters=6,
        learning_rate=1e-3,
        steps_per_report=2,
        steps_per_eval=3,
        save_every=3,
        max_seq_length=128,
        lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.0},
    )
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
    assert any("val_loss" in r for r in rows) and all(r["trained_tokens_per_s"] > 0 for r in train_rows)
    assert config.load(run / "config.yaml").iters == 6

    base, tok = load(str(smollm2_dir))
    tuned, _ = load(str(smollm2_dir), adapter_path=str(run))  # mlx_lm's own loader accepts the run folder
    q = FACTS[0][0]
    assert not np.allclose(_last_logits(base, tok, q), _last_logits(tuned, tok, q), atol=1e-3)


@pytest.mark.parametrize("fixture, kind, layers", [("qwen2_dir", "dora", -1), ("qwen3_dir", "full", 1)])
def test_dora_and_full_on_qwen_fixtures(request, fixture, kind, layers, tiny_data, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    run = train(
        _cfg(model_dir, tiny_data, tmp_path / "run", fine_tune_type=kind, num_layers=layers, iters=4, steps_per_eval=10)
    )
    adapter = mx.load(str(run / "adapters.safetensors"))
    leaves = {k.rsplit(".", 1)[-1] for k in adapter}
    trained_layers = {int(k.split(".layers.")[1].split(".")[0]) for k in adapter}
    if kind == "dora":
        assert leaves == {"lora_a", "lora_b", "m"}
        assert trained_layers == {0, 1}, "num_layers -1 adapts every layer"
    else:
        assert "weight" in leaves and not any("lora" in k for k in adapter)
        assert trained_layers == {1}, "a full fine-tune of num_layers 1 trains the last layer only"
    load(str(model_dir), adapter_path=str(run))


def _examples(chats):
    return [data.Example(f"mem:{i + 1}", c) for i, c in enumerate(chats)]


def test_loss_counts_only_masked_positions(qwen2_dir):
    model, tok = load(str(qwen2_dir))
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in FACTS]
    ds = TokenizedChats(_examples(chats), tok, mask_prompt=True, max_seq_length=256, desc="test")
    batch, weights = next(iterate_batches(ds, batch_size=4, max_seq_length=256))[:2]
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
    ds = TokenizedChats(_examples(chats), tok, mask_prompt=True, max_seq_length=512, desc="test")
    batches = list(iterate_batches(ds, batch_size=8, max_seq_length=512))
    assert sum(b.shape[0] for b, *_ in batches) == 40
    # Each batch holds 8 neighbours in length order, so its longest row is every 8th length.
    longest = sorted(int((np.array(b) != 0).sum(axis=1).max()) for b, *_ in batches)
    assert longest == sorted(len(ids) for ids, _ in ds.items)[7::8]
    assert all((b.shape[1] - 1) % 32 == 0 for b, *_ in batches)


def test_training_batches_are_full_seeded_and_cycle(qwen2_dir):
    _, tok = load(str(qwen2_dir))
    chats = [[{"role": "user", "content": "问" * n}, {"role": "assistant", "content": "答"}] for n in range(1, 12)]
    ds = TokenizedChats(_examples(chats), tok, mask_prompt=True, max_seq_length=512, desc="test")

    def first(seed: int, n: int) -> list:
        it = iterate_batches(ds, batch_size=4, max_seq_length=512, loop=True, seed=seed)
        return [np.array(next(it)[0]).tolist() for _ in range(n)]

    run = first(0, 6)
    assert all(len(b) == 4 for b in run), "11 examples make 2 full batches; the partial one is not trained on"
    assert first(0, 6) == run
    assert sorted(map(str, run[:2])) == sorted(map(str, run[2:4])), "each epoch visits every full batch once"


def test_truncation_drops_examples_with_nothing_left_to_learn(qwen2_dir):
    _, tok = load(str(qwen2_dir))
    chats = [
        [{"role": "user", "content": "长" * 300}, {"role": "assistant", "content": "答案"}],
        [{"role": "user", "content": "短"}, {"role": "assistant", "content": "答" * 300}],
        [{"role": "user", "content": "短"}, {"role": "assistant", "content": "答"}],
    ]
    ds = TokenizedChats(_examples(chats), tok, mask_prompt=True, max_seq_length=64, desc="test")
    assert (len(ds), ds.truncated, ds.dropped) == (2, 2, 1)
    assert all(len(ids) <= 65 and any(m[1:]) for ids, m in ds.items)
    assert "2 examples longer than max_seq_length 64" in ds.report("x", 64)


def test_valid_split_smaller_than_a_batch_is_still_scored(qwen2_dir, tiny_data, tmp_path):
    first = (tiny_data / "valid.jsonl").read_text().splitlines()[0]
    (tiny_data / "valid.jsonl").write_text(first + "\n")
    run = train(_cfg(qwen2_dir, tiny_data, tmp_path / "run", batch_size=4, iters=2, steps_per_eval=2))
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert val and all(np.isfinite(r["val_loss"]) for r in val)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"optimizer": "adamw", "optimizer_config": {"adamw": {"weight_decya": 0.1}}}, "optimizer_config.adamw"),
        ({"lr_schedule": {"name": "cosine_decay"}}, "'lr_schedule'"),
    ],
)
def test_bad_optimizer_settings_are_user_errors(qwen2_dir, tiny_data, tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        train(_cfg(qwen2_dir, tiny_data, tmp_path / "run", **override))
    assert not (tmp_path / "run").exists()


def _without_chat_template(model_dir: Path, tmp_path: Path) -> Path:
    """The model as a base model: the same weights and tokenizer, no chat template."""
    base = tmp_path / "base-model"
    base.mkdir()
    for f in model_dir.iterdir():
        if f.name != "tokenizer_config.json":
            (base / f.name).symlink_to(f)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    return base


def test_model_without_chat_template_is_refused(qwen2_dir, tiny_data, tmp_path):
    base = _without_chat_template(qwen2_dir, tmp_path)
    with pytest.raises(UserError, match="has no chat template"):
        train(_cfg(base, tiny_data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_data_in_one_line_and_exits_2(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "train", "--data", str(tmp_path / "d")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"mlx_ft: error: {tmp_path / 'd' / 'train.jsonl'}:1: the conversation must end with an assistant message"
    )
    assert "Traceback" not in r.stderr


def test_bad_model_leaves_no_run_folder(tiny_data, tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        train(_cfg(tmp_path / "no-such-model", tiny_data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten(qwen2_dir, tiny_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapters.safetensors").write_bytes(b"precious")
    with pytest.raises(UserError, match="not empty"):
        train(_cfg(qwen2_dir, tiny_data, tmp_path / "run"))
    assert (tmp_path / "run" / "adapters.safetensors").read_bytes() == b"precious"


def _no_partial_files(run: Path) -> list[str]:
    return [str(p) for p in run.rglob("*") if "partial" in p.name or p.name.endswith((".tmp", ".old"))]


def test_ctrl_c_checkpoints_and_resume_ends_equal_to_an_uninterrupted_run(qwen2_dir, tiny_data, tmp_path):
    """SIGINT mid-run: a checkpoint of the last whole step is saved, the CLI exits 130 without a traceback; `train
    --resume` then ends with the adapter an uninterrupted run with the same seed writes. Dropout, AdamW and a warmup
    schedule make the random stream, the optimizer state and its step counter all matter."""
    import signal
    import time

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mlx_ft",
        "train",
        "--model",
        str(qwen2_dir),
        "--data",
        str(tiny_data),
        "--adapter-path",
        str(run),
        "--fine-tune-type",
        "lora",
        "--num-layers",
        "2",
        "--batch-size",
        "2",
        "--iters",
        "100000",
        "--steps-per-report",
        "1",
        "--steps-per-eval",
        "100000",
        "--save-every",
        "100000",
        "--max-seq-length",
        "64",
        "--optimizer",
        "adamw",
        "--learning-rate",
        "1e-3",
        "--set",
        "lora_parameters.dropout=0.2",
        "--set",
        "lr_schedule={name: cosine_decay, arguments: [1.0e-3, 50], warmup: 3}",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"loss"' in metrics.read_text()):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted after step" in err and "--resume" in err
    assert not _no_partial_files(run)
    (ckpt,) = (run / "checkpoints").iterdir()
    stopped = json.loads((ckpt / "state.json").read_text())["step"]
    assert stopped >= 1 and ckpt.name == f"step-{stopped:07d}"
    assert mx.load(str(run / "adapters.safetensors")).keys() == mx.load(str(ckpt / "adapters.safetensors")).keys()

    total = stopped + 4
    r = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "train", "--resume", str(run), "--iters", str(total)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"resuming {run} from step {stopped}" in r.stderr
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, total + 1)), "every step reported once, none twice"

    straight = train(config.load(run / "config.yaml", {"iters": total, "adapter_path": str(tmp_path / "straight")}))
    resumed, uninterrupted = mx.load(str(run / "adapters.safetensors")), mx.load(str(straight / "adapters.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        np.testing.assert_allclose(np.array(resumed[k]), np.array(uninterrupted[k]), rtol=0, atol=1e-6, err_msg=k)
    assert not np.allclose(np.array(resumed[k]), np.array(mx.load(str(ckpt / "adapters.safetensors"))[k])), (
        "the resumed steps must have trained"
    )


def test_resume_refuses_changes_that_would_make_another_run(qwen2_dir, tiny_data, tmp_path):
    run = train(_cfg(qwen2_dir, tiny_data, tmp_path / "run", iters=2, save_every=2, steps_per_eval=2))
    with pytest.raises(UserError, match="cannot change learning_rate"):
        config.for_resume(run, {"learning_rate": 0.5}, [])
    with pytest.raises(UserError, match="already trained 2 steps"):
        train(config.for_resume(run, {}, []), resume=True)
    (run / "checkpoints").rename(tmp_path / "gone")
    with pytest.raises(UserError, match="no checkpoint"):
        train(config.for_resume(run, {"iters": 4}, []), resume=True)


def test_early_stopping_keeps_the_best_adapter(qwen2_dir, tiny_data, tmp_path):
    """SGD at a learning rate far too high makes the validation loss climb: training stops after `patience`
    evaluations without improvement, and the run's adapter is the best one, not the last."""
    run = train(
        _cfg(
            qwen2_dir,
            tiny_data,
            tmp_path / "run",
            optimizer="sgd",
            learning_rate=30.0,
            iters=40,
            steps_per_eval=1,
            save_every=1,
            keep_checkpoints=2,
            early_stopping_patience=2,
        )
    )
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    best_step = min(val, key=lambda v: v[1])[0]
    assert val[-1][0] < 40, "stopped early"
    assert [s for s, _ in val][-1] == best_step + 2, "two evaluations without improvement, then stop"
    final = mx.load(str(run / "adapters.safetensors"))
    best = mx.load(str(run / "best" / "adapters.safetensors"))
    assert all(np.array_equal(np.array(final[k]), np.array(best[k])) for k in final)
    assert len(list((run / "checkpoints").iterdir())) == 2, "keep_checkpoints prunes older checkpoints"
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    load(str(qwen2_dir), adapter_path=str(run / "best"))  # best/ is itself an adapter folder


def _finite_checkpoints(run: Path) -> list[int]:
    """The steps of the run's checkpoints, each checked to hold only finite weights and optimizer state."""
    steps = []
    for ckpt in sorted((run / "checkpoints").glob("step-*")):
        for f in ckpt.glob("*.safetensors"):
            assert all(bool(mx.isfinite(v).all()) for v in mx.load(str(f)).values()), f
        steps.append(json.loads((ckpt / "state.json").read_text())["step"])
    return steps


def test_a_diverging_run_stops_with_one_line_and_writes_no_adapter(qwen2_dir, tiny_data, tmp_path):
    """Adam at lr 1e30 takes the fixture's weights to ~1e30 in one update, and step 2's forward pass overflows.
    The CLI stops there with one line (exit 2; the studio's job shows the same line), and neither the run's adapter
    nor best/ is written; the checkpoint of step 1, taken before the loss went bad, stays."""
    from mlx_ft.services.job_runner import failure

    run = tmp_path / "run"
    flags = {"model": qwen2_dir, "data": tiny_data, "adapter-path": run, "fine-tune-type": "lora", "num-layers": 2}
    flags |= {"batch-size": 2, "iters": 6, "learning-rate": 1e30, "steps-per-report": 1, "steps-per-eval": 100}
    flags |= {"save-every": 1, "max-seq-length": 64}
    args = [str(x) for k, v in flags.items() for x in (f"--{k}", v)]
    r = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "train", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"mlx_ft: error: loss became (NaN|inf) at step 2 \(learning rate 1e\+30\): lower it", last)
    assert "Traceback" not in r.stderr
    log = tmp_path / "job.log"
    log.write_text(r.stdout + r.stderr)
    assert failure(log, r.returncode) == f"exit status 2: {last.removeprefix('mlx_ft: error: ')}"
    assert not (run / "adapters.safetensors").exists() and not (run / "best").exists()
    assert _finite_checkpoints(run) == [1], "no checkpoint after the non-finite step"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1], "the non-finite step is not reported as a result"


@pytest.mark.parametrize(
    "settings, message, kept",
    [
        # The first update (step 2) diverges; step 3 is the first micro-batch of the next, not an update.
        ({"grad_accumulation_steps": 2, "save_every": 2}, r"loss became (NaN|inf) at step 3", [2]),
        # The update of step 1 diverges and the validation right after it sees so first, before step 1's checkpoint.
        ({"steps_per_eval": 1}, r"validation loss became (NaN|inf) at step 1", []),
        ({"train_mode": "dpo"}, r"loss became (NaN|inf) at step 2", [1]),
    ],
    ids=["grad_accumulation", "validation", "dpo"],
)
def test_non_finite_losses_stop_accumulation_validation_and_preference_runs(
    qwen2_dir, tiny_data, tmp_path, settings, message, kept
):
    if settings.get("train_mode") == "dpo":  # the facts as pairs: each answer preferred to itself reversed
        rows = [{"prompt": q + "?" * i, "chosen": a, "rejected": a[::-1]} for i, (q, a) in enumerate(FACTS * 2)]
        (tmp_path / "pairs.json").write_text(json.dumps(rows, ensure_ascii=False))
        tiny_data = tmp_path / "pairs"
        data.prepare([tmp_path / "pairs.json"], tiny_data, valid=0.25, test=0.0)
    cfg = _cfg(qwen2_dir, tiny_data, tmp_path / "run", learning_rate=1e30, save_every=1, steps_per_eval=100)
    with pytest.raises(UserError, match=message + r" \(learning rate 1e\+30\): lower it$"):
        train(config.build({**cfg.to_dict(), **settings}))
    assert not (tmp_path / "run" / "adapters.safetensors").exists() and not (tmp_path / "run" / "best").exists()
    assert _finite_checkpoints(tmp_path / "run") == kept


def test_a_model_with_non_finite_outputs_is_not_blamed_on_the_learning_rate(qwen2_dir, tiny_data, tmp_path):
    """Before any update the weights are the model's own: a non-finite loss then is no reason to lower the rate."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in qwen2_dir.iterdir():
        if f.suffix != ".safetensors":
            (broken / f.name).symlink_to(f)
    weights = mx.load(str(qwen2_dir / "model.safetensors"))
    weights["model.norm.weight"] = mx.full(weights["model.norm.weight"].shape, float("inf"))
    mx.save_safetensors(str(broken / "model.safetensors"), weights)
    with pytest.raises(UserError, match=r"^validation loss became NaN at step 0, before any update: .* not the cause"):
        train(_cfg(broken, tiny_data, tmp_path / "run"))
    (tiny_data / "valid.jsonl").unlink()
    with pytest.raises(UserError, match=r"^loss became NaN at step 1, before any update: .* not the cause"):
        train(_cfg(broken, tiny_data, tmp_path / "run2"))


@pytest.mark.slow  # starts two worker processes
def test_every_worker_agrees_on_a_loss_that_is_non_finite_on_one_of_them(tmp_path):
    """One worker's NaN or inf stops them all at the same step: a worker that went on would hang in its next
    collective. Two workers over MLX's ring backend on 127.0.0.1, each with its own loss."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import math\n"
        "import mlx.core as mx\n"
        "from mlx_ft.training.loop import nonfinite\n"
        "world = mx.distributed.init()\n"
        "r = world.rank()\n"
        "losses = [[math.nan, 1.0], [1.0, math.inf], [math.inf, math.nan], [1.0, 2.0]]\n"
        "print(r, *(nonfinite(world, v[r]) for v in losses), flush=True)\n"
    )
    launch = Path(sys.executable).parent / "mlx.launch"
    r = subprocess.run(
        [str(launch), "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2", sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(x for x in r.stdout.splitlines() if x[:2] in ("0 ", "1 "))
    assert lines == ["0 NaN inf NaN None", "1 NaN inf NaN None"], r.stdout + r.stderr


def test_qlora_quantizes_the_base_in_the_same_command(qwen2_dir, tiny_data, tmp_path):
    from mlx_ft.models.adapters import quantize_base

    model, _ = load(str(qwen2_dir))
    assert quantize_base(model, 4) > 0
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    run = train(_cfg(qwen2_dir, tiny_data, tmp_path / "run", quantize=4, iters=6, learning_rate=3e-3))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert rows[-1]["loss"] < rows[0]["loss"]
    adapter = mx.load(str(run / "adapters.safetensors"))
    assert {k.rsplit(".", 1)[-1] for k in adapter} == {"lora_a", "lora_b"}, "only the adapter is saved"
    assert config.load(run / "config.yaml").quantize == 4


def test_epochs_decide_iters(qwen2_dir, tiny_data, tmp_path):
    n_train = len((tiny_data / "train.jsonl").read_text().splitlines())
    run = train(_cfg(qwen2_dir, tiny_data, tmp_path / "run", epochs=2.0, steps_per_eval=100))
    assert config.load(run / "config.yaml").iters == 2 * (n_train // 2)


def test_packed_training_trains_on_rows_of_several_examples(qwen2_dir, tiny_data, tmp_path, capsys):
    run = train(
        _cfg(
            qwen2_dir,
            tiny_data,
            tmp_path / "run",
            pack=True,
            batch_size=1,
            max_seq_length=96,
            epochs=3.0,
            steps_per_eval=100,
        )
    )
    lengths = [
        len(ids)
        for ids, _ in TokenizedChats(data.load_split(tiny_data, "train"), load(str(qwen2_dir))[1], True, 96, "x").items
    ]
    rows = pack_rows(lengths, 97)
    assert len(rows) < len(lengths), "several examples share a row"
    assert config.load(run / "config.yaml").iters == 3 * len(rows), "an epoch is one pass over the packed rows"
    train_rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert train_rows[-1]["tokens"] == 3 * sum(lengths), "every real token of every example, three times"
    assert "real tokens (packed;" in capsys.readouterr().err


def test_progress_lines_replace_mlx_lm_output(qwen2_dir, tiny_data, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_ft",
            "train",
            "--model",
            str(qwen2_dir),
            "--data",
            str(tiny_data),
            "--adapter-path",
            str(tmp_path / "run"),
            "--fine-tune-type",
            "lora",
            "--num-layers",
            "1",
            "--batch-size",
            "2",
            "--iters",
            "4",
            "--steps-per-report",
            "2",
            "--steps-per-eval",
            "4",
            "--max-seq-length",
            "64",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["0/4", "2/4", "4/4", "4/4"]
    assert all(w in lines[1] for w in ("loss", "lr", "tok/s", "peak", "GB", "eta"))
    assert "val_loss" in lines[0] and "val_loss" in lines[3]
    assert "train_loss" not in r.stdout + r.stderr, "mlx_lm's own progress table is replaced"
    assert "real tokens (sorted by length;" in r.stderr and "in file order" in r.stderr


def test_two_workers_over_mlx_launch_match_one_worker_with_the_whole_batch(qwen2_dir, tmp_path):
    """Data parallel over MLX's ring backend on 127.0.0.1: each of 2 workers takes half of every batch of 4 and the
    gradients are averaged. Answers of different lengths give the workers different token counts, so this also
    checks the loss is normalised over the global batch (a mean of per-worker means differs by ~1e-2 here)."""
    src = tmp_path / "facts.json"
    src.write_text(
        json.dumps(
            [{"question": q + "?" * i, "answer": a * (1 + i % 3)} for i, (q, a) in enumerate(FACTS * 2)],
            ensure_ascii=False,
        )
    )
    data.prepare([src], tmp_path / "data", valid=0.25, test=0.0)
    one, two = one_and_two_workers(
        _cfg(qwen2_dir, tmp_path / "data", tmp_path / "unused", batch_size=4, iters=3, steps_per_eval=3), tmp_path
    )
    a, b = mx.load(str(one / "adapters.safetensors")), mx.load(str(two / "adapters.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 5e-4, f"2 workers differ from 1 by {worst}"
    assert any(float(mx.abs(b[k]).max()) > 1e-2 for k in b if "lora_b" in k), "the adapter must have trained"


def one_and_two_workers(cfg: config.TrainConfig, tmp_path: Path) -> tuple[Path, Path]:
    """The run folders of `cfg` trained by one worker and by two over MLX's ring backend on 127.0.0.1."""
    path = tmp_path / "cfg.yaml"
    path.write_text(config.dump(cfg).replace(f"adapter_path: {cfg.adapter_path}\n", ""))
    launch = Path(sys.executable).parent / "mlx.launch"
    r = subprocess.run(
        [str(launch), "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2", sys.executable, "-m", "mlx_ft"]
        + ["train", "-c", str(path), "--adapter-path", str(tmp_path / "two")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return train(config.load(path, {"adapter_path": str(tmp_path / "one")})), tmp_path / "two"


def test_text_examples_train_every_token_even_without_a_chat_template(qwen2_dir, tmp_path, write_jsonl):
    src = write_jsonl("notes.jsonl", [{"text": f"第{i}号缸：水温{20 + i}度，pH {6 + i % 3}。"} for i in range(8)])
    data.prepare([src], tmp_path / "data", valid=0.0, test=0.0, stats=None)
    (ex, *_) = data.load_split(tmp_path / "data", "train")
    _, tok = load(str(qwen2_dir))
    ds = TokenizedChats([ex], tok, mask_prompt=True, max_seq_length=128, desc="test")
    ids, mask = ds[0]
    assert tok.decode(ids[:-1]) == ex.text and ids[-1] == tok.eos_token_id and mask == [1] * len(ids)
    run = train(
        _cfg(
            _without_chat_template(qwen2_dir, tmp_path), tmp_path / "data", tmp_path / "run", iters=2, steps_per_eval=10
        )
    )
    assert (run / "adapters.safetensors").is_file()
