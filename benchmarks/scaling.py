"""How the cost of a lottery round grows with the model and the data.

Each cell is one real round (``lth_core.lottery.rounds.run_lottery`` with ``rounds: 0``: the dense
network's training with its evaluations) on Fashion-MNIST: Adam, batch 60, ``--steps``
steps, evaluation of the validation (5,000) and test (10,000) sets every ``--steps / 5``
steps. A timing callback splits the round into training time per step and time per
evaluation; ``round_s`` is the whole round, setup included.

Models grow in width (MLPs with LeNet-300-100's shape at 0.5x to 4x) and in kind (Conv-2,
Conv-4 on 28x28). Data grows through ``data.subset`` (training examples). The last line
is a JSON object with every cell.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [--steps 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import pytorch_lightning as pl

from lth_core import hookimpl
from lth_core import quiet_lightning
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import get_plugin_manager
from lth_core.config import validate

MODELS = {
    "mlp 150-50 (0.5x)": {"name": "mlp", "hidden": [150, 50]},
    "LeNet-300-100": {"name": "lenet300"},
    "mlp 600-200 (2x)": {"name": "mlp", "hidden": [600, 200]},
    "mlp 1200-400 (4x)": {"name": "mlp", "hidden": [1200, 400]},
    "Conv-2": {"name": "conv2"},
    "Conv-4": {"name": "conv4"},
}
SUBSETS = (5_000, 20_000, 55_000)


class Stopwatch(pl.Callback):
    """Wall time inside training calls and inside evaluations (acts between calls only)."""

    multi_step_safe = True

    def __init__(self):
        self.train_s = self.eval_s = 0.0
        self.evals = 0

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.train_s += time.perf_counter() - self._t

    def on_validation_start(self, *args):
        self._v = time.perf_counter()

    def on_validation_end(self, *args):
        self.eval_s += time.perf_counter() - self._v
        self.evals += 1


class Timing:
    def __init__(self):
        self.watch = None

    @hookimpl
    def round_callbacks(self, context):
        self.watch = Stopwatch()
        return [self.watch]


def cell(model: dict, subset: int, steps: int, pm, timing: Timing) -> dict:
    raw = {
        "name": "scaling", "model": model,
        "data": {"name": "fashion_mnist", "batch_size": 60, "subset": subset},
        "optimizer": {"name": "adam", "lr": 1.2e-3},
        "trainer": {"max_steps": steps, "val_check_interval": max(1, steps // 5), "accelerator": "cpu"},
        "lottery": {"rounds": 0}, "tracking": "none",
    }
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_lottery(validate(raw), out, say=lambda s: None, pm=pm)
        total = time.perf_counter() - start
    w = timing.watch
    return {"train_ms_per_step": round(1000 * w.train_s / steps, 2), "eval_s": round(w.eval_s / max(1, w.evals), 3),
            "round_s": round(total, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="MLPs only, two data sizes")
    args = ap.parse_args()
    quiet_lightning()
    warnings.filterwarnings("ignore")
    pm = get_plugin_manager()
    timing = Timing()
    pm.register(timing, name="scaling-timing")
    models = {k: v for k, v in MODELS.items() if not (args.quick and k.startswith("Conv"))}
    subsets = SUBSETS[:2] if args.quick else SUBSETS
    cells = []
    print(f"{'model':<20} {'params':>9} {'train examples':>15} {'ms/step':>8} {'s/eval':>7} {'round s':>8}")
    for label, spec in models.items():
        for subset in subsets:
            steps = args.steps if not label.startswith("Conv") else max(50, args.steps // 5)
            row = {"model": label, "subset": subset, "steps": steps, **cell(spec, subset, steps, pm, timing)}
            params = sum(p.numel() for p in _model(spec).parameters())
            row["params"] = params
            cells.append(row)
            print(f"{label:<20} {params:>9,} {subset:>15,} {row['train_ms_per_step']:>8.2f} {row['eval_s']:>7.3f} {row['round_s']:>8.2f}")
    print(json.dumps({"cells": cells}))


def _model(spec: dict):
    from lth_core.plugin_api.registry import get_registry

    options = {k: v for k, v in spec.items() if k != "name"}
    return get_registry().get("models", spec["name"]).obj(input_shape=(1, 28, 28), num_classes=10, **options)


if __name__ == "__main__":
    main()
