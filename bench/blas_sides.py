"""Both sides of a comparison multiply on the same fast BLAS, or the benchmark refuses to compare them.

MLX on Linux binds a fast BLAS only when `import mlx_ft` runs before anything loads mlx.core (mlx_ft/system/blas.py);
an import sorted the other way, or a child process started without the library, multiplies on MLX's bundled
reference BLAS (~35x slower) and every ratio printed after it is false. So a benchmark takes the library here (a slow
one is an exit, not a warning), gives it to its other side, and checks what each child process has mapped."""

from __future__ import annotations

import re
from pathlib import Path

from mlx_ft.system.blas import describe, use_fast_blas

FAST = re.compile(r"^(libopenblas|libmkl_rt)")  # what a fast BLAS maps as (the bundled libblas is loaded regardless)


def fast_blas() -> str | None:
    """The fast BLAS library this process multiplies on (None where the platform has its own: macOS' Accelerate);
    exits when MLX here would use its bundled reference BLAS."""
    status = use_fast_blas()
    if status.slow:
        raise SystemExit(f"refusing to measure: {describe(status)}")
    return status.library


def mapped(pid: int) -> list[str] | None:
    """The BLAS and threading libraries process `pid` has mapped (None where there is no /proc: nothing to check)."""
    maps = Path(f"/proc/{pid}/maps")
    if not maps.exists():
        return None
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    names = {Path(line.split()[-1]).name for line in lines if "/" in line}
    return sorted(n for n in names if re.search(r"blas|mkl|gomp|libomp|iomp", n))


def same_blas(sides: dict[str, list[str] | None]) -> str:
    """One line naming the fast BLAS every side has mapped; exits when a side has none or they differ."""
    fast = {side: sorted(n for n in libs if FAST.match(n)) for side, libs in sides.items() if libs is not None}
    if not fast:
        return "BLAS: not checked (no /proc): the platform's own on every side"
    if not all(fast.values()) or len({tuple(v) for v in fast.values()}) > 1:
        seen = "; ".join(
            f"{side}: {', '.join(libs) or 'only the bundled reference BLAS'}" for side, libs in fast.items()
        )
        raise SystemExit(f"refusing to compare sides on different BLAS ({seen})")
    return f"BLAS: {', '.join(next(iter(fast.values())))} mapped by every side ({', '.join(fast)})"
