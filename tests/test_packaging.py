"""What a user installs: the wheel carries the sample data and default config; both entry points list the commands."""

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

# only commands that work are listed
COMMANDS = ["prepare", "train", "import-gguf", "eval", "infer", "chat", "serve", "export", "doctor"]


def test_wheel_ships_data_and_default_config(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    names = set(zipfile.ZipFile(next(tmp_path.glob("mlx_ft-*.whl"))).namelist())
    for shipped in (
        "mlx_ft/shipped/lora_config.yaml",
        "mlx_ft/shipped/data/fish_care/train.jsonl",
        "mlx_ft/shipped/data/fish_care/fish_care.json",
        "mlx_ft/shipped/recipes/miners/recipe.yaml",
        "mlx_ft/shipped/data/miners/listings.jsonl",
        "mlx_ft/shipped/data/router/router.jsonl",
    ):
        assert shipped in names
    assert not any(n.startswith("tests/") for n in names)


def test_help_lists_exactly_the_working_commands():
    out = subprocess.run([sys.executable, "-m", "mlx_ft", "--help"], capture_output=True, text=True, check=True).stdout
    listed = [
        line.split()[0]
        for line in out.split("positional arguments:")[1].split("options:")[0].splitlines()
        if line.startswith("    ") and not line.startswith("     ")
    ]
    assert listed == COMMANDS
    script = Path(sys.executable).parent / "mlx-ft"
    assert script.exists(), "pip install creates the mlx-ft script"
    assert subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout == out
