"""MLX float32 matmul throughput on this machine: the mlx-cpu wheel's bundled BLAS against the system OpenBLAS
that `import mlx_ft` binds MLX to (see mlx_ft/platform.py).

Which BLAS MLX uses is fixed when its library loads, so each side runs in a child process of this one; the figures
are printed side by side with their ratio. Usage: python bench/matmul.py [--sizes 256 512 1024 2048] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys
import mlx_ft  # applies (or, with MLX_FT_NO_BLAS_FIX=1, skips) the OpenBLAS binding
from mlx_ft.devices import matmul_gflops
from mlx_ft.platform import use_fast_blas
sizes, budget = json.loads(sys.argv[1]), float(sys.argv[2])
out = {"blas": use_fast_blas().library or "bundled reference BLAS",
       "gflops": {n: matmul_gflops(n, budget) for n in sizes}}
print(json.dumps(out))
"""


def measure(sizes: list[int], seconds: float, bundled: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["MLX_FT_NO_BLAS_FIX"] = "1" if bundled else ""
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sizes), str(seconds)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--seconds", type=float, default=2.0, help="time budget per size and side")
    args = ap.parse_args()
    t0 = time.time()
    slow = measure(args.sizes, args.seconds, bundled=True)
    fast = measure(args.sizes, args.seconds, bundled=False)
    print(f"cpu cores: {os.cpu_count()}")
    print(f"A: {slow['blas']}\nB: {fast['blas']}")
    print(f"{'n':>6} {'A GFLOP/s':>10} {'B GFLOP/s':>10} {'B/A':>7}")
    for n in args.sizes:
        a, b = slow["gflops"][str(n)], fast["gflops"][str(n)]
        print(f"{n:>6} {a:>10.1f} {b:>10.1f} {b / a:>6.1f}x")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
