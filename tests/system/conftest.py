"""Fixtures of the system tests."""

import os

import pytest

from mlx_ft.system import blas


@pytest.fixture
def openblas() -> str:
    """The system OpenBLAS that `import mlx_ft` binds first. CI installs it (.ci/run), so there its absence fails;
    on a developer's machine the test is skipped, saying what is missing."""
    found = [c for c in blas.candidates() if c.source == "system OpenBLAS" and os.path.exists(c.path)]
    if not found:
        message = "OpenBLAS is not installed: `sudo apt-get install libopenblas0-pthread`"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return found[0].path
