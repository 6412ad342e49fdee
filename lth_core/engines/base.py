"""The engine seam: how one training run of the lottery is carried out.

:func:`lth_core.lottery.train.train` is the paper's step: start from weights under a mask,
fit, measure, save the ticket. Everything about *how* the fit happens is an engine's:

- :class:`Engine` (this module): one process, one model. The default.
- :class:`lth_core.engines.data_parallel.DataParallel`: W processes train one ticket in
  lockstep; rank 0 decides what is reused, resumed and written, and every process's
  result is checked against rank 0's.
- :class:`lth_core.engines.stacked.Stacked`: the trials of a recipe hand their runs over
  to be trained as one stacked model beside the other trials' (``vectorize_trials``).

The recipe chooses: ``trainer.devices x trainer.num_nodes > 1`` gives data parallel,
``vectorize_trials`` gives stacked, anything else the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lth_core.engines import checkpoints
from lth_core.engines.checkpoints import Saved
from lth_core.engines.collectives import require_connected
from lth_core.engines.module import LotteryModule
from lth_core.engines.trainer import steps_per_call, train_loader
from lth_core.tickets.mask import Mask
from lth_core.tickets.ticket import Ticket, is_ticket, load_ticket


@dataclass
class Fit:
    """One training run, ready to train: everything an engine needs to carry it out."""

    run: Any  #: the lottery's :class:`lth_core.lottery.run.Run` (recipe, data, say, out_dir)
    context: Any  #: the run's :class:`lth_core.plugin_api.contexts.RoundContext`
    module: Any  #: the :class:`lth_core.engines.module.LotteryModule` that trains it
    trainer: pl.Trainer
    identity: dict  #: what a checkpoint must match to be resumed (:func:`checkpoints.identity`)
    start_step: int  #: the run's first step (late rewinding starts later than 0)
    saved: Saved | None  #: the checkpoint it resumes from, if any
    origins: dict[int, str]  #: callback id -> the plugin it came from (for error messages)
    extra: tuple  #: callbacks a command added (``lth extend``'s freezing)
    chunk: int  #: optimiser steps per Lightning training call

    @property
    def first_step(self) -> int:
        """Where training starts now: the checkpoint's step, else the run's start."""
        return self.saved.step if self.saved else self.start_step


class Engine:
    """One process trains one model (the default engine)."""

    def reuse(self, run: Any, folder: Path) -> Ticket | None:
        """The finished ticket in ``folder`` (checked to fit the run's model), or None."""
        return load_ticket(folder, run.model) if is_ticket(folder) else None

    def agree(self, run: Any, mask: Mask, start: Any) -> tuple[Mask, Any]:
        """The mask and start every process trains: one process trains its own, and a
        recipe that asks for several processes was not started by ``lth run``."""
        require_connected(run.recipe["trainer"])
        return mask, start

    def resume_point(self, run: Any, folder: Path, identity: dict) -> Saved | None:
        """The checkpoint this run continues from, or None."""
        return checkpoints.load(folder, identity, run.say)

    def module(self, run: Any, context: Any, optimizer: dict, first_step: int) -> Any:
        """The lottery's view of this run (``context.module``): what trains, its mask, step
        and evaluation history. lth's own classifier here; a user's own LightningModule
        in :class:`lth_core.engines.foreign.Foreign`."""
        return LotteryModule(run.model, context.mask, optimizer, run.data.num_classes,
                             log_prefix=f"round_{context.round}/{context.name}", step_offset=first_step)

    def callbacks(self, module: Any, origins: dict[int, str]) -> list[pl.Callback]:
        """Callbacks the engine adds to every run (none for one process). A callback whose
        state a checkpoint must keep is entered in ``origins``, which names it in errors."""
        return []

    def steps_per_call(self, run: Any, module: Any, callbacks: list) -> int:
        """Optimiser steps one Lightning call takes (several where nothing needs each step)."""
        chunk = steps_per_call(run.recipe, callbacks)
        module.train_in_chunks(chunk, run.data.batch_size)
        return chunk

    def fit(self, fit: Fit) -> None:
        """Train ``fit.module`` to the end of the run, with its checkpoints, then make sure
        the run's last step was evaluated."""
        every = checkpoints.every_n_steps(fit.run.recipe, len(fit.run.data.train_loader(0)))
        checkpoints.attach(fit.trainer, checkpoints.RoundCheckpoint(
            fit.context, fit.identity, fit.start_step, every, fit.saved, fit.origins, fit.extra, fit.run.say))
        max_steps = fit.run.recipe["trainer"]["max_steps"]
        fit.run.data.place(fit.trainer.strategy.root_device)  # on a GPU the data stays there when it fits
        loader = self.shard(train_loader(fit.run.data, fit.first_step, max_steps, fit.chunk))
        fit.trainer.fit(fit.module, train_dataloaders=loader, val_dataloaders=self.shard(fit.run.data.eval_loaders()))
        history = fit.module.history
        if not history or history[-1]["step"] != fit.module.step:
            fit.trainer.validate(fit.module, dataloaders=self.shard(fit.run.data.eval_loaders()), verbose=False)

    def shard(self, loaders: Any) -> Any:
        """This process's share of a loader's batches (one process: all of them)."""
        return loaders

    def verify(self, fit: Fit) -> None:
        """Check the finished run before its ticket is saved (one process: nothing to compare)."""
