"""The GPU check: what lth promises on a CUDA device, in one command and under five minutes.

Nothing here has a GPU; this is ready for the day one is at hand:

    python benchmarks/gpu.py            # one JSON line; --quick for a smaller check (tests)
    python benchmarks/gpu.py --quick --device cpu   # the script itself, checked on the CPU (digits)

1. **Repeatability.** A short lottery (2 pruning rounds) runs twice with the same seed, for
   LeNet-300-100 (cuBLAS) and Conv-2 (cuDNN convolutions), on Fashion-MNIST when Debian's
   copy is installed, else scikit-learn's digits. ``repeat.<model>.identical`` says whether
   every ticket (masks, start and trained weights) came out bit for bit the same; when not,
   ``note`` states why (cuDNN and cuBLAS pick nondeterministic kernels unless told
   otherwise; ``trainer.deterministic: true`` asks Lightning for deterministic ones) and
   ``max_weight_diff`` how far the trained weights drifted.
2. **lth against a plain loop on the GPU**: ``benchmarks/overhead.py``'s comparison with
   ``--device cuda`` (``lth_vs_raw``, ``modelpruning_vs_lth``).
3. **Stacked trials**: ``vectorize_trials`` with K = 8 LeNet-300-100 trials (``true`` and
   ``batched``) against the 8 trained one after another (``benchmarks/vectorised_trials.py``
   on the GPU): throughput ratios.
4. **The tensor data path on the GPU**: a lottery's data is held on the device when it fits
   (``data_on_device_in_lottery``, seen from a plugin hook), its batches equal the CPU's bit
   for bit (``device_batches_equal_cpu``), and the profiler counts the host-to-device copies
   while a round trains (``htod_copies_per_step``: the epoch's order of examples, once per
   epoch, and nothing per step).

Without CUDA it prints a message on standard error and ``{"cuda": false, ...}``, and exits
with status 0: there is nothing to check, which is not a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from lth_core import hookimpl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py, vectorised_trials.py

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
NONDETERMINISM = ("cuDNN and cuBLAS choose nondeterministic kernels (atomic adds in convolution and matrix-product "
                  "backward passes) unless asked otherwise: set trainer.deterministic: true, or "
                  "CUBLAS_WORKSPACE_CONFIG=:4096:8, for bit-identical reruns at some cost in speed")


def fashion(device: torch.device) -> bool:
    """Fashion-MNIST on the GPU when Debian's copy is there; the digits otherwise (and on the CPU, where
    only the script itself is being checked)."""
    return device.type == "cuda" and DEBIAN_FASHION.is_file()


def recipe(model: str, steps: int, device: torch.device) -> dict:
    """A short lottery: two pruning rounds of ``steps`` steps, evaluated every ``steps // 3``."""
    data = {"name": "fashion_mnist", "batch_size": 60, "val_size": 5000} if fashion(device) else {"name": "digits", "batch_size": 60}
    return {"name": f"gpu-{model}", "seed": 0, "model": model, "data": data, "optimizer": {"name": "adam", "lr": 1.2e-3},
            "trainer": {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1, "max_steps": steps,
                        "val_check_interval": max(1, steps // 3),
                        "enable_progress_bar": False},
            "lottery": {"rounds": 2, "rate": 0.2}, "tracking": "none"}


class DataDevice:
    """A throwaway plugin: where each run's data is held once it has trained."""

    def __init__(self) -> None:
        self.devices: set[str] = set()

    @hookimpl
    def on_round_end(self, context, ticket, metrics):
        self.devices.add(context.data.device.type)


def repeatability(model: str, steps: int, tmp: Path, device: torch.device) -> dict:
    """The same lottery twice with the same seed: are the tickets identical?"""
    import lth_core
    from lth_core import load_ticket

    watch = DataDevice()
    started = time.perf_counter()
    for run in ("a", "b"):
        lth_core.run(recipe(model, steps, device), tmp / f"{model}-{run}", plugins=[watch], say=lambda s: None)
    identical, drift = True, 0.0
    for k in range(3):
        a, b = (load_ticket(tmp / f"{model}-{run}" / f"round_{k}") for run in ("a", "b"))
        for part in ("init", "final"):
            for name, t in getattr(a, part).items():
                same = torch.equal(t, getattr(b, part)[name])
                identical &= same
                if not same and t.is_floating_point():
                    drift = max(drift, float((t - getattr(b, part)[name]).abs().max()))
        identical &= all(torch.equal(m, b.mask[n]) for n, m in a.mask.items())
    out = {"identical": identical, "seconds": round(time.perf_counter() - started, 1),
           "data_on_device_in_lottery": watch.devices == {device.type}}
    if not identical:
        out.update(note=NONDETERMINISM, max_weight_diff=drift)
    return out


def data_path(steps: int, device: torch.device) -> dict:
    """The data on the GPU: batches equal the CPU's, and what the profiler sees copied while training."""
    from torch.profiler import ProfilerActivity, profile

    from lth_core import DataModule, Mask, apply_mask, quiet_lightning
    from lth_core.engines.module import LotteryModule
    from lth_core.engines.trainer import train_loader
    from lth_datasets import digits, fashion_mnist
    from lth_models import lenet300
    from overhead import _Clock, _trainer, Data, OPT

    quiet_lightning()
    bundle = fashion_mnist() if fashion(device) else digits()
    cpu, gpu = DataModule(bundle, 60, 2000, 0.1, seed=0), DataModule(bundle, 60, 2000, 0.1, seed=0)
    placed = gpu.place(device)
    same = all(torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
               for (a, b, _) in zip(train_loader(cpu, 0, steps, 50), train_loader(gpu, 0, steps, 50), range(3)))
    model = lenet300(bundle.input_shape, 10)
    mask = Mask.ones_like(model)
    apply_mask(model, mask)
    module = LotteryModule(model, mask, OPT, num_classes=10)
    module.train_in_chunks(50, 60)
    clock = _Clock(Data(None, None, None, None, device))
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]) as prof:
        _trainer(steps, clock).fit(module, train_dataloaders=train_loader(gpu, 0, steps, 50))
    copies = sum(e.count for e in prof.key_averages() if "HtoD" in e.key)
    return {"data_placed_on_device": placed, "device_batches_equal_cpu": same, "htod_copies": copies,
            "htod_copies_per_step": round(copies / steps, 3), "ms_per_step": round(1000 * clock.seconds / steps, 3)}


def speed(steps: int, repeats: int, k: int, device: torch.device) -> dict:
    """lth against the plain loop, and K stacked trials against K sequential ones, on the GPU."""
    import overhead
    import vectorised_trials as vt
    from lth_datasets import fashion_mnist
    from lth_models import lenet300

    if not DEBIAN_FASHION.is_file():
        return {"speed_skipped": "needs Debian's dataset-fashion-mnist (the benchmarks' data)"}
    bundle = fashion_mnist()
    x = bundle.normalise(bundle.train_x)
    data = overhead.Data(x.to(device), bundle.train_y.to(device), bundle.train_x.to(device), bundle.normalization, device)
    out = overhead.compare(f"LeNet-300-100 on {device}", lambda: lenet300(bundle.input_shape, 10), data, steps, repeats)
    runs = {"sequential": lambda: vt.sequential(k, data, steps), "stacked": lambda: vt.stacked(k, data, steps),
            "batched": lambda: vt.stacked(k, data, steps, batched=True)}
    times = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            times[key].append(fn()[0])
    med = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    out["vectorize_trials"] = {"k": k, "stacked_vs_sequential": round(med["sequential"] / med["stacked"], 3),
                               "batched_vs_sequential": round(med["sequential"] / med["batched"], 3),
                               "ms_per_network_step": {key: round(1000 * v, 3) for key, v in med.items()}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller check (for tests): fewer steps and repeats")
    ap.add_argument("--device", default="cuda", help="cuda; cpu checks the script itself (on the digits, no GPU numbers)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        message = "benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
        print(message, file=sys.stderr)
        print(json.dumps({"cuda": False, "message": message, "torch": torch.__version__, "cuda_build": torch.version.cuda}))
        return 0
    steps, repeats = (60, 1) if args.quick else (300, 3)
    started = time.perf_counter()
    out: dict = {"cuda": device.type == "cuda", "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory(prefix="lth-gpu-") as tmp:
        out["repeat"] = {model: repeatability(model, steps, Path(tmp), device) for model in ("lenet300", "conv2")}
    out["data_path"] = data_path(steps, device)
    out.update(speed(steps, repeats, 2 if args.quick else 8, device))
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
