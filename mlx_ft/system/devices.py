"""What MLX computes on here (Apple GPU through Metal, NVIDIA GPU through CUDA, or the CPU), and which of MLX's
backend wheels is actually installed.

No side effects beyond importing MLX (only when a function needs it) and asking `nvidia-smi` once, with a time limit.
The peak FLOP/s is what the training progress line divides by to print MFU; `MLX_FT_PEAK_TFLOPS` overrides it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_ft.errors import UserError
from mlx_ft.system.blas import mlx_package_dirs

PEAK_ENV = "MLX_FT_PEAK_TFLOPS"

# Dense bf16 tensor FLOP/s (no 2:4 sparsity), from NVIDIA's datasheets. Matched as whole words against the name CUDA
# reports, case-insensitively, first hit winning, so the more specific names come first. The SXM H100 calls itself
# "NVIDIA H100 80GB HBM3", hence the plain "H100" entry is the SXM figure.
NVIDIA_PEAK_FLOPS: dict[str, float] = {
    "GH200": 989e12,
    "H200 NVL": 835e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 70e12,  # AWS's variant of the A10: no public datasheet; the figure AWS and NVIDIA quote for it
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 6000 Ada": 364e12,
    "RTX 4090": 165e12,  # GeForce cards: the rate with fp32 accumulation, which is what training uses
    "RTX 3090": 71e12,
}

# MLX's shared library comes from one of these wheels; they install it at the same path, so two can be installed
# while only the last one written is on disk (pip's `mlx[cpu]` plus `mlx[cuda13]` does exactly that).
BACKEND_PACKAGES = ("mlx-metal", "mlx-cpu", "mlx-cuda-12", "mlx-cuda-13")

_NVIDIA_PROC = Path("/proc/driver/nvidia/version")
_SMI_QUERY = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
_SMI_TIMEOUT_S = 5


@dataclass(frozen=True)
class Device:
    kind: str  # "metal" | "cuda" | "cpu"
    name: str
    memory_bytes: int | None
    driver: str | None
    peak_flops: float | None  # dense bf16/fp16 tensor FLOP/s of the accelerator; None where unknown
    cores: int | None = None  # CPU cores this process may use (cpu only)


@dataclass(frozen=True)
class NvidiaGpu:
    """One line of `nvidia-smi`: what the driver sees, whether or not MLX can use it."""

    name: str
    memory_bytes: int | None
    driver: str | None


@functools.cache
def current() -> Device:
    """The device MLX computes on by default (a GPU wherever MLX has one)."""
    import mlx.core as mx

    if mx.metal.is_available():
        return _metal(_gpu_info(mx))
    cuda = getattr(mx, "cuda", None)  # MLX builds before the CUDA backend have no mx.cuda
    if cuda is not None and cuda.is_available():
        return _cuda(_gpu_info(mx))
    return _cpu()


def _gpu_info(mx: Any) -> dict[str, Any]:
    # mx.device_info covers every backend in newer MLX, where mx.metal.device_info is deprecated.
    if hasattr(mx, "device_info"):
        return dict(mx.device_info(mx.gpu))
    return dict(mx.metal.device_info())


def _info_memory(info: dict[str, Any]) -> int | None:
    value = info.get("total_memory") or info.get("memory_size")
    return int(value) if value else None


def _metal(info: dict[str, Any]) -> Device:
    name = str(info.get("device_name") or info.get("architecture") or "Apple GPU")
    return Device("metal", name, _info_memory(info), None, peak_flops(name, "metal"))


def _cuda(info: dict[str, Any]) -> Device:
    smi = nvidia_smi_gpus()
    first = smi[0] if smi else NvidiaGpu("NVIDIA GPU", None, None)
    name = str(info.get("device_name") or first.name)
    driver = nvidia_driver_version()  # nvidia-smi's answer is cached: no second call
    return Device("cuda", name, _info_memory(info) or first.memory_bytes, driver, peak_flops(name, "cuda"))


def _cpu() -> Device:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Device("cpu", _cpu_name(), _physical_memory(), None, peak_flops("", "cpu"), cores)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def peak_flops(name: str, kind: str = "cuda") -> float | None:
    """Dense bf16 tensor FLOP/s of device `name`: $MLX_FT_PEAK_TFLOPS if set, else NVIDIA's datasheet figure, else
    None. Apple GPUs stay None: their peak scales with the GPU core count, which MLX does not report."""
    override = os.environ.get(PEAK_ENV, "").strip()
    if override:
        return _parse_peak_override(override)
    if kind != "cuda":
        return None
    for key, flops in NVIDIA_PEAK_FLOPS.items():
        if re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", name, re.IGNORECASE):
            return flops
    return None


def _parse_peak_override(text: str) -> float:
    try:
        tflops = float(text)
    except ValueError:
        tflops = 0.0
    if not tflops > 0:
        raise UserError(f"{PEAK_ENV}={text!r}: give the device's dense bf16 peak in TFLOP/s, e.g. {PEAK_ENV}=989")
    return tflops * 1e12


@functools.cache
def nvidia_smi_gpus() -> tuple[NvidiaGpu, ...]:
    """The GPUs `nvidia-smi` lists; none when it is absent, fails or hangs (a wedged driver can)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, *_SMI_QUERY], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(parse_smi_line(line) for line in out.splitlines() if line.strip())


def parse_smi_line(line: str) -> NvidiaGpu:
    """`NVIDIA H100 80GB HBM3, 81559, 550.54.15` (memory in MiB; fields may read `[N/A]`)."""
    fields = [f.strip() for f in line.strip().rsplit(",", 2)]
    name, memory, driver = (fields + ["", ""])[:3]
    mib = int(memory) if memory.isdigit() else None
    return NvidiaGpu(name, mib * 2**20 if mib else None, driver if re.fullmatch(r"[\d.]+", driver) else None)


def _proc_driver_version() -> str | None:
    try:
        first = _NVIDIA_PROC.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", first)
    return match.group(1) if match else None


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi or the kernel module; None without one."""
    smi = nvidia_smi_gpus()
    return (smi[0].driver if smi else None) or _proc_driver_version()


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU and its driver are here, whether or not MLX uses them."""
    return bool(nvidia_smi_gpus()) or _NVIDIA_PROC.exists()


def unused_gpu_warning() -> str | None:
    """One line for every command that computes, when an NVIDIA GPU sits idle because MLX runs on the CPU. Only
    the kernel module's file is checked (no nvidia-smi call), so machines without one pay nothing."""
    if not _NVIDIA_PROC.exists():
        return None
    import mlx.core as mx

    if mx.cuda.is_available() or mx.metal.is_available():
        return None
    return (
        "an NVIDIA GPU is here but MLX runs on the CPU (the CPU build of MLX is what is installed); "
        "`python -m mlx_ft doctor` gives the fix"
    )


def installed_backends() -> list[str]:
    """The MLX backend wheels installed, in BACKEND_PACKAGES order."""
    found = []
    for name in BACKEND_PACKAGES:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def mlx_library() -> Path | None:
    """MLX's shared library as it is on disk, found without importing MLX."""
    for folder in mlx_package_dirs():
        for name in ("libmlx.so", "libmlx.dylib"):
            if (folder / "lib" / name).is_file():
                return folder / "lib" / name
    return None


def mlx_backend_package() -> str | None:
    """Which installed backend wheel wrote the libmlx that is on disk: the one whose RECORD has the file's hash.
    None when no wheel's does (a source build, or a file changed after install)."""
    library = mlx_library()
    if library is None:
        return None
    size = library.stat().st_size
    digests: dict[str, str] = {}
    for name in installed_backends():
        entry = _record_entry(name, f"mlx/lib/{library.name}")
        if entry is None or entry.hash is None or entry.size not in (None, size):
            continue  # the size check spares hashing a few hundred MB for a wheel that cannot match
        mode = entry.hash.mode
        if mode not in digests:
            digests[mode] = _record_digest(library, mode)
        if digests[mode] == entry.hash.value:
            return name
    return None


def _record_entry(distribution: str, path: str) -> importlib.metadata.PackagePath | None:
    files = importlib.metadata.distribution(distribution).files or []
    return next((f for f in files if str(f) == path), None)


def _record_digest(path: Path, algorithm: str) -> str:
    """A file's hash as wheel RECORD files write it: urlsafe base64, no padding."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, algorithm).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def matmul_gflops(n: int = 512, seconds: float = 0.2) -> float:
    """float32 n x n matrix products per second on MLX's default device, as GFLOP/s, over about `seconds`."""
    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a, b, a @ b)  # warm-up: the first product pays for thread pools and allocations
    reps, start = 0, time.perf_counter()
    while True:
        mx.eval(a @ b)
        reps += 1
        if time.perf_counter() - start > seconds:
            break
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
