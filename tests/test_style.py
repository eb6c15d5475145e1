"""The code style is checked, not argued about: `ruff check` (lint, imports sorted) and `ruff format --check` over the
repository, configured in pyproject.toml. CI runs this with the rest of the suite."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if found is None:
        message = 'ruff is not installed: `pip install -e ".[dev]"`'
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return [found]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    r = subprocess.run([*_ruff(), *command, "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
