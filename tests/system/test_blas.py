"""The Linux fast path: MLX is bound to a fast BLAS (the system OpenBLAS, else a BLAS wheel from PyPI such as Intel's
mkl) instead of the mlx-cpu wheel's reference BLAS, and a BLAS that is present but cannot load never breaks mlx_ft."""

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_ft.system import blas

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or blas.bundled_blas() is None,
    reason="only the Linux mlx-cpu wheel bundles the slow BLAS",
)

MARKERS = blas._MAPPED_MARKERS
MAPS = (
    "import mlx_ft, mlx.core as mx; mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64))); "
    f"maps = open('/proc/self/maps').read(); print(any(m in maps for m in {MARKERS!r}))"
)
# blas.py loaded on its own, without `import mlx_ft` (which binds a BLAS first thing), so that a test can hand
# it candidates before anything is loaded, then check what MLX computes with.
ALONE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("blas_alone", {path!r})
p = sys.modules["blas_alone"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(p)
real = p.candidates()
p.candidates = lambda: [p.Candidate(path, "test") for path in json.loads(sys.argv[1])] + (real if {keep_real} else [])
status = p.use_fast_blas()
import mlx.core as mx
product = (mx.ones((64, 64)) @ mx.ones((64, 64)))[0, 0].item()
maps = open("/proc/self/maps").read()
print(json.dumps({{"state": status.state, "library": status.library, "failed": status.failed,
                   "warning": p.blas_warning(), "product": product,
                   "mapped": any(m in maps for m in {markers!r})}}))
"""


def _env(**env: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas.OPT_OUT_ENV)} | env


def _run(code: str, *args: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], env=_env(**env), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _alone(paths: list[str], keep_real: bool) -> dict:
    code = ALONE.format(path=blas.__file__, keep_real=keep_real, markers=MARKERS)
    return json.loads(_run(code, json.dumps(paths)).splitlines()[-1])


def test_importing_mlx_ft_binds_the_system_openblas_first(openblas):
    code = "import mlx_ft.system.blas as p; s = p.use_fast_blas(); print(s.state, s.library)"
    assert _run(code) == f"fast {openblas}"
    assert _run(MAPS) == "True"


def test_a_stray_mlx_folder_on_sys_path_does_not_hide_the_bundled_blas(tmp_path):
    """A folder named `mlx` in the working directory makes `mlx` a namespace spec with several locations."""
    (tmp_path / "mlx").mkdir()
    code = "import mlx_ft.system.blas as p; print(p.use_fast_blas().state)"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == ("fast" if blas.find_fast_blas() else "missing")


def test_opt_out_keeps_the_bundled_blas():
    assert _run(MAPS, **{blas.OPT_OUT_ENV: "1"}) == "False"


def test_a_blas_that_is_present_but_cannot_load_is_skipped(tmp_path):
    """A dangling link (Debian's alternatives link once the library is gone) and a file that is no library for this
    machine come first; the next candidate binds, and MLX computes right."""
    if blas.find_fast_blas() is None:
        pytest.skip("no fast BLAS on this machine to fall through to")
    dangling, garbage = tmp_path / "libopenblas.so.0", tmp_path / "libmkl_rt.so.3"
    dangling.symlink_to(tmp_path / "gone" / "libopenblas.so.0")
    garbage.write_bytes(b"\x7fELF not really")
    out = _alone([str(dangling), str(garbage)], keep_real=True)
    assert out["state"] == "fast" and out["mapped"] and out["product"] == 64.0
    assert [f.split(":")[0] for f in out["failed"][:2]] == [str(dangling), str(garbage)]
    assert out["warning"] is None


def test_when_nothing_loads_mlx_runs_on_the_bundled_blas_with_one_warning(tmp_path):
    (tmp_path / "libopenblas.so.0").symlink_to(tmp_path / "nowhere")
    out = _alone([str(tmp_path / "libopenblas.so.0")], keep_real=False)
    assert out["state"] == "missing" and not out["mapped"] and out["product"] == 64.0
    warning = out["warning"]
    assert "\n" not in warning and str(tmp_path / "libopenblas.so.0") in warning
    assert "pip install mkl" in warning and "apt-get install libopenblas0-pthread" in warning


def test_missing_fast_blas_gives_one_line_with_the_fix():
    code = "import mlx_ft.system.blas as p; p._status = None; p.candidates = lambda: []; print(p.blas_warning())"
    out = _run(code)
    assert "\n" not in out and "pip install mkl" in out and "apt-get install libopenblas0-pthread" in out


def test_cli_warns_when_mlx_would_be_slow(tmp_path):
    code = (
        "import sys, mlx_ft.system.blas as p; p._status = None; p.candidates = lambda: []; "
        "from mlx_ft.cli import main; sys.exit(main(['train', '--data', sys.argv[1]]))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("mlx_ft: warning: MLX is using the reference BLAS")
    assert lines[1].startswith("mlx_ft: error:") and "no train.jsonl" in lines[1]


def _hide_system_openblas() -> list[str]:
    """A command prefix that runs its command in a private mount namespace where Debian's OpenBLAS folders are empty
    (root only): what a fresh machine without the apt package looks like, the alternatives link left dangling."""
    folders = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-*"))
    if not folders or os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root, unshare and Debian's OpenBLAS to hide")
    mounts = " && ".join(f"mount -t tmpfs tmpfs {f}" for f in folders)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mounts], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    return ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$0" "$@"']


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the mkl wheel is the x86_64 dependency")
def test_without_the_system_openblas_pip_alone_brings_a_fast_blas():
    """`pip install` put Intel's mkl wheel in the environment; with the system OpenBLAS hidden, `import mlx_ft` binds
    it, never dies on the dangling alternatives link, and doctor says which library is in use and what failed."""
    r = subprocess.run(
        [*_hide_system_openblas(), sys.executable, "-m", "mlx_ft", "doctor", "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    facts = json.loads(r.stdout)
    assert facts["blas"]["state"] == "fast" and facts["blas"]["source"] == "Intel MKL from the mkl wheel"
    assert Path(facts["blas"]["library"]).name.startswith("libmkl_rt.so")
    if os.path.lexists(link := f"/usr/lib/{os.uname().machine}-linux-gnu/libopenblas.so.0"):
        assert any(f.startswith(link) for f in facts["blas_failed"])
    assert facts["matmul_gflops"] > 20  # the bundled BLAS does ~7 here, MKL ~90
