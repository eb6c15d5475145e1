"""`mlx_ft doctor` and mlx_ft/system/devices.py: what MLX runs on, which backend wheel's library is on disk, peak
FLOP/s."""

import json
import os
import re
import subprocess
import sys

import pytest

from mlx_ft.system import blas, devices, doctor

linux_cpu = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or blas.bundled_blas() is None
    or devices.installed_backends() != ["mlx-cpu"]
    or devices.current().kind != "cpu",
    reason="the Linux mlx-cpu wheel alone, on the CPU, is what these machines run",
)


def _doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    drop = ("LD_PRELOAD", blas.OPT_OUT_ENV, devices.PEAK_ENV)
    full_env = {k: v for k, v in os.environ.items() if k not in drop} | env
    return subprocess.run(
        [sys.executable, "-m", "mlx_ft", "doctor", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _gflops(out: str) -> float:
    return float(re.search(r"^matmul: +([\d.]+) GFLOP/s", out, re.MULTILINE).group(1))


@linux_cpu
def test_doctor_on_this_machine_finds_cpu_openblas_and_no_problem(openblas):
    r = _doctor()
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^device: +cpu$", r.stdout, re.MULTILINE)
    assert re.search(r"^mlx backend: +mlx-cpu ", r.stdout, re.MULTILINE)
    assert re.search(rf"^blas: +system OpenBLAS \({re.escape(openblas)}\)$", r.stdout, re.MULTILINE)
    assert _gflops(r.stdout) > 20  # OpenBLAS does ~100+ here; the bundled BLAS ~4
    assert r.stdout.rstrip().endswith("no problems found")


@linux_cpu
def test_doctor_flags_the_bundled_blas_with_the_fix(openblas):
    r = _doctor(**{blas.OPT_OUT_ENV: "1"})
    assert r.returncode == 1
    problems = r.stdout.split("\nproblems:\n")[1]
    assert f"{blas.OPT_OUT_ENV} is set" in problems and f"unset it to use {openblas}" in problems
    assert _gflops(r.stdout) < 20  # the measurement shows the slow BLAS, not a constant


@linux_cpu
def test_doctor_json_holds_the_same_facts(openblas):
    r = _doctor("--json")
    facts = json.loads(r.stdout)
    assert r.returncode == 0 and facts["problems"] == []
    assert facts["device"] == "cpu" and facts["mlx_backend"] == "mlx-cpu"
    assert facts["blas"] == {"state": "fast", "library": openblas, "source": "system OpenBLAS"}
    assert facts["matmul_gflops"] > 20 and facts["memory_bytes"] > 0 and facts["peak_flops"] is None


@pytest.mark.parametrize(
    "name, flops",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # what the SXM part calls itself
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA RTX A1000", None),  # "A10" is a prefix of it, not its name
        ("Tesla T4", None),
    ],
)
def test_peak_table_matches_whole_names_most_specific_first(monkeypatch, name, flops):
    monkeypatch.delenv(devices.PEAK_ENV, raising=False)
    assert devices.peak_flops(name) == flops


def test_peak_is_unknown_off_nvidia_and_the_env_var_overrides_any_device(monkeypatch):
    monkeypatch.delenv(devices.PEAK_ENV, raising=False)
    assert devices.peak_flops("Apple M2 Max", "metal") is None and devices.peak_flops("AMD EPYC", "cpu") is None
    monkeypatch.setenv(devices.PEAK_ENV, "27.2")
    assert devices.peak_flops("Apple M2 Max", "metal") == 27.2e12
    assert devices.peak_flops("NVIDIA H100 PCIe") == 27.2e12
    monkeypatch.setenv(devices.PEAK_ENV, "fast")
    with pytest.raises(devices.UserError, match="TFLOP/s"):
        devices.peak_flops("NVIDIA H100 PCIe")


def test_nvidia_smi_lines_parse():
    gpu = devices.parse_smi_line("NVIDIA H100 80GB HBM3, 81559, 550.54.15\n")
    assert gpu == devices.NvidiaGpu("NVIDIA H100 80GB HBM3", 81559 * 2**20, "550.54.15")
    assert devices.parse_smi_line("NVIDIA GH200 480GB, [N/A], [N/A]") == devices.NvidiaGpu(
        "NVIDIA GH200 480GB", None, None
    )


@linux_cpu
def test_backend_package_is_the_wheel_whose_record_hashes_the_library_on_disk(monkeypatch, tmp_path):
    assert devices.installed_backends() == ["mlx-cpu"]
    assert devices.mlx_backend_package() == "mlx-cpu"
    # Same name and size, other bytes: only the hash can tell, and it must.
    fake = tmp_path / "libmlx.so"
    with fake.open("wb") as f:
        f.truncate(devices.mlx_library().stat().st_size)
    monkeypatch.setattr(devices, "mlx_library", lambda: fake)
    assert devices.mlx_backend_package() is None


@pytest.fixture
def quick(monkeypatch):
    """diagnose() in this process without the timed matmul."""
    monkeypatch.setattr(devices, "matmul_gflops", lambda: 100.0)


@pytest.mark.parametrize("gpu, on_disk, keep", [(True, "mlx-cpu", "mlx-cuda-13"), (False, "mlx-cuda-13", "mlx-cpu")])
def test_the_wrong_backend_library_on_disk_is_a_problem_with_the_fix(monkeypatch, quick, gpu, on_disk, keep):
    monkeypatch.setattr(devices, "installed_backends", lambda: ["mlx-cpu", "mlx-cuda-13"])
    monkeypatch.setattr(devices, "mlx_backend_package", lambda: on_disk)
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: gpu)
    report = doctor.diagnose()
    assert report.exit_code == 1
    [problem] = [p for p in report.problems if "several MLX backends" in p]
    assert "(mlx-cpu, mlx-cuda-13)" in problem
    assert f"the one on disk is {on_disk}, the one to use here {keep}" in problem
    assert f"`pip install --force-reinstall --no-deps {keep}=={doctor._version('mlx')}`" in problem
    assert "uninstall" not in problem


def test_two_backend_wheels_with_the_right_library_on_disk_are_fine(monkeypatch, quick):
    """A CUDA install keeps mlx-cpu too (mlx_ft requires it on Linux): no problem while CUDA's library is on disk."""
    monkeypatch.setattr(devices, "installed_backends", lambda: ["mlx-cpu", "mlx-cuda-13"])
    monkeypatch.setattr(devices, "mlx_backend_package", lambda: "mlx-cuda-13")
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: True)
    assert not [p for p in doctor.diagnose().problems if "several MLX backends" in p]


@pytest.mark.parametrize("driver, extra", [("550.54.15", "cuda12"), ("580.82.07", "cuda")])
def test_an_idle_nvidia_gpu_is_a_problem_with_the_install_for_its_driver(monkeypatch, quick, driver, extra):
    if devices.current().kind != "cpu":
        pytest.skip("MLX runs on a GPU here")
    monkeypatch.setattr(devices, "installed_backends", lambda: ["mlx-cpu"])
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(devices, "nvidia_smi_gpus", lambda: (devices.NvidiaGpu("NVIDIA L4", 23034 * 2**20, driver),))
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: driver)
    report = doctor.diagnose()
    assert report.exit_code == 1
    [problem] = [p for p in report.problems if "MLX runs on the CPU" in p]
    assert problem.startswith("NVIDIA L4 is here") and f'`pip install "mlx-ft[{extra}]"`' in problem


def test_every_computing_command_warns_of_an_idle_nvidia_gpu(monkeypatch, tmp_path, capsys):
    if devices.current().kind != "cpu":
        pytest.skip("MLX runs on a GPU here")
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.82.07  Fri Aug 29 2025\n")
    monkeypatch.setattr(devices, "_NVIDIA_PROC", proc)
    from mlx_ft import cli

    assert cli.main(["infer", str(tmp_path / "no-such-run"), "hi"]) == 2  # fails later; the warning comes first
    err = capsys.readouterr().err
    assert "warning: an NVIDIA GPU is here but MLX runs on the CPU" in err and "mlx_ft doctor" in err
    monkeypatch.setattr(devices, "_NVIDIA_PROC", tmp_path / "absent")
    assert devices.unused_gpu_warning() is None


def test_a_cuda_build_that_finds_no_gpu_is_a_problem_beside_mlx_cpu(monkeypatch, quick):
    """Every Linux CUDA install keeps mlx-cpu too: the CUDA library on disk with MLX on the CPU must still be said."""
    if devices.current().kind != "cpu":
        pytest.skip("MLX runs on a GPU here")
    monkeypatch.setattr(devices, "installed_backends", lambda: ["mlx-cpu", "mlx-cuda-13"])
    monkeypatch.setattr(devices, "mlx_backend_package", lambda: "mlx-cuda-13")
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(devices, "nvidia_smi_gpus", lambda: (devices.NvidiaGpu("NVIDIA L4", None, "550.54.15"),))
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: "550.54.15")
    report = doctor.diagnose()
    assert report.exit_code == 1
    [problem] = report.problems
    assert problem.startswith("mlx-cuda-13 is installed but MLX finds no usable GPU") and "550.54.15" in problem


def test_a_bad_peak_override_is_reported_not_a_traceback():
    r = _doctor(**{devices.PEAK_ENV: "fast"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{devices.PEAK_ENV}='fast': give the device's dense bf16 peak" in r.stdout
