"""The callback that prunes during training (see :mod:`lth_gradual`); loaded when a run uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lth_core import Allocation, Mask, RoundContext, atomic_write_text, make_dir
from lth_gradual import NAME, POOL, cubic_density, layer_targets


class GradualPruning(pl.Callback):
    """Tightens the run's mask at each pruning step to the schedule's exact counts.

    Pruning units are the layers outside the global pool, plus the pool as one unit
    under ``lottery.scope: global``.
    """

    def __init__(self, context: RoundContext, criterion: str, schedule: str, target: float, rate: float,
                 interval: int, start_step: int, end_step: int):
        self.context, self.criterion, self.schedule = context, criterion, schedule
        self.interval, self.start_step, self.end_step = interval, start_step, end_step
        self.final_density, exponents, self.pooled = layer_targets(context.recipe, context.mask, target)
        self.unit_rate = {n: 1.0 - (1.0 - rate) ** e for n, e in exponents.items()}
        self.units: dict[str, list[str]] = {n: [n] for n in context.mask if n not in self.pooled}
        if self.pooled:
            self.units[POOL] = list(self.pooled)
        self.records: list[dict] = []
        self._density = context.mask.density()

    # -- the schedule --------------------------------------------------------------------

    def is_pruning_step(self, t: int) -> bool:
        return self.start_step <= t <= self.end_step and ((t - self.start_step) % self.interval == 0 or t == self.end_step)

    def _unit_kept(self, mask: Mask) -> dict[str, int]:
        return {u: sum(int(mask[n].sum()) for n in names) for u, names in self.units.items()}

    def counts(self, t: int, mask: Mask) -> dict[str, int]:
        """How many weights each unit keeps after the pruning step at ``t`` (never more than now)."""
        kept = self._unit_kept(mask)
        out = {}
        for u, names in self.units.items():
            size = sum(mask[n].numel() for n in names)
            d_final = self.final_density[names[0]]
            if self.schedule == "cubic":
                d_initial = self.kept_at_start[u] / size
                want = int(round(cubic_density(t, self.start_step, self.end_step, d_initial, min(d_final, d_initial)) * size))
            else:
                floor = int(round(d_final * size))
                rem = kept[u]
                want = floor if t == self.end_step else max(floor, rem - int(round(self.unit_rate[names[0]] * rem)))
            out[u] = min(kept[u], want)
        return out

    # -- Lightning hooks -----------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self.context.module  # the lottery's view of the run (lth's classifier or a module of the user's)
        params = dict(run.model.named_parameters())
        self.initial = {n: params[n].detach().cpu().clone() for n in run.mask}
        self.kept_at_start = self._unit_kept(run.mask)
        self._density = run.mask.density()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.context.module
        t = run.step
        if self.is_pruning_step(t):
            self._prune(run, t)
        pl_module.log(f"{run.log_prefix}density", self._density, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint inside the run keeps (``initial`` and ``kept_at_start`` are
        rebuilt by ``on_train_start`` from the run's start, as the first time)."""
        return {"records": self.records, "density": self._density, "state": self.context.state.get(NAME)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict["records"])
        self._density = state_dict["density"]
        if state_dict["state"] is not None:
            self.context.state[NAME] = state_dict["state"]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self.context.out_dir
        if out is not None and self.records:
            make_dir(Path(out))
            record = {"criterion": self.criterion, "schedule": self.schedule, "start_step": self.start_step,
                      "end_step": self.end_step, "interval": self.interval, "steps": self.records}
            # atomically: a kill mid-write must not leave half a record beside a resumable run
            atomic_write_text(Path(out) / f"{NAME}.json", json.dumps(record, indent=1))

    def _prune(self, run: Any, t: int) -> None:
        mask = run.mask
        counts = self.counts(t, mask)
        kept = self._unit_kept(mask)
        if counts == kept:
            return
        rates = {n: 1.0 - counts[u] / kept[u] if kept[u] else 0.0 for u, names in self.units.items() for n in names}
        allocation = Allocation(rates, self.context.recipe["lottery"]["scope"], tuple(self.pooled))
        new_mask = self.context.prune(self.criterion, run.model, mask, allocation, initial=self.initial,
                                      seed=(t, self.criterion), where=f" in {NAME} at step {t}")
        run.set_mask(new_mask)
        self._density = new_mask.density()
        self.context.state[NAME] = {"step": t, "weights_remaining": self._density}
        self.records.append({"step": t, "weights_remaining": self._density,
                             "kept": {n: int(m.sum()) for n, m in new_mask.items()}})
