"""Random pruning: the control that asks whether the ticket's *choice* of weights matters.

As a criterion it scores weights uniformly at random (seeded by the run). As the
``random_pruning`` control it draws a random mask with exactly the ticket's density in
every layer and trains it from the ticket's own rewind weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lth_core import hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, PruneContext


def random_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    import torch

    return {name: torch.rand(m.shape, generator=context.generator) for name, m in mask.items()}


@hookimpl
def register_criteria(register):
    register("random", random_scores, options=[])


@hookimpl
def register_controls(register):
    register(
        "random_pruning",
        criterion="random",
        rewind=None,
        description="random mask with the ticket's per-layer sparsity, trained from the ticket's rewind weights",
    )
