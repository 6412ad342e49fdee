"""Mask criteria from "Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask"
(Zhou, Lan, Liu & Yosinski, NeurIPS 2019), comparing each weight's initial value wi with
its trained value wf. Lower scores are pruned, as for every criterion.

- ``magnitude_increase``: ``|wf| - |wi|`` (keeps the weights that grew the most).
- ``large_init_large_final``: keeps weights large at *both* times. Score = the smaller of
  the weight's two percentile ranks, of |wi| and of |wf|, among the weights still unpruned
  (per layer; across the pooled layers under ``scope: global``):
  ``min(rank|wi|, rank|wf|) / m``, ties broken by ``(rank|wi| + rank|wf|) / (2m²)``.
  This is the authors' definition (uber-research/deconstructing-lottery-tickets): one
  percentile threshold p per layer for both |wi| and |wf|, found by bisection so that
  keeping ``|wi| >= P_p(|wi|) and |wf| >= P_p(|wf|)`` keeps the target count; keeping the
  top-k of min-rank is the same rule with an exact count (percentile ranks make |wi| and
  |wf| comparable whatever their scales, the role of α in the paper's Figure 2).
- ``weight_movement``: ``|wf - wi|``, the paper's "movement" (renamed so it does not clash
  with Sanh et al.'s ``movement`` criterion, which accumulates -W·∂L/∂W over training).

wi is θ0, the lottery's initial weights (``context.initial``), also in later rounds and
under late rewinding (where the survivors restart from θk, not θ0); wf is the trained
model each round is pruned from. The criteria need trained weights: with
``lottery.mode: at_init`` wf = wi and they raise an error instead of ranking ties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, PruneContext

PRUNED = -1.0  # score of already pruned weights (they stay pruned; any finite value does)


def _weights(name: str, model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, tuple[Tensor, Tensor]]:
    """(wi, wf) per masked layer, as float64 CPU tensors; refuses an untrained model."""
    import torch

    params = dict(model.named_parameters())
    pairs = {}
    for n in mask:
        wf = params[n].detach().cpu().double()
        wi = context.initial[n].detach().cpu().double()
        if wi.shape != wf.shape:
            raise LthError(f"criterion {name!r}: θ0 of {n} is shaped {tuple(wi.shape)}, the model's {tuple(wf.shape)}")
        pairs[n] = (wi, wf)
    if all(torch.equal(wi[mask[n]], wf[mask[n]]) for n, (wi, wf) in pairs.items()):
        raise LthError(
            f"criterion {name!r} compares the trained weights with θ0, but the model it was given is θ0 itself "
            "(lottery.mode at_init scores before training); use it with mode iterative or one_shot"
        )
    return pairs


def magnitude_increase(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """Score = |wf| - |wi|."""
    return {n: wf.abs() - wi.abs() for n, (wi, wf) in _weights("magnitude_increase", model, mask, context).items()}


def weight_movement(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """Score = |wf - wi| (Zhou et al.'s "movement")."""
    return {n: (wf - wi).abs() for n, (wi, wf) in _weights("weight_movement", model, mask, context).items()}


def _ranks(values: Tensor) -> Tensor:
    """0 for the smallest value, len-1 for the largest (stable: ties keep their order)."""
    import torch

    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(values.numel())
    return ranks.double()


def large_init_large_final(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """Score = min(rank|wi|, rank|wf|)/m + (rank|wi| + rank|wf|)/(2m²) over the m unpruned weights.

    Ranks are taken per unit of ``context.allocation``: per layer, or jointly over the
    layers global pruning pools.
    """
    import torch

    pairs = _weights("large_init_large_final", model, mask, context)
    groups = context.allocation.units(mask)
    scores = {n: torch.full(mask[n].shape, PRUNED, dtype=torch.float64) for n in mask}
    for group in groups:
        keep = [mask[n].flatten() for n in group]
        wi = torch.cat([pairs[n][0].flatten()[k] for n, k in zip(group, keep)]).abs()
        wf = torch.cat([pairs[n][1].flatten()[k] for n, k in zip(group, keep)]).abs()
        m = wi.numel()
        if m == 0:
            continue
        ri, rf = _ranks(wi), _ranks(wf)
        s = torch.minimum(ri, rf) / m + (ri + rf) / (2.0 * m * m)
        offset = 0
        for n, k in zip(group, keep):
            count = int(k.sum())
            flat = scores[n].view(-1)
            flat[k] = s[offset : offset + count]
            offset += count
    return scores


@hookimpl
def register_criteria(register):
    register("magnitude_increase", magnitude_increase, options=[])
    register("large_init_large_final", large_init_large_final, options=[])
    register("weight_movement", weight_movement, options=[])
