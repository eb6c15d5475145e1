"""The benchmarks measure on the BLAS they say: `import mlx_ft` (which binds MLX to a fast BLAS, possible only before
mlx.core loads) comes before every third-party import in each of them, and a comparison whose sides have different
BLAS mapped is refused, not printed. bench/ruff.toml keeps `ruff check --fix` from sorting mlx_lm first again."""

from __future__ import annotations

import ast
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the file runs (inside `if` blocks too), not those inside functions, in line order."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return sorted(found, key=lambda n: n.lineno)


def _top(node: ast.Import | ast.ImportFrom) -> str:
    name = node.names[0].name if isinstance(node, ast.Import) else node.module or ""
    return name.split(".")[0]


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_mlx_ft_is_imported_before_any_third_party_package(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _module_level_imports(tree):
        top = _top(node)
        if top == "__future__" or top in sys.stdlib_module_names:
            continue
        assert top == "mlx_ft", f"{path.name}:{node.lineno}: `{ast.unparse(node)}` comes before `import mlx_ft`"
        return


def test_sides_on_different_blas_are_refused():
    sys.path.insert(0, str(BENCH))
    try:
        import blas_sides
    finally:
        sys.path.remove(str(BENCH))
    both = {"mlx_lm": ["libblas.so.3", "libopenblas.so.0"], "mlx_ft": ["libblas.so.3", "libopenblas.so.0"]}
    assert "libopenblas.so.0" in blas_sides.same_blas(both)
    with pytest.raises(SystemExit, match="different BLAS.*mlx_lm: only the bundled reference BLAS"):
        blas_sides.same_blas({"mlx_lm": ["libblas.so.3"], "mlx_ft": ["libblas.so.3", "libopenblas.so.0"]})
    with pytest.raises(SystemExit, match="different BLAS"):
        blas_sides.same_blas({"a": ["libmkl_rt.so.2"], "b": ["libopenblas.so.0"]})
    assert "not checked" in blas_sides.same_blas({"a": None, "b": None})
