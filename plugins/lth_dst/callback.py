"""The RigL/SET callback (see :mod:`lth_dst`); loaded when a run uses it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lth_core import (
    Allocation,
    Mask,
    RoundContext,
    allocation_densities,
    atomic_write_text,
    erk_densities,
    is_writer,
    keep_top,
    layer_counts,
    make_dir,
    prunable_parameters,
    seeded_generator,
)


class DynamicSparsity(pl.Callback):
    """Drops the smallest active weights and regrows as many, every ``update_every`` steps."""

    owns_mask = True  # it grows the mask back: the core lets it, and only it (one owner per run)

    def __init__(self, context: RoundContext, method: str, density: float, update_every: int, drop_fraction: float,
                 decay: str, end_step: int, distribution: str):
        self.context, self.method, self.density = context, method, density
        self.update_every, self.drop_fraction, self.decay, self.end_step = update_every, drop_fraction, decay, end_step
        self.distribution = distribution
        self.records: list[dict] = []

    # -- the schedule --------------------------------------------------------------------

    def is_update(self, t: int) -> bool:
        """Whether the mask changes after step ``t``."""
        return 0 < t < self.end_step and t % self.update_every == 0

    def fraction(self, t: int) -> float:
        """The drop fraction at step ``t``: α, or α/2 (1 + cos(π t / end_step))."""
        if self.decay == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2.0 * (1.0 + math.cos(math.pi * t / self.end_step))

    def counts(self) -> dict[str, int]:
        """Weights each layer keeps throughout (within the round's own mask)."""
        start = self.context.mask
        if self.distribution == "erk":
            densities = erk_densities(start, self.density)
        else:
            densities = allocation_densities(start, self.density, Allocation.of_recipe(self.context.recipe, start).rates)
        return layer_counts(densities, start)

    # -- Lightning hooks -----------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A random mask at the layers' densities (a resumed run then jumps to its checkpoint's)."""
        start, counts = self.context.mask, self.counts()
        gen = seeded_generator(self.context.recipe["seed"], self.context.round, self.context.name, self.method, "start")
        first = {n: keep_top(torch.rand(m.shape, generator=gen), m, counts[n]) for n, m in start.items()}
        self.context.module.set_mask(Mask(first))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.method == "rigl" and self.is_update(self.context.module.step + 1):
            self.context.module.capture_dense_grads()  # this step's gradients, before the mask zeroes the pruned ones

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        t = self.context.module.step
        if self.is_update(t):
            self.update(t)

    def state_dict(self) -> dict[str, Any]:
        """The updates so far (the mask itself is in the core's checkpoint)."""
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict["records"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self.context.out_dir
        if out is None or not is_writer():
            return
        make_dir(Path(out))
        record = {"method": self.method, "density": self.density, "distribution": self.distribution,
                  "update_every": self.update_every, "drop_fraction": self.drop_fraction, "decay": self.decay,
                  "end_step": self.end_step, "updates": self.records}
        atomic_write_text(Path(out) / f"{self.method}.json", json.dumps(record, indent=1))

    # -- one update ----------------------------------------------------------------------

    def update(self, t: int) -> None:
        """Drop ``fraction(t)`` of each layer's active weights by magnitude; regrow as many."""
        run = self.context.module
        params = prunable_parameters(run.model)
        grads = run.dense_grads() if self.method == "rigl" else {}
        gen = seeded_generator(self.context.recipe["seed"], self.context.round, self.context.name, self.method, t)
        f = self.fraction(t)
        new, moved, returned = {}, 0, 0
        for n, active in run.mask.items():
            k = int(round(f * int(active.sum())))
            if k == 0:
                new[n] = active
                continue
            weights = params[n].detach().abs().cpu()
            kept = keep_top(weights, active, int(active.sum()) - k)
            candidates = self.context.mask[n] & ~kept
            grown = keep_top(self._grow_scores(n, grads, gen, candidates), candidates, k)
            new[n] = kept | grown
            moved += k
            returned += int((grown & ~active).sum())
        run.set_mask(Mask(new))
        self.records.append({"step": t, "drop_fraction": f, "moved": moved, "regrown_outside_previous_mask": returned,
                             "weights_remaining": run.mask.density()})

    def _grow_scores(self, name: str, grads: dict[str, Tensor], gen: torch.Generator, candidates: Tensor) -> Tensor:
        """RigL: |dense gradient|; SET: uniform random numbers (the top ``k`` are a random choice)."""
        if self.method == "rigl":
            if name not in grads:
                raise RuntimeError(f"rigl: no dense gradient of {name} was kept at this step")
            return grads[name].detach().abs().float().cpu()
        return torch.rand(candidates.shape, generator=gen)
