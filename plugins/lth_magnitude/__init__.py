"""Magnitude pruning, the Lottery Ticket paper's criterion: prune the smallest |w|."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lth_core import hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, PruneContext


def magnitude_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """Score = |w| of the trained weights ("large_final" in Zhou et al. 2019)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        return {name: params[name].detach().abs().cpu() for name in mask}


@hookimpl
def register_criteria(register):
    register("magnitude", magnitude_scores, options=[])
