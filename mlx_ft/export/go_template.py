"""Ollama's view of a conversation: a renderer for the subset of Go's text/template that `modelfile.go_template`
writes (if / else if / else / end, range over .Messages, eq .Role "...", .System, .Content), with text/template's
semantics for these actions. `--verify` renders prompts through the Modelfile's own TEMPLATE with it, and the tests
check that the TEMPLATE writes what the model's chat template writes."""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"{{(.*?)}}", re.S)

Node = tuple[Any, ...]  # ("text", s) | ("var", name) | ("if", [(cond, body)...], else) | ("range", body)


def _lex(template: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    for m in _ACTION.finditer(template):
        if m.group(1).startswith("-") or m.group(1).endswith("-"):
            raise ValueError("whitespace trimming ({{- -}}) is not in the subset mlx_ft writes")
        out += [("text", template[pos : m.start()]), ("action", m.group(1).strip())]
        pos = m.end()
    return out + [("text", template[pos:])]


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list[Node], int, str]:
    """Nodes up to one of the `stop` keywords (or an else), the index reached, and the action that ended them."""
    nodes: list[Node] = []
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
        elif word == "range":
            if value != "range .Messages":
                raise ValueError(f"unsupported action {{{{ {value} }}}}")
            body, i, _ = _parse(tokens, i + 1, stop=("end",))
            nodes.append(("range", body))
        else:
            nodes.append(("var", value))
        i += 1
    return nodes, i, ""


def _truth(cond: str, scope: dict[str, Any]) -> bool:
    if cond.startswith("eq "):
        field, literal = cond[3:].split(" ", 1)
        return scope[field.lstrip(".")] == literal.strip('"')
    return bool(scope[cond.lstrip(".")])


def _exec(nodes: list[Node], scope: dict[str, Any], root: dict[str, Any]) -> str:
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


def render(template: str, system: str, messages: list[dict[str, Any]]) -> str:
    """What Ollama sends the model: the system prompt apart, the other messages as .Messages (.Role, .Content)."""
    root = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    nodes, _, _ = _parse(_lex(template))
    return _exec(nodes, root, root)
