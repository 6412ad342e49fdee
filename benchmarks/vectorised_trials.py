"""Time per network-step: K trials trained one after another vs stacked (``vectorize_trials``).

The same work in one process, side by side: K = 4 LeNet-300-100 replicates (own θ0, own
data order) on real Fashion-MNIST tensors, each under a mask keeping 20% of every layer,
batch 60, Adam 1.2e-3, the same number of steps, no evaluation inside the timed span.

- ``sequential``: K lottery rounds, each :class:`lth_core.engines.module.LotteryModule` under its
  own ``pl.Trainer.fit`` exactly as a lottery round without callbacks trains: 50 steps
  per Lightning call (``benchmarks/overhead.py``'s ``lth`` variant, data order seed i);
- ``sequential_per_step``: the same with one step per Lightning call (what a round with
  per-step callbacks runs, and what every round ran before ``steps_per_call``);
- ``stacked``: one :class:`lth_core.engines.stacked.StackedModule` holding the K replicates under
  one ``pl.Trainer.fit``, 50 steps per call, fed by a :class:`lth_core.engines.stacked.StackedLoader`
  over the same K loaders: what ``vectorize_trials: true`` trains (each replicate's own forward, results
  bit for bit those of its sequential run);
- ``batched``: the same with ``vectorize_trials: batched`` (an MLP's K replicates through
  batched matrix products; results equal only to rounding);
- ``parallel``: the same with ``vectorize_trials: parallel`` (each replicate's steps on one
  of ``torch.get_num_threads()`` worker threads with one intra-op thread each; results bit
  for bit those of a one-thread sequential run);
- ``sequential_one_thread`` (with more than one thread): ``sequential`` on one intra-op
  thread, for the ratios against the faster sequential setting (``*_vs_best_sequential``).

A network-step is one optimiser step of one replicate: sequential time / (K x steps) and
stacked time / (K x steps). Every variant runs ``--repeats`` times, interleaved, and the
medians count. The last line is a JSON object with ``stacked_vs_sequential`` (throughput
ratio: sequential ms per network-step / stacked ms per network-step, wall clock),
``batched_vs_sequential``, ``paired_{stacked,batched,parallel}_vs_sequential`` (the median
of each repeat's own ratio: steadier on a machine whose speed drifts),
``paired_{batched,parallel}_vs_best_sequential`` and ``cpu_stacked_vs_sequential`` (the first ratio in the
process's CPU time).

Every variant trains on the data as a lottery holds it (Fashion-MNIST's bytes, normalised
per batch). ``--device cuda`` trains on the GPU with the data resident there (``parallel``
and ``sequential_one_thread``, CPU-thread variants, are left out).

    python benchmarks/vectorised_trials.py [--k 4] [--steps 400] [--repeats 7] [--device cuda]   # OMP_NUM_THREADS=1 for one thread
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch

from lth_core import quiet_lightning
from lth_core.data.loaders import StepChunks, TensorLoader
from lth_core import apply_mask
from lth_core.engines.stacked import StackedLoader, StackedModule
from lth_datasets import fashion_mnist
from lth_models import lenet300
from overhead import BATCH, OPT, Data, _Clock, _trainer, make_mask  # noqa: E402 - benchmarks/ is on sys.path


class CpuClock(_Clock):
    """Also the process's CPU seconds over the same span: on a machine other jobs load, CPU
    time is what the work itself costs (wall time adds the waits for a core)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0 and not hasattr(self, "start"):
            self.cpu_start = time.process_time()
        super().on_train_batch_start(trainer, module, batch, batch_idx)

    def on_train_end(self, trainer, module):
        super().on_train_end(trainer, module)
        self.cpu_seconds = time.process_time() - self.cpu_start


def replicates(k: int) -> list:
    """K LeNet-300-100s with their own θ0 (seed i), each under a 20%-density mask."""
    out = []
    for i in range(k):
        torch.manual_seed(i)
        model = lenet300((1, 28, 28), 10)
        mask = make_mask(model)
        apply_mask(model, mask)
        out.append((model, mask))
    return out


def loader(data: Data, i: int) -> TensorLoader:
    return TensorLoader(data.stored, data.y, BATCH, shuffle=True, seed=i, drop_last=True, normalization=data.normalization)


def sequential(k: int, data: Data, steps: int, chunk: int = 50) -> tuple[float, float]:
    """Wall and CPU seconds per network-step of K lottery rounds trained one after another."""
    from lth_core.engines.module import LotteryModule

    wall = cpu = 0.0
    for i, (model, mask) in enumerate(replicates(k)):
        clock = CpuClock(data)
        module = LotteryModule(model, mask, OPT, num_classes=10)
        module.train_in_chunks(chunk, BATCH)
        batches = StepChunks(loader(data, i), 0, steps, chunk) if chunk > 1 else loader(data, i)
        _trainer(steps, clock).fit(module, train_dataloaders=batches)
        wall, cpu = wall + clock.seconds, cpu + clock.cpu_seconds
    return wall / (k * steps), cpu / (k * steps)


def sequential_one_thread(k: int, data: Data, steps: int) -> tuple[float, float]:
    """:func:`sequential` with one intra-op thread (on this VM sometimes faster than two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sequential(k, data, steps)
    finally:
        torch.set_num_threads(threads)


def stacked(k: int, data: Data, steps: int, batched: bool = False, workers: int = 1) -> tuple[float, float]:
    """Wall and CPU seconds per network-step of the K replicates as one stacked model."""
    reps = replicates(k)
    module = StackedModule([m for m, _ in reps], [mk for _, mk in reps], OPT, num_classes=10,
                           input_shape=(1, 28, 28) if batched else None, workers=workers)
    assert module.batched == batched and module.workers == max(1, min(workers, k))
    module.train_in_chunks(50, BATCH)  # as vectorize_trials trains a round without callbacks
    clock = CpuClock(data)
    batches = StackedLoader([StepChunks(loader(data, i), 0, steps, 50) for i in range(k)], deferred=True)
    module.gather = batches.gather  # each step gathered from the chunk's rows, as a lottery's stacked trials do
    _trainer(steps, clock).fit(module, train_dataloaders=batches)
    return clock.seconds / (k * steps), clock.cpu_seconds / (k * steps)


def _rounded(value: float) -> float | None:
    """A ratio for the JSON line; None for a variant this device does not run (``parallel`` on a GPU)."""
    return None if value != value else round(value, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to train on the GPU with the data resident there")
    args = ap.parse_args()
    quiet_lightning()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    bundle = fashion_mnist()
    data = Data(None, bundle.train_y.to(device), bundle.train_x.to(device), bundle.normalization, device)
    threads = torch.get_num_threads()
    runs = {"sequential": sequential, "sequential_per_step": lambda *a: sequential(*a, chunk=1),
            "stacked": stacked, "batched": lambda *a: stacked(*a, batched=True)}
    if device.type == "cpu":  # worker threads on CPU cores
        runs["parallel"] = lambda *a: stacked(*a, workers=threads)
    if threads > 1 and device.type == "cpu":
        runs["sequential_one_thread"] = sequential_one_thread
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in runs}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits every variant
        for key, fn in runs.items():
            times[key].append(fn(args.k, data, args.steps))
    med = {key: statistics.median(t[0] for t in v) for key, v in times.items()}
    # Each repeat's own ratio, then their median: a slow spell of the machine hits the
    # variants of one repeat alike, so paired ratios scatter less than ratios of medians.
    variants = [key for key in ("stacked", "batched", "parallel") if key in times]
    paired = {key: statistics.median(s[0] / t[0] for s, t in zip(times["sequential"], times[key])) for key in variants}
    paired.setdefault("parallel", float("nan"))  # not on a GPU
    # Against the faster of one and two threads for the sequential rounds, repeat by repeat.
    best = [min(a[0], b[0]) for a, b in zip(times["sequential"], times.get("sequential_one_thread", times["sequential"]))]
    paired_best = {key: statistics.median(b / t[0] for b, t in zip(best, times[key])) if key in times else float("nan")
                   for key in ("batched", "parallel")}
    cpu = {key: statistics.median(t[1] for t in v) for key, v in times.items()}
    ratio = med["sequential"] / med["stacked"]
    print(f"LeNet-300-100, K={args.k}: ms per network-step  sequential {1000 * med['sequential']:.3f}  "
          f"stacked {1000 * med['stacked']:.3f}  -> {ratio:.2f}x throughput   "
          f"(batched {1000 * med['batched']:.3f}: {med['sequential'] / med['batched']:.2f}x; "
          f"sequential one step per call {1000 * med['sequential_per_step']:.3f}; medians of {args.repeats} x {args.steps} steps)")
    print(f"median of the repeats' own ratios: stacked {paired['stacked']:.2f}x, batched {paired['batched']:.2f}x, "
          f"parallel ({threads} workers) {paired['parallel']:.2f}x; against the faster of 1 and {threads} threads for "
          f"sequential: batched {paired_best['batched']:.2f}x, parallel {paired_best['parallel']:.2f}x")
    print(f"CPU ms per network-step  sequential {1000 * cpu['sequential']:.3f}  stacked {1000 * cpu['stacked']:.3f}  "
          f"-> {cpu['sequential'] / cpu['stacked']:.2f}x   (batched {1000 * cpu['batched']:.3f})")
    print(json.dumps({
        "stacked_vs_sequential": round(ratio, 3),
        "batched_vs_sequential": round(med["sequential"] / med["batched"], 3),
        "stacked_vs_sequential_per_step": round(med["sequential_per_step"] / med["stacked"], 3),
        "paired_stacked_vs_sequential": round(paired["stacked"], 3),
        "paired_batched_vs_sequential": round(paired["batched"], 3),
        "paired_parallel_vs_sequential": _rounded(paired["parallel"]),
        "paired_batched_vs_best_sequential": _rounded(paired_best["batched"]),
        "paired_parallel_vs_best_sequential": _rounded(paired_best["parallel"]),
        "cpu_stacked_vs_sequential": round(cpu["sequential"] / cpu["stacked"], 3),
        "ms_per_network_step": {key: round(1000 * v, 3) for key, v in med.items()},
        "cpu_ms_per_network_step": {key: round(1000 * v, 3) for key, v in cpu.items()},
        "runs_ms_per_network_step": {key: [round(1000 * t[0], 3) for t in v] for key, v in times.items()},
        "k": args.k, "steps": args.steps, "repeats": args.repeats,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__, "pytorch_lightning": pl.__version__,
    }))


if __name__ == "__main__":
    main()
