"""The Linux fast path: MLX is bound to the system OpenBLAS instead of the wheel's reference BLAS."""

import os
import subprocess
import sys

import pytest

from mlx_ft import platform

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.bundled_blas() is None,
                                reason="only the Linux mlx-cpu wheel bundles the slow BLAS")

MAPS = "import mlx_ft, mlx.core as mx; mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64))); " \
       "print('libopenblas' in open('/proc/self/maps').read())"


def _run(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", platform.OPT_OUT_ENV)} | env
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_importing_mlx_ft_binds_openblas():
    if platform.find_openblas() is None:
        # CI installs it (.ci/run), so there this must fail; on a developer's machine say what is missing.
        message = "OpenBLAS is not installed: `sudo apt-get install libopenblas0-pthread`"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    assert _run(MAPS) == "True"


def test_a_stray_mlx_folder_on_sys_path_does_not_hide_the_bundled_blas(tmp_path):
    """A folder named `mlx` in the working directory makes `mlx` a namespace spec with several locations."""
    (tmp_path / "mlx").mkdir()
    code = "import mlx_ft.platform as p; print(p.use_fast_blas().state)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ("openblas" if platform.find_openblas() else "missing")


def test_opt_out_keeps_the_bundled_blas():
    assert _run(MAPS, **{platform.OPT_OUT_ENV: "1"}) == "False"


def test_missing_openblas_gives_one_line_with_the_fix():
    code = ("import mlx_ft.platform as p; p._status = None; p.find_openblas = lambda: None; "
            "print(p.blas_warning())")
    out = _run(code)
    assert "\n" not in out and "apt-get install libopenblas0-pthread" in out


def test_cli_warns_when_mlx_would_be_slow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {platform.OPT_OUT_ENV: ""}
    code = ("import sys, mlx_ft.platform as p; p._status = None; p.find_openblas = lambda: None; "
            "from mlx_ft.cli import main; sys.exit(main(['train', '--data', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("mlx_ft: warning: MLX is using the reference BLAS")
    assert lines[1].startswith("mlx_ft: error:") and "no train.jsonl" in lines[1]
