"""GRPO: the group advantage and the clipped loss by hand, the reference and the gradient, and real runs through our
loop: resume exact, two workers equal one, a reward learned that no answer in the data shows."""

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load

from mlx_ft import config, data
from mlx_ft.errors import UserError
from mlx_ft.models import adapters
from mlx_ft.training.grpo import GRPO, group_advantages, token_losses
from mlx_ft.training.loss import token_logps
from mlx_ft.training.run import train
from tests.training.test_run import _cfg as run_cfg
from tests.training.test_run import one_and_two_workers

QUESTIONS = [
    "Name a fish.",
    "Name a colour.",
    "Name a river.",
    "Name a tree.",
    "Name a planet.",
    "Name a city.",
    "Name a bird.",
    "Name a stone.",
]

# Short answers earn more: a reward in characters, which no answer of the data shows the model how to earn.
SHORT = [{"name": "length", "weight": 1.0, "max": 16}]


def test_group_advantages_by_hand():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(rewards)
    std = math.sqrt(4 * 0.25 / 3)  # the sample standard deviation of 1, 0, 0, 1
    np.testing.assert_allclose(adv[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4), rtol=1e-12)
    assert (adv[1] == 0).all(), "a group whose answers all earn the same has no signal"
    std = math.sqrt(2 / 3)  # of 3, 1, 2, 2 around their mean 2
    np.testing.assert_allclose(adv[2], np.array([1.0, -1.0, 0.0, 0.0]) / (std + 1e-4), rtol=1e-12)


def test_clipped_loss_and_kl_by_hand():
    logp = mx.array([-1.0, -0.5, -2.0, -1.0])
    old = mx.array([-1.0, -1.0, -1.0, -1.1])
    ref = mx.array([-1.5, -0.5, -1.0, -1.0])
    adv = mx.array([2.0, 1.0, -1.0, -1.0])
    per, kl, clipped = token_losses(logp, old, ref, adv, beta=0.1, eps=0.2)
    expected_kl = [math.exp(-0.5) + 0.5 - 1, 0.0, math.e - 2, 0.0]
    expected_policy = [
        -2.0,  # ratio 1: -A
        -1.2,  # ratio e^0.5 = 1.65 with A > 0: clipped to 1.2
        0.8,  # ratio e^-1 = 0.37 with A < 0: clipped to 0.8, so -min(-0.37, -0.8) = 0.8
        math.exp(0.1),  # ratio e^0.1 = 1.105 with A < 0: inside the clip where it matters, -min(-1.105, -1.105)
    ]
    np.testing.assert_allclose(np.array(kl), expected_kl, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(per), np.array(expected_policy) + 0.1 * np.array(expected_kl), rtol=1e-5)
    assert clipped.tolist() == [False, True, True, False]
    _, kl0, _ = token_losses(logp, old, ref, adv, beta=0.0, eps=0.2)
    assert (np.array(kl0) == 0).all(), "beta 0: no KL term at all"


@pytest.fixture
def prompts_data(tmp_path: Path) -> Path:
    rows = [{"question": q, "answer": "Something"} for q in QUESTIONS]
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    data.prepare([tmp_path / "qa.json"], tmp_path / "data", valid=0.0, test=0.0)
    (tmp_path / "data" / "valid.jsonl").write_text((tmp_path / "data" / "train.jsonl").read_text())
    return tmp_path / "data"


GRPO_SETTINGS = dict(
    train_mode="grpo",
    rewards=SHORT,
    group_size=4,
    max_completion_tokens=6,
    temperature=1.0,
    batch_size=2,
    iters=4,
    steps_per_report=2,
    steps_per_eval=4,
    save_every=2,
    val_batches=1,
    max_seq_length=64,
)


def _cfg(model: Path, data_dir: Path, run: Path, **kw) -> config.TrainConfig:
    return run_cfg(model, data_dir, run, **{**GRPO_SETTINGS, **kw})


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _prepared(qwen2_dir: Path, data_dir: Path, **kw):
    """The tiny model with a fresh adapter, the objective bound to it, and one prepared training batch."""
    cfg = _cfg(qwen2_dir, data_dir, data_dir / "unused", **kw)
    model, tok = load(str(qwen2_dir))
    objective = GRPO(cfg)
    prompts = objective.tokenize(data.load_split(data_dir, "train"), tok, cfg.max_seq_length, "train")
    adapters.attach(model, cfg)
    objective.bind(cfg, model)
    batch = objective.prepare(next(objective.batches(prompts, cfg.batch_size, cfg.max_seq_length, loop=True, seed=0)))
    return model, objective, batch


def test_kl_is_zero_at_the_reference_and_gradients_reach_only_the_adapter(qwen2_dir, prompts_data):
    model, objective, batch = _prepared(qwen2_dir, prompts_data)
    ids, mask, positions, adv, ref, old, norm, stats = batch
    logp, w = token_logps(model, ids, mask, positions)
    np.testing.assert_allclose(np.array(ref), np.array(logp), atol=1e-6, err_msg="a fresh adapter is the reference")
    loss, aux = objective.loss(model, *batch)
    metrics = dict(zip(objective.metrics, aux.tolist()))
    assert metrics["kl"] == pytest.approx(0, abs=1e-6)
    assert float(w.sum()) == float(mask[:, 1:].sum()), "every answer token, and only those, is learned"
    assert metrics["answer_tokens"] * 8 == pytest.approx(float(w.sum()))
    assert 0 <= metrics["no_signal"] <= 1 and metrics["sample_s"] > 0
    assert metrics["reward"] == pytest.approx(metrics["reward_length"]), "one reward of weight 1: the total"
    assert float(mx.abs(adv).max()) > 0, "answers of different lengths: some group has a signal"

    for name, p in tree_flatten(model.trainable_parameters()):  # a trained-looking adapter: lora_b no longer zero
        model.update(tree_unflatten([(name, mx.random.normal(p.shape) * 0.05)]))
    (loss, aux), grads = nn.value_and_grad(model, objective.loss)(model, *batch)
    assert dict(zip(objective.metrics, aux.tolist()))["kl"] > 0, "away from the reference, the KL is positive"
    flat = dict(tree_flatten(grads))
    assert flat and all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for k in flat)
    assert any(float(mx.abs(g).max()) > 0 for g in flat.values())


def test_a_tiny_model_learns_to_answer_short_from_the_reward_alone(qwen2_dir, prompts_data):
    """No answer in the data shows it (they are all "Something", which the random model never writes): the only way
    up is the reward. The random-weight model's logits are nearly flat (tied embeddings after a norm), so it samples at
    temperature 0.1, where a few tokens per place compete; its answers start at ~30 characters, and 6 steps take the
    sampled answers' mean reward up by a margin, and the validation reward (greedy answers) with it."""
    cfg = _cfg(
        qwen2_dir,
        prompts_data,
        prompts_data / "run",
        fine_tune_type="full",
        iters=6,
        batch_size=4,
        group_size=8,
        learning_rate=1e-3,
        temperature=0.1,
        steps_per_report=2,
        steps_per_eval=6,
        beta=0.0,
    )
    rows = _rows(train(cfg))
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert rewards[-1] > rewards[0] + 0.2, rewards
    val = [r for r in rows if "val_reward" in r]
    assert val[-1]["val_reward"] > val[0]["val_reward"] + 0.2, val
    assert val[-1]["val_loss"] == pytest.approx(-val[-1]["val_reward"])
    samples = [r for r in rows if "samples" in r][-1]["samples"]
    assert samples and {"prompt", "answer", "reward"} <= set(samples[0])


def test_resume_ends_equal_to_an_uninterrupted_run(qwen2_dir, prompts_data, tmp_path):
    """The sampled answers (seeded per step, prompt and answer), the optimizer state and the reference all come
    back; grpo_updates 2 also checks the clipped second update."""
    kw = dict(optimizer="adamw", grpo_updates=2, beta=0.1, steps_per_eval=100, iters=2, save_every=1)
    kw.update(steps_per_report=1)
    straight = train(_cfg(qwen2_dir, prompts_data, tmp_path / "straight", **kw))
    stopped = train(_cfg(qwen2_dir, prompts_data, tmp_path / "resumed", **{**kw, "iters": 1}))
    resumed = train(config.for_resume(stopped, {"iters": 2}, []), resume=True)
    a, b = mx.load(str(straight / "adapters.safetensors")), mx.load(str(resumed / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=0, atol=1e-6, err_msg=k)
    rows_a, rows_b = _rows(straight), _rows(resumed)
    assert [r["reward"] for r in rows_a if "reward" in r] == [r["reward"] for r in rows_b if "reward" in r]
    assert any(r["clipped"] > 0 or r["kl"] > 0 for r in rows_b if "kl" in r)


def test_two_workers_over_mlx_launch_match_one_worker(qwen2_dir, prompts_data, tmp_path):
    """Each of 2 workers samples the answers to its own prompts (each answer with its own seed, as on one worker),
    the advantages are per group, and the loss is normalised over both workers' answer tokens: one step equals one
    worker's. Only one: a batch of 8 answers computes logits with other floating-point noise than one of 16, and on
    this random model's flat distribution that flips a sampled token now and then, after which the runs part."""
    cfg = _cfg(qwen2_dir, prompts_data, tmp_path / "unused", iters=1, steps_per_eval=1, steps_per_report=1)
    one, two = one_and_two_workers(cfg, tmp_path)
    reward = lambda run: [r["reward"] for r in _rows(run) if "reward" in r]  # noqa: E731
    assert reward(one) == reward(two), "the same answers were sampled"
    a, b = mx.load(str(one / "adapters.safetensors")), mx.load(str(two / "adapters.safetensors"))
    worst = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-4, f"2 workers differ from 1 by {worst}"
    assert any(float(mx.abs(b[k]).max()) > 1e-4 for k in b if "lora_b" in k), "the adapter must have trained"


def test_init_from_an_sft_run_takes_its_adapter_and_shape(qwen2_dir, prompts_data, tmp_path, capsys):
    sft = train(run_cfg(qwen2_dir, prompts_data, tmp_path / "sft", iters=2, steps_per_eval=10, num_layers=1))
    cfg = _cfg(qwen2_dir, prompts_data, tmp_path / "grpo", iters=1, init_from=str(sft), num_layers=2)
    run = train(cfg)
    assert "starting from" in capsys.readouterr().err
    saved = config.load(run / "config.yaml")
    assert saved.num_layers == 1 and saved.resume_adapter_file == str(sft / "adapters.safetensors")
    with pytest.raises(UserError, match="not a finished run"):
        train(_cfg(qwen2_dir, prompts_data, tmp_path / "x", init_from=str(tmp_path / "nowhere")))


def test_config_refuses_what_grpo_cannot_do():
    with pytest.raises(UserError, match="rewards"):
        config.build({"train_mode": "grpo", "rewards": []})
    with pytest.raises(UserError, match="grad_accumulation_steps"):
        config.build({"train_mode": "grpo", "grpo_updates": 2, "grad_accumulation_steps": 2, "save_every": 2})
    with pytest.raises(UserError, match="max_completion_tokens"):
        config.build({"train_mode": "grpo", "max_completion_tokens": 64, "max_seq_length": 64})
    with pytest.raises(UserError, match="beta"):
        config.build({"train_mode": "dpo", "beta": 0})
    with pytest.raises(UserError, match="reward_file"):
        config.build({"train_mode": "sft", "reward_file": "r.py"})
    assert config.build({"train_mode": "grpo", "beta": 0}).beta == 0


def test_answers_without_signal_leave_the_update_and_change_nothing(qwen2_dir, prompts_data):
    """beta 0: an answer of advantage 0 adds nothing to the loss or its gradient, so the update leaves it out; the
    loss and gradient are those of the whole batch (its normaliser still counts every answer)."""
    sizes = []
    results = []
    for prune in (False, True):
        cfg = _cfg(qwen2_dir, prompts_data, prompts_data / "unused", beta=0.0, temperature=0.1, max_completion_tokens=2)
        model, tok = load(str(qwen2_dir))
        objective = GRPO(cfg)
        objective.prune = prune
        prompts = objective.tokenize(data.load_split(prompts_data, "train"), tok, cfg.max_seq_length, "train")
        adapters.attach(model, cfg)
        for name, p in tree_flatten(model.trainable_parameters()):
            model.update(tree_unflatten([(name, mx.random.normal(p.shape, key=mx.random.key(1)) * 0.05)]))
        objective.bind(cfg, model)
        order = dict(loop=True, seed=3)
        batch = objective.prepare(next(objective.batches(prompts, cfg.batch_size, cfg.max_seq_length, **order)))
        sizes.append(batch[0].shape[0])
        (loss, _), grads = nn.value_and_grad(model, objective.loss)(model, *batch)
        results.append((float(loss), dict(tree_flatten(grads))))
    assert sizes[1] < sizes[0] == 8, f"some group had no signal at temperature 0.1: {sizes}"
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5, abs=1e-7)
    for k, g in results[0][1].items():
        np.testing.assert_allclose(np.array(results[1][1][k]), np.array(g), rtol=1e-4, atol=1e-7, err_msg=k)
