"""What lth promises on a CUDA device (issue 22, item 4). Marked ``gpu``: skipped here.

On a machine with CUDA, ``pytest -m gpu`` runs these; ``benchmarks/gpu.py`` is the longer
check with speed ratios. Without CUDA the benchmark says so and exits cleanly, which is
tested everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lth_datasets
from lth_core import DataModule
from lth_core.engines.trainer import train_loader

GPU_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_the_gpu_check_without_cuda_says_so_and_exits_cleanly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check runs for real in test_the_gpu_check_runs")
    proc = subprocess.run([sys.executable, str(GPU_SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to check"]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cuda"] is False and out["message"] and out["torch"] == torch.__version__


def test_the_gpu_check_itself_runs_on_the_cpu() -> None:
    """``--device cpu`` runs every step of the check on the CPU (the digits): the script
    works before a GPU is at hand; only its numbers need one."""
    proc = subprocess.run([sys.executable, str(GPU_SCRIPT), "--quick", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cuda"] is False and all(r["identical"] and r["data_on_device_in_lottery"] for r in out["repeat"].values())
    assert out["data_path"]["device_batches_equal_cpu"] and out["data_path"]["htod_copies"] == 0


@pytest.mark.gpu
def test_the_data_stays_on_the_gpu_and_its_batches_are_the_cpu_s() -> None:
    """Placed on the device, the loaders gather there (no copy per step) the same values."""
    bundle = lth_datasets.digits()
    cpu, gpu = DataModule(bundle, 32, 500, 0.1, seed=0), DataModule(bundle, 32, 500, 0.1, seed=0)
    assert gpu.place("cuda") and gpu.device.type == "cuda" and cpu.device.type == "cpu"
    for a, b in zip(train_loader(cpu, 0, 100, 25), train_loader(gpu, 0, 100, 25)):
        assert b[0].device.type == "cuda" and torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    for la, lb in zip(cpu.eval_loaders(), gpu.eval_loaders()):
        assert all(torch.equal(a[0], b[0].cpu()) for a, b in zip(la, lb))
    assert torch.equal(cpu.sample_batch(16)[0], gpu.sample_batch(16)[0])  # criteria get CPU tensors, as before


@pytest.mark.gpu
def test_the_gpu_check_runs() -> None:
    proc = subprocess.run([sys.executable, str(GPU_SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cuda"] is True and set(out["repeat"]) == {"lenet300", "conv2"}
    assert all(r["identical"] or r["note"] for r in out["repeat"].values())
    assert all(r["data_on_device_in_lottery"] for r in out["repeat"].values())
    assert out["data_path"]["data_placed_on_device"] and out["data_path"]["device_batches_equal_cpu"]
