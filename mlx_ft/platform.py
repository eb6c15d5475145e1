"""Environment fixes users must not have to know about.

On Linux the `mlx[cpu]` wheel bundles the reference BLAS, which multiplies matrices at ~5 GFLOP/s on our 2-core
machines; Debian's OpenBLAS does ~150-170. Loading OpenBLAS with RTLD_GLOBAL *before* MLX's shared library is loaded
makes the dynamic linker bind MLX's BLAS/LAPACK calls to it (global scope is searched before the bundled copy), which
is what LD_PRELOAD would do, without re-executing the process. It only works before `mlx.core` is imported, so
`mlx_ft/__init__.py` does it first thing.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

OPT_OUT_ENV = "MLX_FT_NO_BLAS_FIX"

# Debian/Ubuntu paths first (the pthread build is the one that scales), then anything the loader cache knows.
_OPENBLAS_CANDIDATES = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas*.so.0",
    "/usr/lib/libopenblas*.so.0",
)

INSTALL_OPENBLAS = "`sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu) or `dnf install openblas` (Fedora)"

INSTALL_HINT = (
    "MLX is using the reference BLAS bundled in the mlx-cpu wheel, about 35x slower than OpenBLAS; "
    f"install it with {INSTALL_OPENBLAS}, or set {OPT_OUT_ENV}=1 to keep the bundled one"
)


@dataclass(frozen=True)
class BlasStatus:
    state: str  # "not-linux" | "no-bundled-blas" | "opted-out" | "openblas" | "too-late" | "missing"
    library: str | None = None

    @property
    def slow(self) -> bool:
        """True when MLX will run matrix products on the bundled reference BLAS."""
        return self.state in ("opted-out", "too-late", "missing")


_status: BlasStatus | None = None


def mlx_package_dirs() -> list[Path]:
    """The folders of the `mlx` package, found without importing it. Every location counts: a stray `mlx` folder on
    sys.path turns the spec into a namespace with several."""
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def bundled_blas() -> Path | None:
    """The reference BLAS that the mlx-cpu wheel bundles, found without importing MLX."""
    for location in mlx_package_dirs():
        hits = sorted(location.parent.glob("mlx_cpu.libs/libblas*.so*"))
        if hits:
            return hits[0]
    return None


def find_openblas() -> str | None:
    for pattern in _OPENBLAS_CANDIDATES:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def use_fast_blas() -> BlasStatus:
    """Bind MLX to the system OpenBLAS when MLX would otherwise use its bundled reference BLAS. Idempotent."""
    global _status
    if _status is not None:
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus("not-linux")
    elif bundled_blas() is None:
        _status = BlasStatus("no-bundled-blas")
    elif os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        _status = BlasStatus("opted-out")
    elif "mlx.core" in sys.modules and not _openblas_mapped():
        _status = BlasStatus("too-late")
    else:
        lib = find_openblas()
        if lib is None:
            _status = BlasStatus("missing")
        else:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            _status = BlasStatus("openblas", lib)
    return _status


def _openblas_mapped() -> bool:
    """Whether OpenBLAS is already in this process (e.g. through LD_PRELOAD)."""
    try:
        return "libopenblas" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def blas_warning() -> str | None:
    """One line for the terminal when MLX runs on the slow BLAS and the user did not ask for that."""
    status = use_fast_blas()
    if status.state == "missing":
        return INSTALL_HINT
    if status.state == "too-late":
        return "mlx.core was imported before mlx_ft, so the OpenBLAS fix could not apply; import mlx_ft first"
    return None
