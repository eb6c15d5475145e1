"""DPO and ORPO: the losses by hand, the pair batches, the reference, and real training runs through our loop."""

import json
import math
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from mlx_ft import config, data
from mlx_ft.errors import UserError
from mlx_ft.inference import evaluate
from mlx_ft.models import adapters
from mlx_ft.training.batches import TokenizedPairs, pair_batches
from mlx_ft.training.loss import sequence_logps
from mlx_ft.training.objectives import pair_objective as Objective
from mlx_ft.training.preference import Reference, dpo_losses, orpo_losses, pair_scores
from mlx_ft.training.run import train
from tests.conftest import REPO
from tests.data.test_preference import lf_data  # noqa: F401  (the fixture)
from tests.training.test_run import _cfg as run_cfg
from tests.training.test_run import one_and_two_workers

# Half the pairs prefer "yes", half "no": a model that merely likes one word ranks exactly half of them right.
PAIRS = [
    ("Is the sea salty?", "yes", "no"),
    ("Is fire cold?", "no", "yes"),
    ("Do fish swim?", "yes", "no"),
    ("Can stones fly?", "no", "yes"),
    ("Is snow white?", "yes", "no"),
    ("Do cats bark?", "no", "yes"),
    ("Is the sun hot?", "yes", "no"),
    ("Is ice a gas?", "no", "yes"),
]


def test_dpo_loss_by_hand():
    # chosen gains 1 nat over the reference, rejected loses 1: beta * (1 - (-1)) = 1 → loss log(1 + e^-1).
    loss, r_c, r_r = dpo_losses(mx.array([-3.0]), mx.array([-5.0]), mx.array([-4.0]), mx.array([-4.0]), beta=0.5)
    assert float(r_c[0]) == pytest.approx(0.5) and float(r_r[0]) == pytest.approx(-0.5)
    assert float(loss[0]) == pytest.approx(0.313262, abs=1e-5)
    # No difference from the reference on either side: log 2.
    loss, *_ = dpo_losses(mx.array([-7.0]), mx.array([-2.0]), mx.array([-7.0]), mx.array([-2.0]), beta=0.1)
    assert float(loss[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_orpo_loss_by_hand():
    # mean log-probs -0.5 and -1.0: log odds 0.432752 and -0.541325, their difference 0.974077;
    # -log sigmoid(0.974077) = 0.320310; loss = 0.5 + 0.1 * 0.320310.
    loss, r_c, r_r = orpo_losses(mx.array([-0.5]), mx.array([-1.0]), beta=0.1)
    assert float(loss[0]) == pytest.approx(0.5 + 0.1 * 0.320310, abs=1e-5)
    assert (float(r_c[0]), float(r_r[0])) == pytest.approx((-0.05, -0.1))
    # Near-certain answers stay finite.
    loss, *_ = orpo_losses(mx.array([-1e-9]), mx.array([-20.0]), beta=0.1)
    assert np.isfinite(float(loss[0]))


def _pair_examples(extra_turn: bool = False) -> list[data.Example]:
    out = []
    for i, (q, c, r) in enumerate(PAIRS):
        before = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}] if extra_turn else []
        messages = [*before, {"role": "user", "content": q}, {"role": "assistant", "content": c}]
        out.append(data.Example(f"pairs:{i + 1}", messages, rejected={"role": "assistant", "content": r}))
    return out


def _numpy_logps(model: nn.Module, ids: mx.array, mask: mx.array) -> np.ndarray:
    logits = np.array(model(ids[:, :-1]).astype(mx.float32))
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1)[..., None]
    )
    picked = np.take_along_axis(logp, np.array(ids[:, 1:])[..., None], axis=-1)[..., 0]
    return (picked * np.array(mask[:, 1:])).sum(1)


def test_pairs_learn_only_the_final_answer_and_logps_match_full_logits(qwen2_dir):
    model, tok = load(str(qwen2_dir))
    pairs = TokenizedPairs(_pair_examples(extra_turn=True), tok, max_seq_length=128, desc="test")
    (c_ids, c_mask), (r_ids, r_mask) = pairs.items[0]
    assert tok.decode([i for i, m in zip(c_ids, c_mask) if m]).strip() == "yes<|im_end|>", "the final answer only"
    assert tok.decode([i for i, m in zip(r_ids, r_mask) if m]).strip() == "no<|im_end|>"
    assert c_ids[: c_mask.index(1)] == r_ids[: r_mask.index(1)], "one shared prompt, the earlier turns masked"
    ids, mask, positions, weight = next(pair_batches(pairs, 4, 128))
    assert ids.shape[0] == 8 and weight.tolist() == [1.0] * 4
    logps, counts = sequence_logps(model, ids, mask, positions)
    np.testing.assert_allclose(np.array(logps), _numpy_logps(model, ids, mask), rtol=1e-4)
    assert counts.tolist() == mask[:, 1:].sum(axis=1).astype(mx.float32).tolist()


def test_dpo_gradient_reaches_only_the_adapter_and_the_reference_is_the_base(qwen2_dir):
    model, tok = load(str(qwen2_dir))
    pairs = TokenizedPairs(_pair_examples(), tok, max_seq_length=128, desc="test")
    batch = next(pair_batches(pairs, 4, 128))
    base_logps, _ = sequence_logps(model, *batch[:3])
    cfg = config.build({"num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}})
    adapters.attach(model, cfg)
    for name, p in tree_flatten(model.trainable_parameters()):  # a trained-looking adapter: lora_b no longer zero
        model.update(_nested(name, mx.random.normal(p.shape) * 0.05))
    objective = Objective("dpo", 0.1, Reference(model))
    full = objective.with_reference(batch)
    np.testing.assert_allclose(np.array(full[-1]), np.array(base_logps), rtol=1e-5, err_msg="reference = the base")
    assert any(type(m).__name__ == "LoRALinear" for m in model.modules()), "the adapter is back after the reference"
    (loss, metrics), grads = nn.value_and_grad(model, objective.loss)(model, *full)
    flat = dict(tree_flatten(grads))
    assert flat and all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for k in flat)
    assert any(float(mx.abs(g).max()) > 0 for g in flat.values())
    policy, _ = sequence_logps(model, *batch[:3])
    r_c, r_r = 0.1 * (policy[:4] - base_logps[:4]), 0.1 * (policy[4:] - base_logps[4:])
    expected = float(mx.mean(-nn.log_sigmoid(r_c - r_r)))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert metrics.tolist() == pytest.approx(
        [float(r_c.mean()), float(r_r.mean()), float((r_c - r_r).mean()), float((r_c > r_r).mean())], rel=1e-4
    )


def _nested(name: str, value: mx.array) -> dict:
    from mlx.utils import tree_unflatten

    return tree_unflatten([(name, value)])


@pytest.fixture
def pair_data(tmp_path: Path) -> Path:
    rows = [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    data.prepare([tmp_path / "pairs.json"], tmp_path / "data", valid=0.0, test=0.0)
    # Validation and test on the training pairs themselves: the question here is whether preferences moved.
    for split in ("valid", "test"):
        (tmp_path / "data" / f"{split}.jsonl").write_text((tmp_path / "data" / "train.jsonl").read_text())
    return tmp_path / "data"


# test_run's settings, changed for these pairs: all layers, batches of 4 pairs, 32 steps.
PREFERENCE = dict(
    train_mode="dpo",
    num_layers=-1,
    batch_size=4,
    iters=32,
    steps_per_report=4,
    steps_per_eval=16,
    save_every=16,
    max_seq_length=64,
    lora_parameters={"rank": 8, "scale": 10.0, "dropout": 0.0},
)


def _cfg(model: Path, data_dir: Path, run: Path, **kw) -> config.TrainConfig:
    return run_cfg(model, data_dir, run, **{**PREFERENCE, **kw})


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_run_moves_training_pair_preferences_and_eval_shows_base_beside_tuned(qwen2_dir, pair_data, tmp_path):
    """The random-weight fixture has to learn which word each prompt prefers: its attention is random, so a LoRA on
    it barely tells the prompts apart in a short run; a full fine-tune (whose reference is a frozen copy) does."""
    run = train(_cfg(qwen2_dir, pair_data, tmp_path / "run", fine_tune_type="full", batch_size=8, beta=0.5))
    rows = _rows(run)
    train_rows = [r for r in rows if "loss" in r]
    assert all({"rewards_chosen", "rewards_rejected", "reward_margin", "accuracy"} <= set(r) for r in train_rows)
    val = [r for r in rows if "val_loss" in r]
    assert val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5), "step 0: the policy is the reference"
    assert val[-1]["val_accuracy"] >= 0.875 and val[-1]["val_reward_margin"] > 0.5
    assert val[-1]["val_loss"] < 0.6

    report = evaluate.evaluate(str(run), split="test", compare_base=True, max_tokens=2)
    base, tuned = report.columns["base"], report.columns["tuned"]
    assert base["preference_accuracy"] == 0.5, "the base likes one word: it ranks exactly half of the pairs right"
    assert tuned["preference_accuracy"] >= 0.875
    assert tuned["logp_margin"] > base["logp_margin"] + 1
    assert "preference accuracy" in evaluate.format_report(report)


def test_orpo_run_trains_without_a_reference(qwen2_dir, pair_data, tmp_path, capsys):
    """ORPO through the same loop. On this random-weight fixture its SFT term dominates a short run: the chosen
    answers get likelier, and the odds-ratio term keeps the rejected ones from rising as fast; in 16 steps it does
    not yet tell the prompts apart (DPO's test above shows the pairs separating)."""
    cfg = _cfg(qwen2_dir, pair_data, tmp_path / "run", train_mode="orpo", fine_tune_type="full", batch_size=8)
    run = train(config.build({**cfg.to_dict(), "beta": 1.0, "iters": 16, "steps_per_eval": 16}))
    assert "DPO reference" not in capsys.readouterr().err, "ORPO builds no reference"
    val = [r for r in _rows(run) if "val_loss" in r]
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 1
    assert val[-1]["val_rewards_chosen"] > val[0]["val_rewards_chosen"] + 0.1


def test_dpo_resume_ends_equal_to_an_uninterrupted_run(qwen2_dir, pair_data, tmp_path):
    """Dropout and AdamW: the random stream, the optimizer state and the reference all have to come back."""
    kw = dict(
        iters=4,
        save_every=2,
        steps_per_eval=100,
        optimizer="adamw",
        num_layers=2,
        batch_size=2,
        lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.2},
    )
    straight = train(_cfg(qwen2_dir, pair_data, tmp_path / "straight", **kw))
    stopped = train(_cfg(qwen2_dir, pair_data, tmp_path / "resumed", **{**kw, "iters": 2}))
    resumed = train(config.for_resume(stopped, {"iters": 4}, []), resume=True)
    a, b = mx.load(str(straight / "adapters.safetensors")), mx.load(str(resumed / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=0, atol=1e-6, err_msg=k)
    assert [r["step"] for r in _rows(resumed) if "loss" in r] == [2, 4], "each report once"


def test_reference_adapter_and_warm_start_from_an_sft_run(qwen2_dir, pair_data, tmp_path):
    sft = train(_cfg(qwen2_dir, pair_data, tmp_path / "sft", train_mode="sft", iters=4, steps_per_eval=100))
    adapter = str(sft / "adapters.safetensors")
    run = train(
        _cfg(
            qwen2_dir,
            pair_data,
            tmp_path / "dpo",
            iters=4,
            steps_per_eval=4,
            resume_adapter_file=adapter,
            reference_adapter_file=adapter,
        )
    )
    val = [r for r in _rows(run) if "val_loss" in r]
    assert val[0]["val_reward_margin"] == 0.0 and val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6), (
        "at step 0 the warm-started policy is its reference"
    )
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    with pytest.raises(UserError, match="does not fit this run's dora layers"):
        train(_cfg(qwen2_dir, pair_data, tmp_path / "bad", fine_tune_type="dora", reference_adapter_file=adapter))


def test_preference_modes_refuse_data_without_pairs_and_packing(qwen2_dir, tmp_path, write_jsonl):
    src = write_jsonl("qa.jsonl", [{"question": f"q{i}?", "answer": "a"} for i in range(4)])
    data.prepare([src], tmp_path / "data", valid=0.0, test=0.0)
    with pytest.raises(data.DataError, match=r"train.jsonl:1: not a preference pair"):
        train(_cfg(qwen2_dir, tmp_path / "data", tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="set pack: false"):
        _cfg(qwen2_dir, tmp_path / "data", tmp_path / "run", pack=True)
    with pytest.raises(UserError, match="reference_adapter_file' is for train_mode dpo"):
        _cfg(qwen2_dir, tmp_path / "data", tmp_path / "run", train_mode="orpo", reference_adapter_file="x")


def test_llama_factory_dpo_demo_trains_a_few_steps(lf_data, qwen2_dir, tmp_path):  # noqa: F811
    data.prepare([lf_data / "dataset_info.json"], tmp_path / "data", datasets=["dpo_en_demo"])
    cfg = _cfg(qwen2_dir, tmp_path / "data", tmp_path / "run", iters=2, batch_size=2, max_seq_length=512)
    run = train(config.build({**cfg.to_dict(), "steps_per_eval": 2, "val_batches": 2, "steps_per_report": 2}))
    rows = _rows(run)
    assert [r["step"] for r in rows if "loss" in r] == [2] and all(np.isfinite(r.get("loss", 0)) for r in rows)
    pairs = TokenizedPairs(data.load_split(tmp_path / "data", "test")[:4], load(str(qwen2_dir))[1], 64, "x")
    assert pair_scores(load(str(qwen2_dir))[0], pairs, 2, 64)["pairs"] == len(pairs)


def test_cli_trains_dpo_with_its_flags_and_eval_prints_preference_accuracy(qwen2_dir, pair_data, tmp_path):
    run = tmp_path / "run"
    common = ["--model", str(qwen2_dir), "--data", str(pair_data), "--adapter-path", str(run)]
    sizes = ["--num-layers", "2", "--batch-size", "4", "--iters", "2", "--steps-per-report", "1"]
    r = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "train", *common, *sizes, "--train-mode", "dpo", "--beta", "0.2"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("step 2/2  loss")]
    assert lines and all(w in lines[0] for w in ("acc", "margin", "chosen", "rejected", "tok/s"))
    assert config.load(run / "config.yaml").beta == 0.2
    r = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "eval", str(run), "--compare-base", "--max-tokens", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "preference accuracy" in r.stdout and "log-prob margin" in r.stdout


def test_two_workers_over_mlx_launch_match_one_worker(qwen2_dir, pair_data, tmp_path):
    """DPO data-parallel: each of 2 workers takes 2 of every 4 pairs; the averaged gradient is the 4-pair mean."""
    one, two = one_and_two_workers(
        _cfg(qwen2_dir, pair_data, tmp_path / "unused", num_layers=2, iters=3, steps_per_eval=3), tmp_path
    )
    a, b = mx.load(str(one / "adapters.safetensors")), mx.load(str(two / "adapters.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 5e-4, f"2 workers differ from 1 by {worst}"
    assert any(float(mx.abs(b[k]).max()) > 1e-3 for k in b if "lora_b" in k), "the adapter must have trained"
    rows_one, rows_two = _rows(one), _rows(two)
    last = [r for r in rows_two if "val_accuracy" in r][-1]
    assert last["val_accuracy"] == pytest.approx([r for r in rows_one if "val_accuracy" in r][-1]["val_accuracy"])
