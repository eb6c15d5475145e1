"""`python -m mlx_ft <cmd> --help` answers at once: building the parser loads neither MLX nor Flask nor
transformers (each subcommand's handler imports what it needs when it runs)."""

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ["mlx.core", "mlx_lm", "flask", "transformers", "waitress"]


def test_building_the_parser_imports_no_heavy_module():
    code = (
        "import json, sys\nfrom mlx_ft.cli import build_parser\nbuild_parser()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
