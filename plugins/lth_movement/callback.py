"""The callback that accumulates movement scores while a run trains (see :mod:`lth_movement`)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lth_core import RoundContext

STATE_KEY = "movement"  # context.state key, the plugin's name (as lth_movement.STATE_KEY)


class MovementScores(pl.Callback):
    """Accumulates S += -W ⊙ ∂L/∂W at every optimiser step of one training run.

    Publishes ``{"scores": {name: S}, "steps": n}`` in ``context.state["movement"]``;
    ``steps`` counts the optimiser steps of this run (``trainer.max_steps`` minus the step
    training resumed at, under late rewinding).
    """

    def __init__(self, context: RoundContext):
        self.context = context
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        self.scores: list[Tensor] = []
        self.steps = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Bind to the parameters the optimiser trains (already on their device).
        run = self.context.module  # the lottery's view of the run
        params = dict(run.model.named_parameters())
        self.names = list(run.mask)
        self.params = [params[n] for n in self.names]
        self.scores = [torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format) for p in self.params]
        self.steps = 0
        self._publish(self.scores)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.accumulate()

    def accumulate(self) -> None:
        """Add ``-W ⊙ grad`` of the current weights and gradients (one optimiser step)."""
        with torch.no_grad():
            for s, p in zip(self.scores, self.params):
                if p.grad is not None:
                    s.addcmul_(p.detach().float(), p.grad.detach().float(), value=-1.0)
        self.steps += 1
        self.context.state[STATE_KEY]["steps"] = self.steps

    def state_dict(self) -> dict[str, Any]:
        """The scores so far, for a checkpoint inside the run."""
        return {"scores": dict(zip(self.names, self.scores)), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Back to a checkpoint's scores, in place: ``context.state`` shares these tensors."""
        with torch.no_grad():
            for name, s in zip(self.names, self.scores):
                s.copy_(state_dict["scores"][name])
        self.steps = state_dict["steps"]
        self.context.state[STATE_KEY]["steps"] = self.steps

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish([s.detach().cpu().clone() for s in self.scores])

    def _publish(self, scores: list[Tensor]) -> None:
        self.context.state[STATE_KEY] = {"scores": dict(zip(self.names, scores)), "steps": self.steps}
