"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning"): prune weights moving to zero.

The ``movement`` criterion scores each weight by how much it moved *away from zero* while
the round trained, accumulated over every optimiser step t of the round:

    S = -Σ_t  W_t ⊙ ∂L/∂W_t

(Sanh et al., Eq. 4, with the straight-through estimator of their soft movement pruning:
under plain gradient descent W_{t+1} = W_t - lr·g_t, so -W_t·g_t > 0 exactly when the step
points away from zero). The lowest scores are pruned, as for every criterion: a weight that
shrank towards zero scores low, one that grew scores high, whatever its final magnitude.

How it is collected: the criterion is registered with ``collects=MovementScores``, so when
a recipe uses ``movement`` anywhere (``lottery.criterion``, a control's criterion, a
callback option that names a criterion) the core adds a :class:`MovementScores` callback
to every training run. After each backward pass
and before the optimiser step (``on_before_optimizer_step``: the gradient is the one the
step will use, already masked by the core, and W is still W_t) it adds ``-W ⊙ grad`` to S.
The scores live in ``context.state["movement"]`` = ``{"scores": {name: Tensor}, "steps": n}``
throughout training (so a callback that prunes mid-training with ``criterion: movement``
sees the scores so far); at the end of training they become CPU copies, and the core
hands them to the criterion that prunes the next round. In ``one_shot`` mode every round
is pruned from round 0's scores.

What it refuses: movement needs the scores of the training run it prunes from. There are
none in ``lottery.mode: at_init`` (θ0 is scored before any training) or when a rerun
*reuses* a finished ticket written without them (the core keeps a run's ``context.state``
beside its ticket, ``round_state.*``, so a resumed lottery prunes with the scores its
ticket's run collected; older tickets have none); the criterion then raises an
:class:`LthError` saying so, rather than silently falling back to another criterion.

Hard movement pruning (learned scores, top-k with a straight-through estimator) is *not*
provided: in Sanh et al. a masked weight keeps its value and keeps receiving the score
gradient W·∂L/∂(W⊙M), so it can come back. This core holds pruned weights at exactly zero
and masks their gradients (``MaskEnforcer``), so every pruned weight's score gradient is
identically zero and a re-selected weight would restart from 0: the method would not be
the paper's.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lth_core import LthError, Mask, PruneContext, RoundContext, hookimpl

NAME = "movement"
STATE_KEY = "movement"  # context.state key, the plugin's name


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


def movement_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """Score = S = -Σ_t W_t ⊙ ∂L/∂W_t, collected while the pruned-from run trained."""
    state = context.state.get(STATE_KEY) if context.state else None
    if not state or not state.get("steps"):
        raise LthError(
            f"criterion {NAME!r} needs the scores collected while the previous round trained, and round "
            f"{context.round} has none: lottery.mode at_init scores θ0 before any training, and a rerun that "
            "reuses a finished ticket does not retrain (so collects nothing). Use another criterion, or delete "
            "that round's ticket.json (or choose a new --out) so it trains again"
        )
    scores = state["scores"]
    missing = [n for n in mask if n not in scores]
    if missing:
        raise LthError(f"criterion {NAME!r}: no movement scores were collected for {missing}")
    return {n: scores[n].detach().cpu().float() for n in mask}


@hookimpl
def register_criteria(register):
    register(NAME, movement_scores, options=[], collects=MovementScores)
