"""The Modelfile's Go template writes exactly what the model's chat template writes. Checked with a small renderer
of the Go template subset we emit (if/else if/else/end, range over .Messages, eq .Role, .System, .Content), which
follows text/template's semantics for these actions (no whitespace trimming is used)."""

import re
from pathlib import Path

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from mlx_ft import chat_template
from mlx_ft.export import modelfile

_ACTION = re.compile(r"{{(.*?)}}", re.S)


def _parse(tokens: list, i: int = 0, stop: tuple = ()) -> tuple[list, int, str | None]:
    """Nodes until one of the `stop` keywords: ("text", s) | ("var", name) | ("if", [(cond, body)...], else) |
    ("range", body)."""
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split()[0] if value else ""
        if word in stop or value.startswith("else"):
            return nodes, i, value
        if word == "if":
            branches, otherwise = [], []
            cond = value[3:].strip()
            while True:
                body, i, ended = _parse(tokens, i + 1, stop=("end",))
                branches.append((cond, body))
                if ended.startswith("else if"):
                    cond = ended[len("else if") :].strip()
                    continue
                if ended == "else":
                    otherwise, i, ended = _parse(tokens, i + 1, stop=("end",))
                break
            nodes.append(("if", branches, otherwise))
            i += 1
        elif word == "range":
            assert value == "range .Messages"
            body, i, _ = _parse(tokens, i + 1, stop=("end",))
            nodes.append(("range", body))
            i += 1
        else:
            nodes.append(("var", value))
            i += 1
    return nodes, i, None


def _tokens(template: str) -> list:
    out, pos = [], 0
    for m in _ACTION.finditer(template):
        assert not m.group(1).startswith("-") and not m.group(1).endswith("-"), "no trimming expected"
        out += [("text", template[pos : m.start()]), ("action", m.group(1).strip())]
        pos = m.end()
    return out + [("text", template[pos:])]


def _truth(cond: str, scope: dict) -> bool:
    if cond.startswith("eq "):
        field, literal = cond[3:].split(" ", 1)
        return scope[field.lstrip(".")] == literal.strip('"')
    return bool(scope[cond.lstrip(".")])


def _exec(nodes: list, scope: dict, root: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "var":
            out.append(scope[node[1].lstrip(".")])
        elif node[0] == "if":
            for cond, body in node[1]:
                if _truth(cond, scope):
                    out.append(_exec(body, scope, root))
                    break
            else:
                out.append(_exec(node[2], scope, root))
        else:
            out += [_exec(node[1], m, root) for m in root["Messages"]]
    return "".join(out)


def render_go(template: str, system: str, messages: list[dict]) -> str:
    """Ollama's view: the system prompt apart, the other messages as .Messages with .Role and .Content."""
    root = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    nodes, _, _ = _parse(_tokens(template))
    return _exec(nodes, root, root)


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
