"""Tool conversations train through the model's own chat template: the calls are learned, the results are not, and
a model whose template cannot write tools is refused before anything is trained."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlx_lm.utils import load_tokenizer

from mlx_ft import chat_template, config, data
from mlx_ft.training.batches import TokenizedChats
from mlx_ft.training.run import train
from tests.conftest import REPO

GLAIVE = REPO / "tests" / "data" / "llamafactory" / "dataset_info.json"


@pytest.fixture
def tool_data(tmp_path: Path) -> Path:
    """LLaMA-Factory's glaive tool-call demo (the sample in tests/data), prepared."""
    data.prepare([GLAIVE], tmp_path / "data", datasets=["glaive_toolcall_en_demo"], valid=0.2, test=0.0)
    return tmp_path / "data"


def test_training_rows_carry_the_tools_and_learn_the_calls(qwen3_dir, tool_data):
    tok = load_tokenizer(Path(qwen3_dir))
    examples = data.load_split(tool_data, "train")
    chats = TokenizedChats(examples, tok, mask_prompt=True, max_seq_length=4096, desc="train")
    per_example = [chat_template.training_sequences(tok, ex.messages, tools=ex.tools) for ex in examples]
    assert chats.items == [seq for seqs in per_example for seq in seqs]
    with_calls = 0
    for ex, seqs in zip(examples, per_example):
        assert seqs[0][0] == chat_template.encode(tok, ex.messages, tools=ex.tools), "the whole conversation first"
        learned = "".join(tok.decode([i for i, m in zip(ids, mask) if m]) for ids, mask in seqs)
        unlearned = tok.decode([i for i, m in zip(*seqs[0]) if not m])
        for tool in ex.tools or []:
            assert f'"name": "{tool["function"]["name"]}"' in unlearned, "the tools are in the prompt, not learned"
        for m in ex.messages:
            for call in m.get("tool_calls", []):
                with_calls += 1
                assert f'<tool_call>\n{{"name": "{call["function"]["name"]}"' in learned
            if m["role"] == "tool":
                assert m["content"] not in learned and m["content"] in unlearned
    assert with_calls > 3


def _cfg(model: Path, data_dir: Path, run: Path) -> config.TrainConfig:
    return config.build(
        dict(
            model=str(model),
            data=str(data_dir),
            adapter_path=str(run),
            num_layers=2,
            batch_size=2,
            iters=2,
            learning_rate=1e-3,
            steps_per_report=1,
            steps_per_eval=10,
            max_seq_length=512,
            lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.0},
        )
    )


def test_lora_steps_on_tool_data(qwen3_dir, tool_data, tmp_path):
    run = train(_cfg(qwen3_dir, tool_data, tmp_path / "run"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert all(np.isfinite(r["val_loss"]) for r in rows if "val_loss" in r)


def test_a_template_without_tools_is_refused_tool_data(qwen2_dir, tool_data, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "train", "--data", str(tool_data), "--model", str(qwen2_dir)]
        + ["--adapter-path", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    first = next(ex for ex in data.load_split(tool_data, "train") if ex.uses_tools())
    assert r.stderr.strip().splitlines()[-1] == (
        f"mlx_ft: error: {first.where} uses tools (tool definitions, calls or results), but the "
        f"chat template of {str(qwen2_dir)!r} cannot render them; use a model whose template supports tools (Qwen2.5, "
        "Qwen3, Llama 3.1), or one whose tokenizer_config.json has such a chat_template"
    )
    assert not (tmp_path / "run").exists()


def test_a_preference_pair_can_prefer_a_call(qwen3_dir, write_jsonl, tmp_path):
    """A pair keeps its tools through prepare, and its two sides are rendered with them: the chosen call is learned
    in the template's own format."""
    from mlx_ft.training.batches import TokenizedPairs

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    row = {
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "chosen": {"role": "assistant", "content": "", "tool_calls": [call]},
        "rejected": {"role": "assistant", "content": "I cannot know."},
        "tools": tools,
    }
    data.prepare([write_jsonl("pairs.jsonl", [row])], tmp_path / "data", valid=0, test=0)
    (ex,) = data.load_split(tmp_path / "data", "train")
    assert ex.tools == tools and ex.messages[-1]["tool_calls"] == [call]
    tok = load_tokenizer(Path(qwen3_dir))
    ((chosen, chosen_mask), (rejected, rejected_mask)) = TokenizedPairs([ex], tok, 512, "train").items[0]
    learned = tok.decode([i for i, m in zip(chosen, chosen_mask) if m])
    assert learned == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    assert tok.decode([i for i, m in zip(rejected, rejected_mask) if m]) == "I cannot know.<|im_end|>\n"
    assert '"name": "get_weather"' in tok.decode(rejected), "both sides are offered the tools"
