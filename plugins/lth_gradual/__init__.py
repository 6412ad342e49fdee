"""Pruning during training (Zhu & Gupta 2017, "To prune, or not to prune").

The named callback ``gradual_pruning`` prunes inside one training run, with no restart:
at every pruning step the lowest-scoring remaining weights are masked (set to zero at once
and held at zero until the run ends) until the layer reaches the density the schedule
asks for at that step. A recipe switches it on::

    lottery: {rounds: 0}                      # one training run; the ticket is its final mask
    callbacks:
      - {name: gradual_pruning, target: 0.107, schedule: cubic, every: 1ep}
    controls:
      - {name: retrain_from_init, rewind: init}   # the final mask, retrained once from θ0

Schedules (``t`` = lottery step, pruning at ``start_step``, every ``every`` steps after it,
and at ``end_step``):

- ``cubic``: density ``d_t = d_f + (d_i - d_f) (1 - (t - t0) / (t_end - t0))^3``: Zhu & Gupta's
  ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))^3`` written for the fraction *remaining*,
  with ``d_i`` the density when the run starts and ``d_f`` the target. Each layer keeps
  exactly ``round(d_t · size)`` weights, so ``end_step`` hits the target exactly.
- ``constant``: each pruning step removes ``rate`` of the remaining weights (never going
  below the target); if the target is not reached by ``end_step``, that last step prunes
  to it.

``target`` is the fraction of weights remaining at the end. It follows the lottery's
allocation: a layer with its own rate in ``lottery.layer_rates`` ends where as many IMP
rounds would leave it, ``(1 - r_layer)^k`` with ``k = ln(target) / ln(1 - lottery.rate)``
(so ``target: 0.107`` with ``layer_rates: {last: 0.1}`` gives exactly the per-layer densities
of 10 IMP rounds at 0.2), and ``lottery.scope: global`` ranks the pooled layers together.

Any registered criterion scores the weights (looked up at run time); it receives a
:class:`~lth_core.plugin_api.contexts.PruneContext` whose ``state`` is this run's
``RoundContext.state`` (what the run's other callbacks collected so far, e.g. movement
scores), whose ``initial`` holds the weights this run started from (θ0 in round 0) and
whose ``rates`` are the fractions of each layer's remaining weights this step removes.

By default the callback acts in round 0's ticket run only: controls (``retrain_from_init``
above, ``random_reinit``) then train the final mask without pruning further. The current
density is logged as ``<round>/<run>/density`` at every step; the pruning steps (step,
density, per-layer kept counts) are written to ``gradual_pruning.json`` in the run folder.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lth_core import Allocation, LthError, Mask, RoundContext, atomic_write_text, choices, hookimpl, make_dir

NAME = "gradual_pruning"
SCHEDULES = ("cubic", "constant")
POOL = "*global*"  # the unit of layers pooled by lottery.scope: global
_EVERY = re.compile(r"\s*(\d+)\s*(ep|it)\s*")


def parse_every(every: Any, steps_per_epoch: int) -> int:
    """Steps between pruning steps: ``"1ep"`` -> one epoch's steps, ``"100it"`` -> 100."""
    m = _EVERY.fullmatch(every) if isinstance(every, str) else None
    if m is None or int(m.group(1)) < 1:
        raise LthError(f"callbacks.{NAME}.every must be Nep (epochs, e.g. 1ep) or Nit (steps, e.g. 100it) with N >= 1, got {every!r}")
    n = int(m.group(1))
    return n * steps_per_epoch if m.group(2) == "ep" else n


def cubic_density(t: int, t0: int, t_end: int, d_initial: float, d_final: float) -> float:
    """Zhu & Gupta's cubic schedule as a fraction of weights remaining at step ``t``."""
    frac = min(max((t - t0) / (t_end - t0), 0.0), 1.0)
    return d_final + (d_initial - d_final) * (1.0 - frac) ** 3


def layer_targets(recipe: Any, mask: Mask, target: float) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Final density per layer, the per-layer exponent of the constant rate, and the pooled layers.

    A layer pruned at ``lottery.rate`` ends at ``target``; a layer with its own rate ``r_l``
    ends at ``(1 - r_l)^k`` where ``k = ln(target) / ln(1 - rate)`` (as many IMP rounds).
    The exponent ``ln(1 - r_l) / ln(1 - rate)`` turns the constant schedule's rate ``q``
    into the layer's own: ``1 - (1 - q)^exponent``.
    """
    allocation = Allocation.of_recipe(recipe, mask)
    rates, pooled = allocation.rates, list(allocation.pooled)
    base = math.log(1.0 - recipe["lottery"]["rate"])
    k = math.log(target) / base
    final = {n: (1.0 - r) ** k for n, r in rates.items()}
    return final, {n: math.log(1.0 - r) / base for n, r in rates.items()}, pooled


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


def _check_options(context: RoundContext, where: str, target: Any, schedule: Any, rate: Any, rounds: Any, runs: Any) -> float:
    """The options' values checked one by one (each mistake one line); returns the rate."""
    if schedule not in SCHEDULES:
        raise LthError(f"{where}.schedule is {schedule!r}; valid: {choices(SCHEDULES)}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise LthError(f"{where}.target must be a fraction of weights remaining in (0, 1), got {target!r}")
    if rate is not None and schedule != "constant":
        raise LthError(f"{where}.rate applies to schedule: constant only (the cubic schedule sets its own pace)")
    rate = context.recipe["lottery"]["rate"] if rate is None else rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
        raise LthError(f"{where}.rate must be in (0, 1) (a fraction of the remaining weights per pruning step), got {rate!r}")
    if rounds is not None and rounds != "all" and not (isinstance(rounds, list) and all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rounds)):
        raise LthError(f"{where}.rounds must be a list of round numbers (e.g. [0]) or 'all', got {rounds!r}")
    if runs is not None and runs != "all" and not (isinstance(runs, list) and all(isinstance(r, str) for r in runs)):
        raise LthError(f"{where}.runs must be a list of run names (ticket and/or control names) or 'all', got {runs!r}")
    return rate


def gradual_pruning(
    context: RoundContext,
    target: float,
    criterion: str = "magnitude",
    schedule: str = "cubic",
    every: str = "1ep",
    start_step: int = 0,
    end_step: int | None = None,
    rate: float | None = None,
    rounds: list | None = None,
    runs: list | None = None,
) -> GradualPruning | None:
    """Prune during training towards ``target`` (fraction of weights remaining).

    ``rounds`` (default ``[0]``) and ``runs`` (default ``["ticket"]``; control names, or
    ``"all"``) say which training runs it acts in. ``end_step`` defaults to 75% of
    ``trainer.max_steps``. ``rate`` is the constant schedule's fraction per step
    (default ``lottery.rate``).
    """
    where = f"callbacks.{NAME}"
    rate = _check_options(context, where, target, schedule, rate, rounds, runs)
    rounds = [0] if rounds is None else rounds
    runs = ["ticket"] if runs is None else runs
    context.registry.get("criteria", criterion)  # an unknown criterion fails now, naming the installed ones
    steps_per_epoch = len(context.data.train_loader(0))
    interval = parse_every(every, steps_per_epoch)
    trainer = context.recipe["trainer"]
    max_steps = trainer.get("max_steps", -1)
    if not max_steps or max_steps < 0:
        epochs = trainer.get("max_epochs", -1) or -1
        max_steps = epochs * steps_per_epoch if epochs > 0 else -1
    if end_step is None:
        if max_steps < 0:
            raise LthError(f"{where} needs end_step when training has no trainer.max_steps or max_epochs")
        end_step = (3 * max_steps) // 4
    if not isinstance(start_step, int) or start_step < 0:
        raise LthError(f"{where}.start_step must be a step >= 0, got {start_step!r}")
    if not isinstance(end_step, int) or end_step <= start_step:
        raise LthError(f"{where}.end_step ({end_step!r}) must be a step after start_step ({start_step})")
    if max_steps > 0 and end_step > max_steps:
        raise LthError(f"{where}.end_step ({end_step}) is after the last training step (trainer.max_steps = {max_steps})")
    if (rounds != "all" and context.round not in rounds) or (runs != "all" and context.name not in runs):
        return None
    if schedule == "constant":
        before_end = len(range(start_step if start_step >= 1 else interval, end_step, interval))
        if (1.0 - rate) ** before_end > target:
            warnings.warn(
                f"{where}: {before_end} pruning steps at rate {rate} before end_step {end_step} leave "
                f"{(1.0 - rate) ** before_end:.1%} of the weights; the step at end_step prunes straight to the target {target:.1%}",
                stacklevel=2,
            )
    return GradualPruning(context, criterion, schedule, float(target), float(rate), interval, start_step, end_step)


@hookimpl
def register_callbacks(register):
    register(NAME, gradual_pruning, refers={"criterion": "criteria"})
