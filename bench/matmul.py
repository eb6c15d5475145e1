"""MLX float32 matmul throughput on this machine: the mlx-cpu wheel's bundled BLAS (A) against the fast BLAS that
`import mlx_ft` binds MLX to (B: the system OpenBLAS when installed), and, run as root with the system OpenBLAS
present, against what a fresh machine without it gets from `pip install` alone (C: Debian's OpenBLAS folders hidden
in a private mount namespace, so the mkl wheel binds; see mlx_ft/system/blas.py).

Which BLAS MLX uses is fixed when its library loads, so each side runs in a child process of this one; the figures
are printed side by side with their ratios. Usage: python bench/matmul.py [--sizes 256 512 1024 2048] [--seconds 2]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

CHILD = r"""
import json, sys
import mlx_ft  # applies (or, with MLX_FT_NO_BLAS_FIX=1, skips) the OpenBLAS binding
from mlx_ft.system.devices import matmul_gflops
from mlx_ft.system.blas import use_fast_blas
sizes, budget = json.loads(sys.argv[1]), float(sys.argv[2])
out = {"blas": use_fast_blas().library or "bundled reference BLAS",
       "gflops": {n: matmul_gflops(n, budget) for n in sizes}}
print(json.dumps(out))
"""


def without_system_openblas() -> list[str] | None:
    """`unshare -m` with tmpfs over Debian's OpenBLAS folders, or None where that cannot be done (not root, none
    installed, no mount namespaces)."""
    folders = sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-*"))
    if not folders or os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    mounts = " && ".join(f"mount -t tmpfs tmpfs {f}" for f in folders)
    prefix = ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$0" "$@"']
    return prefix if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0 else None


def measure(sizes: list[int], seconds: float, bundled: bool, prefix: list[str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["MLX_FT_NO_BLAS_FIX"] = "1" if bundled else ""
    out = subprocess.run(
        [*(prefix or []), sys.executable, "-c", CHILD, json.dumps(sizes), str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--seconds", type=float, default=2.0, help="time budget per size and side")
    args = ap.parse_args()
    t0 = time.time()
    slow = measure(args.sizes, args.seconds, bundled=True)
    sides = {"A": slow, "B": measure(args.sizes, args.seconds, bundled=False)}
    if (hidden := without_system_openblas()) is not None:
        sides["C"] = measure(args.sizes, args.seconds, bundled=False, prefix=hidden)
    print(f"cpu cores: {os.cpu_count()}")
    for name, side in sides.items():
        print(f"{name}: {side['blas']}" + (" (system OpenBLAS hidden)" if name == "C" else ""))
    others = [k for k in sides if k != "A"]
    print(f"{'n':>6} " + " ".join(f"{k + ' GFLOP/s':>10}" for k in sides) + "".join(f" {k + '/A':>7}" for k in others))
    for n in args.sizes:
        g = {k: side["gflops"][str(n)] for k, side in sides.items()}
        print(
            f"{n:>6} "
            + " ".join(f"{v:>10.1f}" for v in g.values())
            + "".join(f" {g[k] / g['A']:>6.1f}x" for k in others)
        )
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
