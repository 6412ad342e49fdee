"""Time per training step: lth's round vs a plain PyTorch loop vs Lightning's ModelPruning.

The same work in one process, side by side: LeNet-300-100 (or Conv-4 on 32x32 inputs) on
real Fashion-MNIST tensors, a mask keeping 20% of every layer (drawn once, shared), batch
60, Adam 1.2e-3, the same number of steps, no evaluation inside the timed span.

- ``raw``: a plain loop over in-memory tensors: index a batch, forward, backward, step,
  re-apply the masks (``w.mul_(m)``), the anchor of issue 8;
- ``lth``: :class:`lth_core.engines.module.LotteryModule` under ``pl.Trainer.fit`` exactly as a
  lottery round without training callbacks trains: 50 steps per Lightning call over
  ``StepChunks`` (``steps_per_call``, the default), mask held by ``MaskEnforcer``;
- ``lth_per_step``: the same with one step per call (Lightning's automatic loop), what a
  round runs when a callback needs hooks inside the step;
- ``modelpruning``: a plain LightningModule with Lightning's
  ``ModelPruning("l1_unstructured", use_lottery_ticket_hypothesis=True)`` pruning 80% at
  the start, fed by a standard ``DataLoader`` over a ``TensorDataset`` (shuffled).

The plain loop and ModelPruning train on float32 tensors, as a user's own loop would; lth
on the data as a lottery holds it: Fashion-MNIST's bytes, normalised per batch (the same
values), so the ratio includes that work. ``--device cuda`` trains every variant on the
GPU, with the data resident there for the plain loop and lth (ModelPruning's DataLoader
copies each batch from the host, as Lightning's usual input pipeline does).

Each variant runs ``--repeats`` times, interleaved, and the median time per step counts.
Peak resident memory of the process is reported too. The last line is a JSON object with
``lth_vs_raw`` and ``modelpruning_vs_lth`` (and the same for ``conv4`` with ``--conv4``).

    OMP_NUM_THREADS=1 python benchmarks/overhead.py [--steps 600] [--repeats 3] [--conv4] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lth_core import Mask, Normalization, apply_mask, prunable_parameters, quiet_lightning
from lth_core.data.loaders import StepChunks, TensorLoader
from lth_core.engines.module import LotteryModule, build_optimizer
from lth_datasets import fashion_mnist
from lth_models import lenet300
from lth_models.convnets import conv4

OPT = {"name": "adam", "lr": 1.2e-3, "weight_decay": 0.0, "momentum": 0.0, "nesterov": False}
BATCH = 60


@dataclass
class Data:
    """The training examples: ``x`` float32 (the plain loop's, ModelPruning's), ``stored``
    and ``normalization`` as a lottery holds them (lth's), all on ``device``."""

    x: torch.Tensor
    y: torch.Tensor
    stored: torch.Tensor
    normalization: Normalization | None
    device: torch.device

    def sync(self) -> None:
        """Wait for the device, so a clock read after it counts the work queued before."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def make_mask(model: nn.Module, density: float = 0.2) -> Mask:
    """Keep a random 20% of every prunable layer (fixed seed): what a round trains under."""
    g = torch.Generator().manual_seed(0)
    return Mask({n: torch.rand(p.shape, generator=g) < density for n, p in prunable_parameters(model).items()})


def raw_loop(model: nn.Module, mask: Mask, data: Data, steps: int) -> float:
    """Seconds per step of the plain loop."""
    x, y = data.x, data.y
    model.to(data.device)
    params = dict(model.named_parameters())
    pairs = [(params[n], m.float().to(data.device)) for n, m in mask.items()]
    opt = build_optimizer(model.parameters(), OPT)
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(x.shape[0], generator=g).to(data.device)
    per_epoch = x.shape[0] // BATCH
    data.sync()
    start = time.perf_counter()
    for step in range(steps):
        if step and step % per_epoch == 0:
            order = torch.randperm(x.shape[0], generator=g).to(data.device)
        sel = order[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
        loss = F.cross_entropy(model(x[sel]), y[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)
    data.sync()
    return (time.perf_counter() - start) / steps


class _Clock(pl.Callback):
    """Times the training steps only (from the first batch to the end of fit)."""

    def __init__(self, data: Data):
        self.data = data

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0 and not hasattr(self, "start"):
            self.data.sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.data.sync()
        self.seconds = time.perf_counter() - self.start


def _trainer(steps: int, clock: _Clock, callbacks: list | None = None) -> pl.Trainer:
    accelerator = "gpu" if clock.data.device.type == "cuda" else "cpu"
    return pl.Trainer(max_steps=steps, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=[clock, *(callbacks or [])])


def lth_round(model: nn.Module, mask: Mask, data: Data, steps: int, chunk: int = 50) -> float:
    """Seconds per step of a lottery round's training (LotteryModule, ``chunk`` steps per call)."""
    apply_mask(model, mask)
    module = LotteryModule(model, mask, OPT, num_classes=10)
    module.train_in_chunks(chunk, BATCH)
    loader = TensorLoader(data.stored, data.y, BATCH, shuffle=True, seed=1, drop_last=True, normalization=data.normalization)
    clock = _Clock(data)
    _trainer(steps, clock).fit(module, train_dataloaders=StepChunks(loader, 0, steps, chunk) if chunk > 1 else loader)
    return clock.seconds / steps


def lth_per_step(model: nn.Module, mask: Mask, data: Data, steps: int) -> float:
    return lth_round(model, mask, data, steps, chunk=1)


class _Plain(pl.LightningModule):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return build_optimizer(self.model.parameters(), OPT)


def model_pruning(model: nn.Module, mask: Mask, data: Data, steps: int) -> float:
    """Seconds per step of Lightning's ModelPruning (LTH mode, 80% pruned at once) + DataLoader."""
    from pytorch_lightning.callbacks import ModelPruning

    class PruneAtStart(ModelPruning):
        """ModelPruning prunes at epoch ends; here it prunes 80% (and rewinds) before step 0."""

        def on_train_start(self, trainer, module):
            self.apply_pruning(0.8)
            self.apply_lottery_ticket_hypothesis()

    pruning = PruneAtStart("l1_unstructured", amount=0.8, use_lottery_ticket_hypothesis=True,
                           apply_pruning=False, verbose=0)
    loader = DataLoader(TensorDataset(data.x.cpu(), data.y.cpu()), batch_size=BATCH, shuffle=True, drop_last=True)
    clock = _Clock(data)
    _trainer(steps, clock, [pruning]).fit(_Plain(model), train_dataloaders=loader)
    return clock.seconds / steps


def compare(name: str, build, data: Data, steps: int, repeats: int) -> dict:
    runs = {"raw": raw_loop, "lth": lth_round, "lth_per_step": lth_per_step, "modelpruning": model_pruning}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):  # interleaved, so drift in the machine's load hits every variant
        for key, fn in runs.items():
            torch.manual_seed(0)
            model = build()
            times[key].append(fn(model, make_mask(model), data, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name}: ms per step  raw {1000 * med['raw']:.2f}  lth {1000 * med['lth']:.2f}  "
          f"lth one step per call {1000 * med['lth_per_step']:.2f}  "
          f"ModelPruning {1000 * med['modelpruning']:.2f}   (medians of {repeats} x {steps} steps)")
    return {
        "ms_per_step": {k: round(1000 * v, 3) for k, v in med.items()},
        "lth_vs_raw": round(med["lth"] / med["raw"], 3),
        "modelpruning_vs_lth": round(med["modelpruning"] / med["lth"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conv4", action="store_true", help="also Conv-4 on 3x32x32 inputs (Fashion-MNIST padded)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to train every variant on the GPU")
    args = ap.parse_args()
    quiet_lightning()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    bundle = fashion_mnist()
    x = bundle.normalise(bundle.train_x)
    data = Data(x.to(device), bundle.train_y.to(device), bundle.train_x.to(device), bundle.normalization, device)
    out = compare("LeNet-300-100", lambda: lenet300((1, 28, 28), 10), data, args.steps, args.repeats)
    if args.conv4:
        x32 = F.pad(x[:6000], (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous().to(device)
        small = Data(x32, data.y[:6000], x32, None, device)  # padded floats: nothing to normalise per batch
        out["conv4"] = compare("Conv-4 (3x32x32)", lambda: conv4((3, 32, 32), 10), small, max(60, args.steps // 10), args.repeats)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["threads"], out["device"] = torch.get_num_threads(), str(device)
    out["torch"], out["pytorch_lightning"] = torch.__version__, pl.__version__
    print(json.dumps({"lth_vs_raw": out.pop("lth_vs_raw"), "modelpruning_vs_lth": out.pop("modelpruning_vs_lth"), **out}))


if __name__ == "__main__":
    main()
