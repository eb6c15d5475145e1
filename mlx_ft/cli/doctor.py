"""`mlx_ft doctor`: what MLX computes on here and what to fix (`mlx_ft.system.doctor`)."""

from __future__ import annotations

import argparse

from mlx_ft.cli.args import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "doctor",
        help="say what MLX will compute on here (Metal, CUDA or CPU) and what to fix",
        description="Report the Python and package versions, which MLX backend wheel's library is "
        "installed, the device MLX computes on (Apple GPU, NVIDIA GPU with its driver, or the CPU "
        "with its BLAS and a measured matmul speed), the peak FLOP/s used for MFU "
        "(MLX_FT_PEAK_TFLOPS overrides it) and the model caches; then every problem found, with its "
        "fix. Takes about a second and downloads nothing.",
        epilog="exit status: 0 when no problems were found, 1 when some were",
    )
    p.add_argument("--json", action="store_true", help="print the same facts as one JSON object")
    p.set_defaults(func=cmd_doctor, needs_mlx=False)


def cmd_doctor(args: argparse.Namespace) -> int:
    from mlx_ft.system import doctor

    return doctor.main(as_json=args.json)
