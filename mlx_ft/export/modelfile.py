"""The Ollama `Modelfile` for an exported GGUF: `FROM`, a `TEMPLATE` in Ollama's Go template syntax that writes
exactly the text the model's own chat template writes, a `PARAMETER stop` for every end-of-turn token, the run's
training system prompt as `SYSTEM`, and sampling defaults.

The Go template is derived from the chat template by rendering probe conversations (`chat_template` stays the one
source of truth): each role's text before and after its content, the block a template adds when there is no system
message (SmolLM2 adds its own), and the generation prompt with the answer preamble (Qwen3's empty think block). That
covers templates that write each turn as prefix + content + suffix (ChatML, Llama 3); others are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlx_ft import chat_template

_S, _U, _A, _V = "\u2063S\u2063", "\u2063U\u2063", "\u2063A\u2063", "\u2063V\u2063"
DEFAULT_PARAMETERS = {"temperature": 0.7, "top_p": 0.9}


@dataclass(frozen=True)
class Turns:
    """The literal text a template writes around each kind of message."""

    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    default_system: str  # written when the conversation has no system message
    generation: str  # after the last user message: the assistant prefix and the answer preamble


def _split(text: str, *marks: str) -> list[str]:
    parts, rest = [], text
    for mark in marks:
        if rest.count(mark) != 1:
            raise ValueError("the chat template does not write each message once")
        head, rest = rest.split(mark)
        parts.append(head)
    return [*parts, rest]


def turns(tokenizer: Any) -> Turns:
    """The template's turn structure, found by rendering probes; ValueError when it is not prefix + content + suffix
    per message."""

    def render(*msgs: tuple[str, str], gen: bool = False) -> str:
        return chat_template.render(tokenizer, [{"role": r, "content": c} for r, c in msgs], add_generation_prompt=gen)

    frame = chat_template.answer_frame(tokenizer)
    a0, a1, a2 = _split(render(("system", _S), ("user", _U)), _S, _U)
    b0, b1, b2, b3, b4 = _split(render(("system", _S), ("user", _U), ("assistant", _A), ("user", _V)), _S, _U, _A, _V)
    end = frame.end
    if not (b3.startswith(end) and a1.endswith(b3[len(end) :]) and b2.startswith(a2)):
        raise ValueError("the chat template's turns are not prefix + content + suffix")
    user_prefix = b3[len(end) :]
    system = (a0, a1[: len(a1) - len(user_prefix)])
    user = (user_prefix, a2)
    assistant = (b2[len(a2) :], end)
    c0, c1 = _split(render(("user", _U)), _U)
    if not c0.endswith(user_prefix):
        raise ValueError("the chat template writes a user turn differently without a system message")
    generation = render(("user", _U), gen=True)[len(c0) + len(_U) + len(c1) :] + frame.preamble
    if generation != assistant[0] + frame.preamble:
        raise ValueError("the generation prompt is not the assistant turn's prefix")
    result = Turns(system, user, assistant, c0[: len(c0) - len(user_prefix)], generation)
    # The probes with a system message must be reproduced too, or the structure was misread.
    if b0 != system[0] or b4 != user[1]:
        raise ValueError("the chat template's turns are not prefix + content + suffix")
    return result


def go_template(t: Turns) -> str:
    """Ollama's TEMPLATE: one line of Go template, with no `{{-` trimming (it would eat the newlines the model's turns
    end with)."""
    return (
        f"{{{{ if .System }}}}{t.system[0]}{{{{ .System }}}}{t.system[1]}{{{{ else }}}}{t.default_system}"
        f'{{{{ end }}}}{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{t.user[0]}{{{{ .Content }}}}'
        f'{t.user[1]}{{{{ else if eq .Role "assistant" }}}}{t.assistant[0]}{{{{ .Content }}}}{t.assistant[1]}'
        f"{{{{ end }}}}{{{{ end }}}}{t.generation}"
    )


def stop_tokens(tokenizer: Any) -> list[str]:
    """Every token generation must stop at: the end-of-turn token and EOS."""
    hf = chat_template.hf_tokenizer(tokenizer)
    ids = [chat_template.end_of_turn_id(tokenizer), hf.eos_token_id]
    return list(dict.fromkeys(hf.convert_ids_to_tokens(i) for i in ids if i is not None))


def _path(name: str) -> str:
    """Ollama resolves `./name` against the Modelfile's folder; an absolute path stays as it is."""
    return name if name.startswith("/") else f"./{name}"


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile cannot hold text with """ in it')
    return f'"""{text}"""'


def modelfile(
    gguf_name: str,
    tokenizer: Any,
    system: str | None,
    parameters: dict[str, float] | None = None,
    adapter: str | None = None,
) -> str:
    """The Modelfile text: `gguf_name` (and `adapter`, a LoRA GGUF applied on it) are paths relative to the
    Modelfile's folder, or absolute."""
    lines = [f"FROM {_path(gguf_name)}"]
    if adapter:
        lines.append(f"ADAPTER {_path(adapter)}")
    lines.append(f"TEMPLATE {_quoted(go_template(turns(tokenizer)))}")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tokenizer)]
    lines += [f"PARAMETER {k} {v}" for k, v in (parameters or DEFAULT_PARAMETERS).items()]
    return "\n".join(lines) + "\n"


@dataclass
class Parsed:
    """What Ollama reads from a Modelfile, for the commands we write."""

    source: str  # FROM
    adapters: list[str]
    template: str | None
    system: str | None
    stop: list[str]
    parameters: dict[str, str]


_COMMAND = re.compile(r'^(FROM|ADAPTER|TEMPLATE|SYSTEM|PARAMETER)\s+(?:"""(.*?)"""|(.*?))\s*$', re.S | re.M)


def parse(text: str) -> Parsed:
    """Read back the commands `modelfile` writes: FROM, ADAPTER, TEMPLATE/SYSTEM (triple-quoted), PARAMETER."""
    found = Parsed("", [], None, None, [], {})
    for m in _COMMAND.finditer(text):
        command, value = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
        if command == "FROM":
            found.source = value
        elif command == "ADAPTER":
            found.adapters.append(value)
        elif command == "TEMPLATE":
            found.template = value
        elif command == "SYSTEM":
            found.system = value
        else:
            key, _, arg = value.partition(" ")
            if key == "stop":
                found.stop.append(arg.strip().strip('"'))
            else:
                found.parameters[key] = arg.strip()
    if not found.source:
        raise ValueError("a Modelfile needs a FROM line")
    return found
