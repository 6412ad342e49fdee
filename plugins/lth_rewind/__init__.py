"""Rewind policies of the original paper: reset to θ0, or (the control) to fresh weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lth_core import hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, RewindContext


def rewind_to_init(model: nn.Module, mask: Mask, context: RewindContext) -> dict[str, Tensor]:
    """The survivors go back to their initial values θ0 (Frankle & Carbin, step 4)."""
    return {k: v.clone() for k, v in context.initial.items()}


def random_reinit(model: nn.Module, mask: Mask, context: RewindContext) -> dict[str, Tensor]:
    """Fresh random weights from the same initialiser, seeded per round (never θ0)."""
    return {k: v.detach().cpu().clone() for k, v in context.new_model().state_dict().items()}


@hookimpl
def register_rewind_policies(register):
    register("init", rewind_to_init, options=[])
    register("reinit", random_reinit, options=[])


@hookimpl
def register_controls(register):
    register(
        "random_reinit",
        criterion=None,
        rewind="reinit",
        description="the ticket's mask with freshly initialised weights (the paper's control)",
    )
