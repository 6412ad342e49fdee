"""A lottery on the user's own ``LightningModule`` and ``LightningDataModule``.

``lth_core.run(recipe, module=factory, datamodule=dm)`` trains the user's module as it is:
its ``training_step``, ``configure_optimizers`` (any optimiser, any schedule) and logging,
fed by the datamodule's loaders. lth adds only what the lottery needs, as callbacks:

- **the mask**: a :class:`lth_core.engines.enforcer.MaskEnforcer` on every optimiser the
  module configures keeps pruned weights exactly zero after every step and masks their
  gradients;
- **the measurements**: after every validation the monitored metric (``lottery.monitor``,
  ``min`` or ``max``) and every other logged ``val_*`` number join the run's history; the
  weights at the best evaluation are kept, and after training the module's own
  ``test_step`` measures ``lottery.test_metric`` with those weights (the early-stopping
  ticket) and with the final ones;
- **checkpoints**: the module's weights and optimisers, the history, the best weights and
  the learning-rate schedulers' state, as for lth's own runs. What a checkpoint cannot
  hold is the position in the user's loaders: a resumed run continues from the step, not
  from the very batch (said once, at the start).

:class:`ModuleRun` is the lottery's view of such a run (``context.module``): the same
surface as :class:`lth_core.LotteryModule` (``model``, ``mask``, ``set_mask``, ``step``,
``history``, ``log_prefix``), so checkpoints and training callbacks treat both alike.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lth_core.engines import checkpoints
from lth_core.engines.base import Engine, Fit
from lth_core.engines.enforcer import MaskedRun, MaskEnforcer
from lth_core.errors import LthError
from lth_core.tickets.mask import Mask


class ModuleRun(MaskedRun):
    """The lottery's view of a run of the user's module: what :class:`LotteryModule` offers."""

    multi_step = False

    def __init__(self, module: pl.LightningModule, mask: Mask, step_offset: int, log_prefix: str):
        self.model, self.mask, self.step_offset = module, mask, step_offset
        self.log_prefix = f"{log_prefix}/"
        self.history: list[dict] = []
        self.density_fn = None
        self.optimizer_cfg = {"from": "the module's configure_optimizers"}
        self.enforcer: MaskEnforcer | None = None
        self.trainer: pl.Trainer | None = None

    @property
    def step(self) -> int:
        """The lottery's step: the Trainer's global step plus where training resumed."""
        return (int(self.trainer.global_step) if self.trainer is not None else 0) + self.step_offset

    def attached(self) -> pl.Trainer | None:
        return self.trainer


class MeasureAndMask(pl.Callback):
    """Holds the mask on every optimiser the module configures and records each evaluation
    (see the module docstring); its state (best weights, schedulers) goes into checkpoints."""

    def __init__(self, run: ModuleRun, monitor: str, mode: str):
        self.run, self.monitor, self.mode = run, monitor, mode
        self.best: dict[str, Tensor] | None = None
        self.best_step, self.best_value, self.best_density = -1, math.nan, math.nan

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        enforcer = MaskEnforcer(self.run.model, self.run.mask)
        enforcer.enforce()
        for optimizer in trainer.optimizers:
            enforcer.attach(optimizer)
        self.run.enforcer = enforcer

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if (k.startswith("val") or k == self.monitor) and torch.as_tensor(v).numel() == 1}
        if self.monitor not in metrics:
            raise LthError(f"lottery.monitor is {self.monitor!r}, which the module does not log in validation "
                           f"(it logs {', '.join(sorted(metrics)) or 'nothing'}); log it or set lottery.monitor")
        density = self.run.density_fn() if self.run.density_fn else self.run.mask.density()
        row = {"step": self.run.step, "weights_remaining": density, **metrics}
        history = self.run.history
        if history and history[-1]["step"] == row["step"]:
            history[-1] = row
        else:
            history.append(row)
        value = row[self.monitor]
        better = value < self.best_value if self.mode == "min" else value > self.best_value
        # A mask tightened since the best evaluation makes that network another one: the
        # ticket's early-stopping step is the best under the mask it ends with.
        if self.run.mask_owner:  # the mask moved both ways: an earlier network is not the ticket
            return
        if math.isfinite(value) and (self.best is None or better or density != self.best_density):
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.run.model.state_dict().items()}
            self.best_step, self.best_value, self.best_density = row["step"], value, density

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run.enforcer is not None:
            self.run.enforcer.detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The best weights so far and the module's learning-rate schedulers (a resumed run
        continues their schedule)."""
        schedulers = [cfg.scheduler.state_dict() for cfg in self.run.trainer.lr_scheduler_configs] if self.run.trainer else []
        return {"best": self.best, "best_step": self.best_step, "best_value": self.best_value,
                "best_density": self.best_density, "schedulers": schedulers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_step = state_dict["best"], state_dict["best_step"]
        self.best_value, self.best_density = state_dict["best_value"], state_dict["best_density"]
        for cfg, saved in zip(self.run.trainer.lr_scheduler_configs, state_dict["schedulers"]):
            cfg.scheduler.load_state_dict(saved)


class Foreign(Engine):
    """One process trains the user's own module (see the module docstring)."""

    def __init__(self, datamodule: Any, monitor: str, mode: str, test_metric: str):
        self.datamodule, self.monitor, self.mode, self.test_metric = datamodule, monitor, mode, test_metric
        self.measures: MeasureAndMask | None = None

    def module(self, run: Any, context: Any, optimizer: dict, first_step: int) -> ModuleRun:
        return ModuleRun(run.model, context.mask, first_step, f"round_{context.round}/{context.name}")

    def callbacks(self, module: Any, origins: dict[int, str]) -> list[pl.Callback]:
        self.measures = MeasureAndMask(module, self.monitor, self.mode)
        origins[id(self.measures)] = "lth's measurements of your module"  # its state goes into checkpoints
        return [self.measures]

    def steps_per_call(self, run: Any, module: Any, callbacks: list) -> int:
        return 1  # the module's own training_step, one step per call

    def fit(self, fit: Fit) -> None:
        """The module's own fit with lth's callbacks, a last evaluation at the last step,
        then its own test step at the early-stopping step's weights and at the last ones."""
        every = checkpoints.every_n_steps(fit.run.recipe, len(fit.run.data.train_loader(0)))
        checkpoints.attach(fit.trainer, checkpoints.RoundCheckpoint(
            fit.context, fit.identity, fit.start_step, every, fit.saved, fit.origins, fit.extra, fit.run.say))
        run, model = fit.module, fit.run.model
        fit.trainer.fit(model, datamodule=self.datamodule)
        if not run.history or run.history[-1]["step"] != run.step:
            fit.trainer.validate(model, datamodule=self.datamodule, verbose=False)
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for step, weights in ((self.measures.best_step, self.measures.best), (run.step, final)):
            if weights is not None:
                model.load_state_dict(weights)
                self._test(fit, step)
        model.load_state_dict(final)

    def _test(self, fit: Fit, step: int) -> None:
        """The module's own test step with the weights in the model now: its test metrics
        join the history row of ``step``."""
        (results,) = fit.trainer.test(fit.run.model, datamodule=self.datamodule, verbose=False)
        if self.test_metric not in results:
            raise LthError(f"lottery.test_metric is {self.test_metric!r}, which the module's test step does not log "
                           f"(it logs {', '.join(sorted(results)) or 'nothing'}); log it or set lottery.test_metric")
        row = next(h for h in fit.module.history if h["step"] == step)
        row.update({k: float(v) for k, v in results.items()})
