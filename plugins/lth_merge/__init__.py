"""Combining tickets: the bundled merge strategies of ``lth merge``.

- ``union`` / ``intersection``: the set union / intersection of the tickets' masks,
  retrained from the first ticket's rewind weights with the recipe's training (Movva,
  Frankle & Carbin 2021 compare both for sibling tickets from one θ0);
- ``average``: the mean of the tickets' trained weights (naive averaging; independently
  trained networks meet a loss barrier on the path between them);
- ``weight_matching``: Git Re-Basin weight matching (:mod:`lth_merge.matching`) permutes
  every other ticket's hidden units, weights and mask alike, to match the first one's,
  then averages; supports the MLPs and the Conv-2/4/6 networks;
- ``ensemble``: no merged weights; the core averages the members' logits (the baseline).

Merged masks of averaging strategies are the union of the (aligned) masks: an average is
non-zero wherever any member is.
"""

from __future__ import annotations

from functools import reduce
from typing import TYPE_CHECKING

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor

    from lth_core import Mask, MergeContext, MergeResult, Ticket


def mean_state(states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The elementwise mean of state dicts; integer buffers (counters) come from the first."""
    import torch

    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            out[key] = first.clone()
    return out


def _retrain(tickets: list[Ticket], context: MergeContext, mask: Mask, rewind_from: int) -> MergeResult:
    from lth_core import MergeResult

    if not 0 <= rewind_from < len(tickets):
        raise LthError(f"merge option rewind_from={rewind_from} must name a ticket: 0..{len(tickets) - 1}")
    ticket = context.retrain(mask, tickets[rewind_from].init, int(tickets[rewind_from].meta.get("start_step", 0)))
    return MergeResult(weights=ticket.final, mask=ticket.mask, init=ticket.init,
                       info={"retrained_from": rewind_from, "retrained": ticket.meta.get("metrics", {})})


def union(tickets: list[Ticket], context: MergeContext, rewind_from: int = 0) -> MergeResult:
    """Keep a weight that any ticket keeps; retrain from ticket ``rewind_from``'s rewind weights."""
    from lth_core import Mask

    return _retrain(tickets, context, reduce(Mask.union, [t.mask for t in tickets]), rewind_from)


def intersection(tickets: list[Ticket], context: MergeContext, rewind_from: int = 0) -> MergeResult:
    """Keep a weight that every ticket keeps; retrain from ticket ``rewind_from``'s rewind weights."""
    from lth_core import Mask

    return _retrain(tickets, context, reduce(Mask.intersection, [t.mask for t in tickets]), rewind_from)


def _averaged(finals: list[dict[str, Tensor]], masks: list[Mask], info: dict) -> MergeResult:
    from lth_core import Mask, MergeResult

    weights = mean_state(finals)
    return MergeResult(weights=weights, mask=reduce(Mask.union, masks), endpoints=finals, info=info)


def average(tickets: list[Ticket], context: MergeContext) -> MergeResult:
    """The mean of the trained weights, as they are."""
    return _averaged([t.final for t in tickets], [t.mask for t in tickets], {})


def weight_matching(tickets: list[Ticket], context: MergeContext, max_iter: int = 100) -> MergeResult:
    """Align every ticket's hidden units to the first's (weights and mask), then average."""
    if max_iter < 1:
        raise LthError(f"merge option max_iter must be >= 1, got {max_iter}")
    from lth_core import Mask
    from lth_merge.matching import layer_chain, match, permute  # torch and scipy, when a merge aligns

    chain = layer_chain(context.new_model(), context.model_name)
    anchor = tickets[0]
    finals, masks, info = [anchor.final], [anchor.mask], {"alignment": []}
    for t in tickets[1:]:
        perms, record = match(anchor.final, t.final, chain, context.generator, max_iter)
        finals.append(permute(t.final, chain, perms))
        masks.append(Mask(permute(dict(t.mask.items()), chain, perms)))
        info["alignment"].append({**record, "permutations": [p.tolist() for p in perms]})
    # Alignment also lines up the masks: how much the aligned masks share.
    info["aligned_intersection"] = reduce(Mask.intersection, masks).density()
    return _averaged(finals, masks, info)


def ensemble(tickets: list[Ticket], context: MergeContext) -> MergeResult:
    """No merged weights: the prediction is the mean of the members' logits."""
    from lth_core import MergeResult

    return MergeResult(members=[t.final for t in tickets])


@hookimpl
def register_merge_strategies(register):
    register("union", union)
    register("intersection", intersection)
    register("average", average)
    register("weight_matching", weight_matching)
    register("ensemble", ensemble)
