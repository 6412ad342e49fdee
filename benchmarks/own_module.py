"""LeNet-300-100 on Fashion-MNIST two ways: the bundled recipe (lth's own classifier and
in-memory data) and the same network as a user's own LightningModule over DataLoaders
(``lth_core.run(module=..., datamodule=...)``), with the recipe's settings on both sides.

Prints one JSON line: each round's weights remaining, test accuracy at the early-stopping
step and that step for both, and milliseconds per training step (the ticket runs' time,
evaluations included, over their steps) of both and of the same module trained by a plain
Lightning ``Trainer.fit`` without lth (what lth adds to a module of your own), with ratios.

    python benchmarks/own_module.py --rounds 3 --steps 1000
"""

from __future__ import annotations

import argparse
import json
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lth_core


class FashionMNIST(pl.LightningDataModule):
    """Fashion-MNIST standardised as lth's data set plugin does, 5,000 training images held out."""

    def __init__(self, batch_size: int = 60):
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):  # Lightning calls setup at every fit and test: load once
            return
        from lth_datasets import fashion_mnist  # the bundled plugin's loader: the same tensors

        bundle = fashion_mnist()
        order = torch.randperm(len(bundle.train_y), generator=torch.Generator().manual_seed(0))
        n_val = 5000  # as the recipe's data.val_size
        val, train = order[:n_val], order[n_val:]
        x, test_x = bundle.normalise(bundle.train_x), bundle.normalise(bundle.test_x)  # stored as uint8: the float32 the model sees
        self.train_set = TensorDataset(x[train], bundle.train_y[train])
        self.val_set = TensorDataset(x[val], bundle.train_y[val])
        self.test_set = TensorDataset(test_x, bundle.test_y)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=2000)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=2000)


class LeNet(pl.LightningModule):
    """LeNet-300-100 as a user writes it: Glorot-normal weights, Adam 1.2e-3."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1.2e-3)


def _timed(say_lines: list[str]):
    """A ``say`` that stamps each progress line, to time the ticket runs."""
    def say(text: str) -> None:
        say_lines.append((time.perf_counter(), text))
    return say


def _train_ms(lines: list, rounds: int, steps: int) -> float:
    """Milliseconds per step of the ticket runs: from each 'round k/...' announcement to its
    result line (evaluation included, as in any run)."""
    starts = [t for t, s in lines if s.startswith("round ") and ("pruned to" in s or "dense network" in s)]
    ends = [t for t, s in lines if "[ticket] weights remaining" in s]
    return 1000 * sum(e - b for b, e in zip(starts, ends)) / ((rounds + 1) * steps)


def plain_lightning_ms(steps: int, every: int) -> float:
    """Milliseconds per step of the module's own fit and test, no lth: the baseline for what
    lth adds to it (the same Trainer settings as lth's runs)."""
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_steps=steps, val_check_interval=every, check_val_every_n_epoch=None, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    module, data = LeNet(), FashionMNIST()
    data.setup("fit")  # loading the files is not a training step's cost
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default="runs/own_module_benchmark")
    args = ap.parse_args()
    every = max(1, args.steps // 4)
    changes = {"lottery.rounds": args.rounds, "trainer.max_steps": args.steps, "trainer.val_check_interval": every,
               "trainer.max_epochs": -1, "controls": [], "tracking": "none", "checkpoint_every_n_steps": 0, "trials": 1}
    native_lines: list = []
    native = lth_core.run("lenet300_fashion_mnist", out=f"{args.out}/native", overrides=changes, say=_timed(native_lines))
    own_lines: list = []
    own_recipe = {"seed": 0, "lottery": {"rounds": args.rounds, "rate": 0.2, "layer_rates": {"last": 0.1}}, "controls": [],
                  "trainer": {"max_steps": args.steps, "val_check_interval": every, "enable_progress_bar": False},
                  "tracking": "none", "checkpoint_every_n_steps": 0}
    own = lth_core.run(own_recipe, out=f"{args.out}/own", module=LeNet, datamodule=FashionMNIST(), say=_timed(own_lines))
    ms = {"native": _train_ms(native_lines, args.rounds, args.steps), "own_module": _train_ms(own_lines, args.rounds, args.steps),
          "plain_lightning": plain_lightning_ms(args.steps, every)}
    rows = [{"round": a["round"], "weights_remaining": round(a["weights_remaining"], 4),
             "native_test_acc": round(a["test_acc"], 4), "own_test_acc": round(b["test_acc"], 4),
             "native_stop": a["early_stop_step"], "own_stop": b["early_stop_step"]}
            for a, b in zip(native["rounds"], own["rounds"])]
    print(json.dumps({"steps": args.steps, "rounds": rows, "ms_per_step": {k: round(v, 3) for k, v in ms.items()},
                      "own_vs_native": round(ms["own_module"] / ms["native"], 3),
                      "own_vs_plain_lightning": round(ms["own_module"] / ms["plain_lightning"], 3)}))


if __name__ == "__main__":
    main()
