"""Learning-rate rewinding and fine-tuning (Renda et al. 2020, "Comparing Rewinding and
Fine-tuning in Neural Network Pruning").

Both keep the trained weights θj of the round the mask was pruned from (no weight reset);
they differ in the learning rate the survivors retrain with:

``lr_rewind``
    replay the recipe's whole learning-rate schedule (warmup, milestones) from step 0, for
    the same number of steps.
``finetune``
    continue at a fixed small learning rate for the same number of steps, with no warmup
    and no milestones. ``lottery.rewind_options: {lr: 1.0e-4}`` sets it; by default it is
    the final learning rate of the recipe's schedule (``lr * gamma ** len(milestones)``,
    Renda et al.'s choice) when the schedule decays, and ``lr / 10`` when it is constant.

The optimiser's state (Adam moments, momentum) starts fresh in every round, as it does
for every rewind policy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, RewindContext

#: Options of the rewind policies bundled with lth; a late-rewound recipe may run a
#: fine-tuning control with its ``to:`` option present.
KNOWN_OPTIONS = ("to", "lr")


def _check_keys(options: dict, policy: str) -> None:
    unknown = sorted(set(options) - set(KNOWN_OPTIONS), key=str)
    if unknown:
        raise LthError(f"unknown option lottery.rewind_options.{unknown[0]} for rewind policy {policy!r}; valid: {', '.join(KNOWN_OPTIONS)}")


def _trained(model: nn.Module) -> dict[str, Tensor]:
    # The core loaded the weights the mask was derived from into ``model``; it applies the mask.
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def lr_rewind(model: nn.Module, mask: Mask, context: RewindContext) -> dict[str, Tensor]:
    """Keep the trained weights; the schedule starts again at step 0."""
    _check_keys(context.options, "lr_rewind")
    context.start_step = 0
    return _trained(model)


def finetune_lr(optimizer: dict, lr: Any = None) -> float:
    """The fixed fine-tuning rate: ``lr`` if given, else the schedule's final rate or lr / 10."""
    if lr is not None:
        if isinstance(lr, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                lr = float(lr)
            except ValueError:
                pass
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise LthError(f"lottery.rewind_options.lr must be a finite number > 0 (the fine-tuning learning rate), got {lr!r}")
        return float(lr)
    milestones = optimizer.get("milestones") or []
    if milestones:
        return float(optimizer["lr"]) * float(optimizer.get("gamma", 0.1)) ** len(milestones)
    return float(optimizer["lr"]) / 10.0


def finetune(model: nn.Module, mask: Mask, context: RewindContext) -> dict[str, Tensor]:
    """Keep the trained weights; train at a fixed small learning rate (no warmup, no decay)."""
    _check_keys(context.options, "finetune")
    context.optimizer["lr"] = finetune_lr(context.optimizer, context.options.get("lr"))
    context.optimizer["warmup_steps"] = 0
    context.optimizer["milestones"] = []
    context.start_step = 0
    return _trained(model)


@hookimpl
def register_rewind_policies(register):
    register("lr_rewind", lr_rewind, options=[])
    register("finetune", finetune, options=["lr"])
