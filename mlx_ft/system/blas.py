"""Environment fixes users must not have to know about.

On Linux the `mlx[cpu]` wheel bundles the reference BLAS, which multiplies matrices at ~5-7 GFLOP/s on our 2-core
machines; Debian's OpenBLAS does ~120-170, Intel's MKL wheel ~90. Loading a fast BLAS with RTLD_GLOBAL *before*
MLX's shared library is loaded makes the dynamic linker bind MLX's BLAS/LAPACK calls to it (global scope is searched
before the bundled copy), which is what LD_PRELOAD would do, without re-executing the process. It only works before
`mlx.core` is imported, so `mlx_ft/__init__.py` does it first thing.

The candidates, best first: the system OpenBLAS (Debian/Ubuntu/Fedora paths), then the BLAS wheels from PyPI that
export the plain `cblas_*`/LAPACK names MLX calls: cmeel-openblas (needs the system's libgfortran.so.5) and Intel's
`mkl` (a dependency of mlx_ft on Linux x86_64, so `pip install` alone brings a fast BLAS). Each is loaded in turn;
one that is present but cannot load (a dangling alternatives link, a missing libgfortran, a wrong architecture) is
recorded and skipped, never fatal. (numpy's and scipy's bundled OpenBLAS prefix every symbol with `scipy_`, so MLX
cannot bind to them.)
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

OPT_OUT_ENV = "MLX_FT_NO_BLAS_FIX"

# Debian/Ubuntu paths first (the pthread build is the one that scales), then the usual others.
_SYSTEM_OPENBLAS = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas*.so.0",
    "/usr/lib/libopenblas*.so.0",
)
# (distribution, file name pattern, what to call it) for the BLAS wheels, in order of preference.
_WHEEL_BLAS = (
    ("cmeel-openblas", "libopenblas.so.0", "OpenBLAS from the cmeel-openblas wheel"),
    ("mkl", "libmkl_rt.so.*", "Intel MKL from the mkl wheel"),
)
# What a process that already has a fast BLAS mapped (LD_PRELOAD, an earlier import) shows in /proc/self/maps.
_MAPPED_MARKERS = ("libopenblas", "libmkl_rt")

INSTALL_FAST_BLAS = (
    "`pip install mkl` (x86_64) or `sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu; "
    "`dnf install openblas` on Fedora)"
)


@dataclass(frozen=True)
class Candidate:
    path: str
    source: str  # what it is, for people: "system OpenBLAS", "Intel MKL from the mkl wheel", ...


@dataclass(frozen=True)
class BlasStatus:
    state: str  # "not-linux" | "no-bundled-blas" | "opted-out" | "fast" | "too-late" | "missing"
    library: str | None = None  # the fast BLAS MLX is bound to
    source: str | None = None  # what that library is
    failed: tuple[str, ...] = ()  # "path: why" for each candidate that is present but did not load

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


def _wheel_files(dist: str, pattern: str) -> list[str]:
    """The installed files of distribution `dist` whose name matches `pattern` (from its RECORD: the mkl wheel puts
    its libraries under the environment's lib/, not in site-packages)."""
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return sorted(os.path.normpath(f.locate()) for f in files if fnmatch(f.name, pattern))


def candidates() -> list[Candidate]:
    """Every fast BLAS on this machine that MLX could bind to, best first: links included even when they dangle
    (loading them is what tells)."""
    found: list[Candidate] = []
    for pattern in _SYSTEM_OPENBLAS:
        found += [Candidate(hit, "system OpenBLAS") for hit in sorted(glob.glob(pattern))]
    for dist, pattern, source in _WHEEL_BLAS:
        found += [Candidate(path, source) for path in _wheel_files(dist, pattern)]
    unique: dict[str, Candidate] = {}
    for c in found:  # Debian's libopenblas.so.0 alternatives link and its target are one library
        unique.setdefault(os.path.realpath(c.path), c)
    return list(unique.values())


def find_fast_blas() -> Candidate | None:
    """The first candidate whose file exists, without loading it (for hints when the fix is switched off)."""
    return next((c for c in candidates() if os.path.exists(c.path)), None)


def use_fast_blas() -> BlasStatus:
    """Bind MLX to the best fast BLAS that loads when MLX would otherwise use its bundled reference BLAS.
    Idempotent."""
    global _status
    if _status is not None:
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus("not-linux")
    elif bundled_blas() is None:
        _status = BlasStatus("no-bundled-blas")
    elif os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        _status = BlasStatus("opted-out")
    elif "mlx.core" in sys.modules and not _fast_blas_mapped():
        _status = BlasStatus("too-late")
    else:
        _status = _load_first(candidates())
    return _status


def _load_first(cands: list[Candidate]) -> BlasStatus:
    failed: list[str] = []
    for c in cands:
        try:
            ctypes.CDLL(c.path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            # dlopen's message names the file that is missing, which may be a dependency, not the library itself.
            failed.append(str(e) if str(e).startswith(c.path) else f"{c.path}: {e}")
            continue
        return BlasStatus("fast", c.path, c.source, tuple(failed))
    return BlasStatus("missing", failed=tuple(failed))


def _fast_blas_mapped() -> bool:
    """Whether a fast BLAS is already in this process (e.g. through LD_PRELOAD)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(marker in maps for marker in _MAPPED_MARKERS)


def describe(status: BlasStatus) -> str:
    """The BLAS MLX multiplies with, in a few words."""
    if status.state == "fast":
        return f"{status.source} ({status.library})"
    return {
        "not-linux": "the one MLX was built with (Accelerate on macOS)",
        "no-bundled-blas": "the one MLX was built with",
        "opted-out": f"the slow reference BLAS bundled with mlx-cpu ({OPT_OUT_ENV} is set)",
        "missing": "the slow reference BLAS bundled with mlx-cpu (no fast BLAS could be loaded)",
        "too-late": "the slow reference BLAS bundled with mlx-cpu (mlx.core was imported before mlx_ft)",
    }[status.state]


def blas_warning() -> str | None:
    """One line for the terminal when MLX runs on the slow BLAS and the user did not ask for that."""
    status = use_fast_blas()
    if status.state == "missing":
        why = (
            f" ({status.failed[0]}{f'; {len(status.failed) - 1} more' if len(status.failed) > 1 else ''})"
            if status.failed
            else ""
        )
        return (
            "MLX is using the reference BLAS bundled in the mlx-cpu wheel, about 35x slower: no fast BLAS could "
            f"be loaded{why}; install one with {INSTALL_FAST_BLAS}, or set {OPT_OUT_ENV}=1 to keep the bundled one"
        )
    if status.state == "too-late":
        return "mlx.core was imported before mlx_ft, so the fast-BLAS fix could not apply; import mlx_ft first"
    return None
