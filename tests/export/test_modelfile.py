"""The Modelfile's Go template writes exactly what the model's chat template writes. Checked with go_template's
renderer of the Go template subset we emit (if/else if/else/end, range over .Messages, eq .Role, .System, .Content),
which follows text/template's semantics for these actions (no whitespace trimming is used)."""

from pathlib import Path

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from mlx_ft import chat_template
from mlx_ft.export import modelfile
from mlx_ft.export.go_template import render as render_go

CONVERSATIONS = [
    [{"role": "user", "content": "金鱼每天喂几次？"}],
    [{"role": "system", "content": "你是观赏鱼专家。"}, {"role": "user", "content": "水温多少度？"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!\nHow can I help?"},
        {"role": "user", "content": "m50s 26w 124t $1020.0"},
    ],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("model", ["smollm2_dir", "qwen2_dir", "qwen3_dir"])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_go_template_writes_what_the_chat_template_writes(request, model, conv):
    tok = load_tokenizer(Path(request.getfixturevalue(model)))
    messages = CONVERSATIONS[conv]
    template = modelfile.go_template(modelfile.turns(tok))
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    rest = messages[1:] if system else messages
    assert render_go(template, system, rest) == chat_template.prompt_text(tok, messages)


def test_modelfile_lines(smollm2_dir):
    tok = load_tokenizer(Path(smollm2_dir))
    text = modelfile.modelfile("fish-q4_k_m.gguf", tok, "你是观赏鱼专家。")
    lines = text.splitlines()
    assert lines[0] == "FROM ./fish-q4_k_m.gguf" and lines[1].startswith('TEMPLATE """')
    assert 'SYSTEM """你是观赏鱼专家。"""' in lines and 'PARAMETER stop "<|im_end|>"' in lines
    assert "PARAMETER temperature 0.7" in lines
    assert "SYSTEM" not in modelfile.modelfile("x.gguf", tok, None)


def test_shipped_modelfile_is_what_export_writes_for_the_default_run(smollm2_dir):
    """The repo's Modelfile is the one `export gguf` writes for the README's default run (SmolLM2 + fish_care):
    regenerate it with `python -m mlx_ft export modelfile RUN --gguf fish-care-q4_k_m.gguf` when either changes."""
    from mlx_ft import data
    from tests.conftest import REPO

    system = data.common_system(data.load_split(REPO / "data" / "fish_care", "train"))
    expected = modelfile.modelfile("fish-care-q4_k_m.gguf", load_tokenizer(Path(smollm2_dir)), system)
    assert (REPO / "Modelfile").read_text(encoding="utf-8") == expected
