"""`mlx_ft doctor`: what MLX will compute on here, why, and what to fix. Quick, offline, changes nothing.

Every fact is kept as a JSON value and as the text printed for it, so `--json` and the text show the same facts.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform as host
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_ft import __version__, models
from mlx_ft.errors import UserError
from mlx_ft.system import blas, devices

CUDA13_MIN_DRIVER = 580  # CUDA 13 runs on NVIDIA drivers 580 and newer; older ones need the CUDA 12 build

_DEVICE_TEXT = {"metal": "metal (Apple GPU)", "cuda": "cuda (NVIDIA GPU)", "cpu": "cpu"}


@dataclass(frozen=True)
class Fact:
    key: str  # its JSON key
    value: Any  # its JSON value
    text: str  # the value as printed
    label: str  # the key as printed


@dataclass
class Report:
    facts: list[Fact] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: Any, text: str | None = None, label: str | None = None) -> None:
        self.facts.append(Fact(key, value, str(value) if text is None else text, label or key.replace("_", " ")))

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def lines(self) -> list[str]:
        width = max(len(f.label) for f in self.facts) + 1
        out = [f"{f.label + ':':<{width}} {f.text}" for f in self.facts]
        if self.problems:
            return [*out, "", "problems:", *(f"- {p}" for p in self.problems)]
        return [*out, "", "no problems found"]

    def to_json(self) -> dict[str, Any]:
        return {f.key: f.value for f in self.facts} | {"problems": self.problems}


def diagnose() -> Report:
    report = Report()
    _software(report)
    installed, on_disk = _backend(report)
    try:
        device = devices.current()
    except (ImportError, OSError, RuntimeError, UserError) as e:  # a broken install is what doctor is there for
        report.add("device", None, "unknown")
        report.problems.append(f"MLX cannot start: {e}")
        device = None
    if device is not None:
        _device(report, device)
        if device.kind == "cpu":
            _cpu_speed(report)
            _nvidia_unused(report, installed, on_disk)
        _peak(report, device)
    _caches(report)
    return report


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _software(report: Report) -> None:
    report.add("python", host.python_version(), f"{host.python_version()} ({sys.executable})")
    report.add("platform", host.platform())
    report.add("mlx_ft", __version__, label="mlx_ft")
    for name in ("mlx", "mlx-lm", "transformers"):
        version = _version(name)
        report.add(name.replace("-", "_"), version, version or "not installed", label=name)


def _backend(report: Report) -> tuple[list[str], str | None]:
    """Which wheel's MLX library is on disk, and the problem when several wheels share that one file."""
    installed = devices.installed_backends()
    on_disk = devices.mlx_backend_package()
    library = devices.mlx_library()
    where = f"owns {library}" if library else "no MLX library found"
    report.add("mlx_backend", on_disk, f"{on_disk} ({where})" if on_disk else f"unknown ({where}; a source build?)")
    report.add("mlx_backends_installed", installed, ", ".join(installed) or "none")
    if len(installed) > 1 and (problem := _several_backends_problem(installed, on_disk, devices.nvidia_gpu_present())):
        report.problems.append(problem)
    return installed, on_disk


def _several_backends_problem(installed: list[str], on_disk: str | None, nvidia_gpu: bool) -> str | None:
    """Several backend wheels are the normal state of a CUDA install (mlx_ft requires mlx-cpu on Linux); only the
    wrong one's library on disk is a problem. Never suggest uninstalling: that deletes the shared file, and the next
    install of mlx_ft brings mlx-cpu back."""
    keep = _backend_to_keep(installed, on_disk, nvidia_gpu)
    if on_disk == keep:
        return None
    version = _version("mlx")
    pin = f"=={version}" if version else ""
    return (
        f"several MLX backends are installed ({', '.join(installed)}) and write the same library file, "
        f"mlx/lib/libmlx.so; the one on disk is {on_disk or 'none of theirs'}, the one to use here {keep}: "
        f"`pip install --force-reinstall --no-deps {keep}{pin}` (again after each upgrade of mlx or mlx_ft: "
        "the last backend installed wins)"
    )


def _backend_to_keep(installed: list[str], on_disk: str | None, nvidia_gpu: bool) -> str:
    cuda = [b for b in installed if b.startswith("mlx-cuda")]
    if nvidia_gpu and cuda:
        return on_disk if on_disk in cuda else cuda[-1]  # the newest CUDA build unless one is already in use
    if not nvidia_gpu and "mlx-cpu" in installed:
        return "mlx-cpu"  # a CUDA build has nothing to run on here
    return on_disk or installed[-1]


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _device(report: Report, device: devices.Device) -> None:
    report.add("device", device.kind, _DEVICE_TEXT[device.kind])
    report.add("device_name", device.name)
    report.add("memory_bytes", device.memory_bytes, _size(device.memory_bytes), label="memory")
    if device.kind == "cuda":
        report.add("driver", device.driver, device.driver or "unknown")
    if device.cores:
        report.add("cpu_cores", device.cores)


def _cpu_speed(report: Report) -> None:
    """Which BLAS MLX multiplies with, and how fast that really is: the one thing that makes CPU training ~35x slow."""
    status = blas.use_fast_blas()
    report.add(
        "blas", {"state": status.state, "library": status.library, "source": status.source}, blas.describe(status)
    )
    if status.failed:  # present but not loadable: say why, whether or not a later candidate loaded
        report.add("blas_failed", list(status.failed), "; ".join(status.failed), label="blas not loaded")
    if problem := _blas_problem(status):
        report.problems.append(problem)
    gflops = devices.matmul_gflops()
    report.add(
        "matmul_gflops", round(gflops, 1), f"{gflops:.1f} GFLOP/s (float32 512x512, measured now)", label="matmul"
    )


def _blas_problem(status: blas.BlasStatus) -> str | None:
    if status.state != "opted-out":
        return blas.blas_warning()
    found = blas.find_fast_blas()
    fix = (
        f"unset it to use {found.path}" if found else f"unset it and install a fast BLAS with {blas.INSTALL_FAST_BLAS}"
    )
    return f"{blas.OPT_OUT_ENV} is set, so MLX multiplies with mlx-cpu's bundled reference BLAS, ~35x slower: {fix}"


def _nvidia_unused(report: Report, installed: list[str], on_disk: str | None) -> None:
    """An NVIDIA GPU sits idle while MLX runs on the CPU: say which install makes MLX use it."""
    if not devices.nvidia_gpu_present():
        return
    gpus = devices.nvidia_smi_gpus()
    name = gpus[0].name if gpus else "an NVIDIA GPU"
    driver = devices.nvidia_driver_version()
    report.add("nvidia_gpu", name, f"{name} (driver {driver or 'unknown'}), not used by MLX")
    if on_disk and on_disk.startswith("mlx-cuda"):  # also with mlx-cpu installed beside it, as on every Linux
        report.problems.append(
            f"{on_disk} is installed but MLX finds no usable GPU: check `nvidia-smi`; CUDA 13 "
            f"needs driver {CUDA13_MIN_DRIVER}+ (here: {driver or 'unknown'}), older drivers "
            f'need `pip install "mlx-ft[cuda12]"`'
        )
        return
    if len(installed) > 1:
        return  # the several-backends problem already names the fix
    extra, mlx_extra = _cuda_extras(driver)
    report.problems.append(
        f"{name} is here but MLX runs on the CPU: install MLX's CUDA build with "
        f'`pip install "mlx-ft[{extra}]"` (or `pip install "mlx[{mlx_extra}]"`; `[cuda]` needs '
        f"driver {CUDA13_MIN_DRIVER}+, `[cuda12]` is for older ones), then run "
        "`python -m mlx_ft doctor` again"
    )


def _cuda_extras(driver: str | None) -> tuple[str, str]:
    """mlx-ft's extra and MLX's own for this driver: CUDA 13 unless the driver is known to be too old for it."""
    major = driver.split(".")[0] if driver else ""
    return ("cuda12", "cuda12") if major.isdigit() and int(major) < CUDA13_MIN_DRIVER else ("cuda", "cuda13")


def _peak(report: Report, device: devices.Device) -> None:
    env = devices.PEAK_ENV
    if device.peak_flops is None:
        text = f"unknown: training shows GFLOP/s, not MFU (set {env}=<dense bf16 TFLOP/s> for MFU)"
    elif os.environ.get(env, "").strip():
        text = f"{device.peak_flops / 1e12:g} TFLOP/s (from {env})"
    else:
        text = f"{device.peak_flops / 1e12:g} TFLOP/s (dense bf16, NVIDIA's datasheet; {env} overrides it)"
    report.add("peak_flops", device.peak_flops, text, label="peak")


def _caches(report: Report) -> None:
    # The hub client's own reading of HF_HOME / HF_HUB_CACHE, so the path is the one downloads go to.
    from huggingface_hub.constants import HF_HUB_CACHE

    for key, path in (("model_cache", models.cache_home()), ("hf_cache", Path(HF_HUB_CACHE).expanduser())):
        size = _disk_usage(path) if path.is_dir() else None
        text = f"{path} ({_size(size)})" if path.is_dir() else f"{path} (does not exist yet)"
        report.add(
            key,
            {"path": str(path), "exists": path.is_dir(), "bytes": size},
            text,
            label="Hugging Face cache" if key == "hf_cache" else None,
        )


def _disk_usage(folder: Path) -> int:
    """Bytes on disk under `folder`; symlinks (the hub cache's snapshots) are not followed, so nothing counts twice."""
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def main(as_json: bool) -> int:
    """Print the report; the exit status is 1 when it found problems."""
    report = diagnose()
    print(json.dumps(report.to_json(), indent=2) if as_json else "\n".join(report.lines()))
    return report.exit_code
