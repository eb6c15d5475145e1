"""Regenerate k_quants_ref.npz and k_quants_digests.json: ggml's own C reference quantizers run on fixed inputs
(see README.md here). From the repository root:

    python tests/export/quants_ref/make_ref.py /path/to/llama.cpp/ggml/src   # the folder holding ggml-quants.c
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.export.test_quants import synthetic_weights  # noqa: E402  (the test regenerates the same input)

DIGEST_ROWS, DIGEST_COLS = 1024, 1024  # 4096 super-blocks
TYPES = ("q4_K", "q5_K", "q6_K")


def inputs() -> np.ndarray:
    """8 rows x 512 (16 super-blocks): typical weights and the corner cases of the reference code."""
    rng = np.random.default_rng(20240601)
    x = np.empty((8, 512), dtype=np.float32)
    x[0] = rng.normal(0, 0.02, 512)  # a typical weight row
    x[1, :256] = 0.0  # an all-zero block
    x[1, 256:] = 0.5  # a constant (positive) block
    x[2, :256] = -0.25  # a constant negative block: min != 0 while max == min
    x[2, 256:] = rng.normal(0, 0.02, 256)
    x[2, 300] = 40.0  # a huge outlier: other groups' 6-bit scales round to 0
    groups = x[3, :256].reshape(8, 32)  # one block of odd groups
    groups[0] = 0.0
    groups[1] = 0.75
    groups[2] = np.abs(rng.normal(0, 1, 32))  # positive only: min clamps to 0
    groups[3] = -np.abs(rng.normal(0, 1, 32))
    groups[4] = rng.normal(0, 1e-3, 32)
    groups[5] = rng.normal(0, 1, 32)
    groups[6] = np.round(rng.normal(0, 4, 32))  # integers: rounding ties
    groups[7] = rng.normal(0, 1, 32) * (rng.uniform(0, 1, 32) < 0.2)  # sparse
    x[3, 256:] = rng.normal(0, 1e-6, 256)  # tiny: fp16 block scales underflow to 0 or subnormals
    x[4] = rng.uniform(-1, 1, 512)
    x[5] = rng.standard_t(2, 512) * 0.01  # heavy tails
    x[6] = np.round(rng.normal(0, 3, 512))
    x[7] = rng.normal(0, 1, 512) * (rng.uniform(0, 1, 512) < 0.1)
    return x


def main(ggml_src: Path) -> None:
    x = inputs()
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "ref"
        # no -march: ggml-quants.c is part of ggml-base, which ggml's CMake builds for the generic target (no FMA)
        subprocess.run(
            [
                "gcc",
                "-O2",
                "-std=gnu11",
                "-DNDEBUG",
                f"-I{ggml_src}",
                f"-I{ggml_src.parent / 'include'}",
                str(ggml_src / "ggml-quants.c"),
                str(HERE / "ref_harness.c"),
                "-o",
                str(exe),
                "-lm",
            ],
            check=True,
        )

        def run(data: np.ndarray, qtype: str) -> np.ndarray:
            (Path(tmp) / "x.f32").write_bytes(data.tobytes())
            subprocess.run([str(exe), qtype, str(data.size), f"{tmp}/x.f32", f"{tmp}/q.bin"], check=True)
            return np.fromfile(f"{tmp}/q.bin", dtype=np.uint8).reshape(data.shape[0], -1)

        np.savez_compressed(HERE / "k_quants_ref.npz", x=x, **{t.lower(): run(x, t) for t in TYPES})
        big = synthetic_weights(DIGEST_ROWS, DIGEST_COLS)
        digests = {"rows": DIGEST_ROWS, "cols": DIGEST_COLS, "input": hashlib.sha256(big.tobytes()).hexdigest()}
        digests |= {t.lower(): hashlib.sha256(run(big, t).tobytes()).hexdigest() for t in TYPES}
    (HERE / "k_quants_digests.json").write_text(json.dumps(digests, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
