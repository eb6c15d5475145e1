"""eval, infer and chat on real trained runs: a short LoRA training on a memorisable set takes exact match from the
base model's 0% to 100%, and every way of asking the run (batched eval, streamed infer, batch infer, terminal chat)
gives the same answers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_ft import cli, config
from mlx_ft.errors import UserError
from mlx_ft.inference import evaluate
from mlx_ft.models import loader
from mlx_ft.training.run import train
from tests.conftest import REPO

ROUTER = [
    ("怎么把地类图斑数据发布成服务？", "数据平台相关问题"),
    ("今天西安天气怎么样？", "通用问题"),
    ("数据平台的影像数据在哪里下载？", "数据平台相关问题"),
    ("帮我写一首关于春天的诗", "通用问题"),
    ("如何在数据平台上传矢量数据？", "数据平台相关问题"),
    ("一加一等于几？", "通用问题"),
]
CARE = [("金鱼每天喂几次？", "每天一到两次，三分钟内吃完。"), ("斗鱼要加热棒吗？", "要，水温保持26度左右。")]


def _rows() -> list[dict]:
    def row(q: str, a: str, task: str) -> dict:
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "task": task}

    return [row(q, a, "route") for q, a in ROUTER] + [row(q, a, "care") for q, a in CARE]


@pytest.fixture(scope="module")
def memorised(smollm2_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A SmolLM2 LoRA run trained on 8 examples, and a data folder whose every split is those same 8 examples."""
    tmp = tmp_path_factory.mktemp("memorised")
    data_dir = tmp / "data"
    data_dir.mkdir()
    for split in ("train", "valid", "test"):
        (data_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), encoding="utf-8"
        )
    cfg = config.build(
        dict(
            model=str(smollm2_dir),
            data=str(data_dir),
            adapter_path=str(tmp / "run"),
            fine_tune_type="lora",
            num_layers=16,
            batch_size=4,
            iters=30,
            learning_rate=5e-4,
            steps_per_report=10,
            steps_per_eval=30,
            save_every=30,
            max_seq_length=128,
            lora_parameters={"rank": 8, "scale": 20.0, "dropout": 0.0},
        )
    )
    return train(cfg), data_dir


def test_eval_shows_training_took_exact_match_from_base_to_100(memorised, capsys):
    run, _ = memorised
    assert cli.main(["eval", str(run), "--compare-base"]) == 0
    table = capsys.readouterr().out
    assert "base" in table and "tuned" in table and "exact match" in table and "task = route" in table

    result = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    base, tuned = result["metrics"]["base"], result["metrics"]["tuned"]
    assert base["exact_match"] == 0.0 and tuned["exact_match"] == 1.0
    assert tuned["loss"] < base["loss"] and tuned["perplexity"] < base["perplexity"]
    assert tuned["bleu4"] == 1.0 and tuned["rouge_l"] == 1.0 and tuned["length_ratio"] == 1.0
    route = result["groups"]["tuned"]["route"]
    assert route["label_accuracy"] == 1.0 and route["labels"] == ["数据平台相关问题", "通用问题"]
    assert route["confusion"] == {"数据平台相关问题": {"数据平台相关问题": 3}, "通用问题": {"通用问题": 3}}
    assert result["groups"]["base"]["route"]["label_accuracy"] == 0.0

    rows = [json.loads(x) for x in (run / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["expected"] for r in rows] == [a for _, a in ROUTER + CARE]
    assert all(r["tuned"] == r["expected"] and r["base"] != r["expected"] for r in rows)
    assert all(r["scores"]["tuned"] == {"exact_match": 1.0, "bleu4": 1.0, "rouge_l": 1.0} for r in rows)
    assert rows[0]["task"] == "route" and rows[0]["input"] == [{"role": "user", "content": ROUTER[0][0]}]


def test_eval_constrained_holds_each_task_to_its_pattern_and_reports_both(smollm2_dir, memorised, tmp_path, capsys):
    """The plain base model (one column, then the same held): its route answers become labels once held to the
    route task's pattern; the care task has none, so its answers stay as they were."""
    _, data_dir = memorised
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "recipe.yaml").write_text(
        "tasks:\n"
        "  route:\n    template: '{input}'\n    pattern: '(?P<label>数据平台相关问题|通用问题)'\n"
        "  care:\n    template: '{input}'\n",
        encoding="utf-8",
    )
    out = tmp_path / "ev"
    argv = ["eval", str(smollm2_dir), "--data", str(data_dir), "--constrained", "--recipe", str(recipe)]
    assert cli.main([*argv, "--out", str(out), "--max-tokens", "24"]) == 0
    assert "model constrained" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert list(result["metrics"]) == ["model", "model constrained"]
    assert "loss" not in result["metrics"]["model constrained"], "the loss does not change: scored once"
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = {"数据平台相关问题", "通用问题"}
    for r in rows:
        if r["task"] == "route":
            assert r["model"] not in labels and r["model constrained"] in labels  # held, even the base gives a label
        else:  # no pattern: the same greedy answers
            assert r["model constrained"] == r["model"]
    assert result["groups"]["model constrained"]["route"]["label_accuracy"] > 0.0
    assert cli.main(["eval", str(smollm2_dir), "--data", str(data_dir), "--constrained"]) == 2
    assert "--constrained and --recipe go together" in capsys.readouterr().err


def test_eval_loss_is_the_loss_training_measured(memorised, tmp_path):
    """The loader rebuilds the run exactly: its loss on the validation split is training's last val_loss."""
    run, _ = memorised
    report = evaluate.evaluate(str(run), split="valid", out=tmp_path / "ev")
    last_val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x][-1]
    assert report.columns["tuned"]["loss"] == pytest.approx(last_val["val_loss"], rel=1e-4)


def test_infer_streams_and_batches_the_same_answers(memorised, tmp_path, capsys):
    run, _ = memorised
    assert cli.main(["infer", str(run), ROUTER[1][0]]) == 0
    assert capsys.readouterr().out == ROUTER[1][1] + "\n"

    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps(x, ensure_ascii=False) + "\n"
            for x in [
                {"prompt": CARE[0][0], "id": 7},
                {
                    "messages": [
                        {"role": "user", "content": ROUTER[2][0]},
                        {"role": "assistant", "content": "(expected, ignored)"},
                    ]
                },
            ]
        ),
        encoding="utf-8",
    )
    assert cli.main(["infer", str(run), "--file", str(src), "--out", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [o["output"] for o in out] == [CARE[0][1], ROUTER[2][1]] and out[0]["id"] == 7


def test_infer_reports_bad_batch_lines_with_file_and_line(memorised, tmp_path, capsys):
    run, _ = memorised
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "ok"}\n{"nothing": 1}\nnot json\n', encoding="utf-8")
    assert cli.main(["infer", str(run), "--file", str(src), "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2:" in err and f"{src}:3:" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def _chat(run: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mlx_ft", "chat", str(run), "--temp", "0"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_chat_keeps_history_and_obeys_commands(memorised, tmp_path):
    run, _ = memorised
    lines = [
        CARE[1][0],
        "/system 你是观赏鱼专家。",
        "/save conv.json",
        "/clear",
        "/save empty.json",
        "/system",
        ROUTER[3][0],
    ]
    proc = _chat(run, tmp_path)
    out, err = proc.communicate("\n".join(lines) + "\n", timeout=600)  # then end of input: Ctrl-D
    assert proc.returncode == 0, err
    assert CARE[1][1] in out and ROUTER[3][1] in out and "Traceback" not in err
    saved = json.loads((tmp_path / "conv.json").read_text(encoding="utf-8"))["messages"]
    assert saved == [
        {"role": "system", "content": "你是观赏鱼专家。"},
        {"role": "user", "content": CARE[1][0]},
        {"role": "assistant", "content": CARE[1][1]},
    ]
    assert json.loads((tmp_path / "empty.json").read_text(encoding="utf-8"))["messages"] == [saved[0]]


def test_chat_exits_cleanly_on_ctrl_c(memorised, tmp_path):
    run, _ = memorised
    proc = _chat(run, tmp_path)
    deadline = time.time() + 300
    while "chatting with" not in (line := proc.stdout.readline()):
        assert line and time.time() < deadline, "chat never showed its banner"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err


def test_a_plain_model_is_evaluated_on_named_data(smollm2_dir, memorised, tmp_path):
    _, data_dir = memorised
    report = evaluate.evaluate(str(smollm2_dir), str(data_dir), out=tmp_path / "ev", max_tokens=8)
    assert list(report.columns) == ["model"] and report.columns["model"]["n"] == 8
    with pytest.raises(UserError, match="--compare-base needs a run folder"):
        evaluate.evaluate(str(smollm2_dir), str(data_dir), compare_base=True)
    with pytest.raises(UserError, match="--data"):
        evaluate.evaluate(str(smollm2_dir))


def test_unfinished_run_points_at_its_checkpoints(memorised, tmp_path):
    run, _ = memorised
    broken = tmp_path / "run"
    broken.mkdir()
    for name in ("config.yaml", "adapter_config.json"):
        (broken / name).write_bytes((run / name).read_bytes())
    (broken / "best").mkdir()
    (broken / "best" / "adapters.safetensors").write_bytes((run / "adapters.safetensors").read_bytes())
    with pytest.raises(UserError, match=r"no adapters.safetensors .*best"):
        loader.load(str(broken))
    assert loader.load(str(broken / "best")).run == broken, "an adapter folder inside a run loads as that run"


def test_qlora_run_is_rebuilt_on_a_quantized_base(qwen2_dir, tmp_path):
    """A QLoRA adapter only fits the quantized base it was trained on: the loader quantizes the base the same way,
    so its loss on the validation split is the one training measured."""
    import mlx.nn as nn

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "valid"):
        (data_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), encoding="utf-8"
        )
    run = train(
        config.build(
            dict(
                model=str(qwen2_dir),
                data=str(data_dir),
                adapter_path=str(tmp_path / "run"),
                quantize=4,
                num_layers=2,
                batch_size=4,
                iters=2,
                learning_rate=1e-3,
                steps_per_eval=2,
                max_seq_length=128,
            )
        )
    )
    loaded = loader.load(str(run))
    assert isinstance(loaded.model.layers[0].self_attn.q_proj.linear, nn.QuantizedLinear)
    report = evaluate.evaluate(str(run), split="valid", out=tmp_path / "ev", max_tokens=4)
    last_val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in x][-1]
    assert report.columns["tuned"]["loss"] == pytest.approx(last_val["val_loss"], rel=1e-4)


def test_help_explains_eval_infer_chat():
    out = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "eval", "--help"], capture_output=True, text=True, cwd=REPO
    ).stdout
    assert "--compare-base" in out and "--by-field" in out and "confusion" in out


def test_fused_adapter_answers_like_the_unfused_one(memorised):
    """infer/chat/serve merge LoRA into the weights for speed: same logits as base + adapter layers."""
    import mlx.core as mx
    import numpy as np

    from mlx_ft.chat_template import prompt_ids

    run, _ = memorised
    plain, fused = loader.load(str(run), fuse=False), loader.load(str(run))
    assert not any(hasattr(m, "lora_a") for _, m in fused.model.named_modules())
    ids = mx.array([prompt_ids(plain.tokenizer, [{"role": "user", "content": ROUTER[0][0]}])])
    a, b = np.array(plain.model(ids)), np.array(fused.model(ids))
    assert np.abs(a - b).max() < 1e-3 and (a.argmax(-1) == b.argmax(-1)).all()
