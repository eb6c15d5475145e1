"""The import contract of mlx_ft: which layer may import which (imports inside functions included, `if
TYPE_CHECKING:` blocks left out since they never run), and no import cycle anywhere, not even through those blocks.

Layers, highest first; a module may import its own layer and the ones below, never one above:

    cli, __main__, system.doctor      parse and dispatch; doctor reports on everything
    server                            the web app: one blueprint package per product (chat, openai, studio, tasks)
    services                          what the server serves, without HTTP: history, jobs, data sets, the run form,
                                      task answers; they raise mlx_ft.errors, which the server maps to status codes
    inference                         the decode core (engine, scheduler), generation, tool calls, infer, chat, eval
    training | export                 the run | fused HF folders, GGUF, Modelfile (independent of each other)
    decode core                       generation, scheduler, decode, sampling, constraints, prompt cache: one way
                                      to generate answers, for serving, the commands and GRPO's sampling alike
    data                              raw formats -> messages JSONL, recipes, token statistics
    models                            model sources, GGUF import, the loader, adapters on a base
    ground                            chat_template, config, checks, progress, system.blas/devices, errors,
                                      atomic, resources
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlx_ft"

LAYERS: list[list[str]] = [
    ["mlx_ft.cli", "mlx_ft.__main__", "mlx_ft.system.doctor"],
    ["mlx_ft.server"],
    ["mlx_ft.services"],
    ["mlx_ft.inference"],
    ["mlx_ft.training", "mlx_ft.export"],
    [f"mlx_ft.inference.{m}" for m in ("generation", "scheduler", "decode", "sampling", "constrain", "prompt_cache")],
    ["mlx_ft.data"],
    ["mlx_ft.models"],
    [
        "mlx_ft.chat_template",
        "mlx_ft.config",
        "mlx_ft.checks",
        "mlx_ft.progress",
        "mlx_ft.system.blas",
        "mlx_ft.system.devices",
        "mlx_ft.errors",
        "mlx_ft.atomic",
        "mlx_ft.resources",
        "mlx_ft.system",
        "mlx_ft",
    ],
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(module: str, type_checking: bool = False) -> set[str]:
    """The mlx_ft modules `module` imports anywhere in its code (a `from pkg import name` counts as pkg.name when
    that is a module); with `type_checking`, those its `if TYPE_CHECKING:` blocks import too."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if type_checking else _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it): the longest listed prefix wins."""
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own_or_a_sibling(module):
    mine, my_prefix = layer_of(module)
    for target in sorted(imports(module)):
        theirs, their_prefix = layer_of(target)
        assert theirs >= mine, f"{module} (layer {my_prefix}) imports {target} from the higher layer {their_prefix}"
        if theirs == mine and mine == 4:  # training and export stay independent of each other
            assert my_prefix == their_prefix, f"{module} imports {target}: training and export are independent"


@pytest.mark.parametrize("type_checking", [False, True], ids=["run", "type-hints"])
def test_no_import_cycles(type_checking):
    """None when the code runs, and none either in the imports only type checkers read: a cycle there is two
    modules that know each other's insides (the scheduler and the engine once did)."""
    graph = {m: imports(m, type_checking) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_contract_sees_function_level_imports():
    """The checker itself: an import inside a function counts (cli imports most commands lazily)."""
    assert "mlx_ft.server.app" in imports("mlx_ft.cli.serve")
