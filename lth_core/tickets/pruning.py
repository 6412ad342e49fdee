"""Pruning is a pure function: scores and a mask in, a tighter mask out, by an allocation.

An :class:`Allocation` says how many weights a pruning step keeps and which layers
compete for them: each layer by itself (``scope: layer``), or the pooled layers ranked
together by one threshold (``scope: global``) while layers with a rate of their own stay
layer-wise. :func:`prune_by_scores` keeps the highest-scoring remaining weights of every
unit; :func:`keep_top` is the one top-k every pruner uses (the lottery's rounds, pruning
during training, supermasks' forward pass). Counts are exact, so a criterion cannot prune
more or less than the recipe asks.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from lth_core.errors import LthError, PluginError
from lth_core.tickets.mask import Mask, check_tighter

#: ``lottery.layer_rates: {last: r}``: the last prunable layer (the paper's output layer).
LAST_LAYER_ALIAS = "last"


@dataclass(frozen=True)
class Allocation:
    """How a pruning step spreads over the layers.

    ``rates[name]`` is the fraction of that layer's *remaining* weights the step removes
    (a layer without a rate loses none). With ``scope="global"`` the layers in ``pooled``
    are one unit: ranked together, they lose ``rate`` of their pooled remaining weights,
    so they must share one rate; every other layer is its own unit.
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    scope: str = "layer"
    pooled: tuple[str, ...] = ()

    @classmethod
    def of_recipe(cls, recipe: Any, mask: Mask) -> "Allocation":
        """The recipe's ``lottery`` section as an allocation over ``mask``'s layers.

        ``lottery.layer_rates`` keys are parameter names (``fc3.weight``), module names
        (``fc3``), ``last`` (the last prunable layer, e.g. the paper's output layer at half
        rate) or glob patterns over module names (``conv*``: the paper's Conv-2/4/6 prune
        convolutions at their own rate). Later keys win. Layers with a rate of their own
        keep it under global pruning too: only the others are pooled.
        """
        lot = recipe["lottery"]
        names = list(mask)
        rates = {n: lot["rate"] for n in names}
        overridden = set()
        for key, rate in lot["layer_rates"].items():
            for target in _resolve_layer_key(str(key), names):
                rates[target] = float(rate)
                overridden.add(target)
        pooled = tuple(n for n in names if n not in overridden) if lot["scope"] == "global" else ()
        return cls(rates, lot["scope"], pooled)

    def compounded(self, k: int) -> "Allocation":
        """The one-shot allocation that reaches, in one step, what ``k`` steps of this one reach."""
        return Allocation({n: 1.0 - (1.0 - r) ** k for n, r in self.rates.items()}, self.scope, self.pooled)

    def units(self, mask: Mask) -> list[tuple[str, ...]]:
        """The groups of layers ranked together: the pooled layers (one unit, first, under
        global scope), then every other layer of ``mask`` on its own."""
        pooled = tuple(n for n in mask if n in self.pooled) if self.scope == "global" else ()
        return ([pooled] if pooled else []) + [(n,) for n in mask if n not in pooled]

    def counts(self, mask: Mask) -> dict[tuple[str, ...], int]:
        """How many weights each unit keeps: ``remaining - round(rate * remaining)``."""
        out = {}
        for unit in self.units(mask):
            rates = {self.rates.get(n, 0.0) for n in unit}
            if len(rates) != 1:
                raise ValueError(f"global pruning needs one rate for all pooled layers, got {sorted(rates)}")
            remaining = sum(int(mask[n].sum()) for n in unit)
            out[unit] = remaining - int(round(rates.pop() * remaining))
        return out


def _resolve_layer_key(key: str, names: list[str]) -> list[str]:
    """Parameter names a ``layer_rates`` key means: exact name, module, ``last`` or a glob."""
    if key in names:
        return [key]
    if f"{key}.weight" in names:
        return [f"{key}.weight"]
    if key == LAST_LAYER_ALIAS:
        return [names[-1]]
    matched = [n for n in names if fnmatch.fnmatchcase(n, key) or fnmatch.fnmatchcase(n.rsplit(".", 1)[0], key)]
    if not matched:
        raise LthError(f"lottery.layer_rates.{key}: no such prunable layer; valid: {', '.join(names)}, {LAST_LAYER_ALIAS}, or a glob such as conv*")
    return matched


def keep_top(scores: Tensor, allowed: Tensor, k: int) -> Tensor:
    """A bool tensor shaped like ``allowed`` keeping the ``k`` highest ``scores`` among the
    positions ``allowed`` keeps (never one it does not), on ``scores``' device.

    Floating scores are ranked in their own dtype (ties go the same way in float32 and
    float64); integer scores as float64. ``k`` must not exceed what ``allowed`` keeps.
    """
    flat = scores.detach().flatten()
    if not flat.is_floating_point():
        flat = flat.to(torch.float64)
    flat = flat.masked_fill(~allowed.flatten().to(flat.device), -torch.inf)
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    return keep.view(allowed.shape)


def _joined(tensors: Mapping[str, Tensor], unit: tuple[str, ...]) -> Tensor:
    return torch.cat([tensors[n].detach().cpu().flatten() for n in unit])


def _split(flat: Tensor, like: Mask, unit: tuple[str, ...]) -> dict[str, Tensor]:
    """A unit's flat tensor back into its layers' shapes (the inverse of :func:`_joined`)."""
    out, offset = {}, 0
    for n in unit:
        size = like[n].numel()
        out[n] = flat[offset : offset + size].view_as(like[n])
        offset += size
    return out


def prune_by_scores(scores: Mapping[str, Tensor], mask: Mask, allocation: Allocation) -> Mask:
    """Keep, in every unit of ``allocation``, its count of the highest-scoring weights that
    ``mask`` still keeps; already pruned weights stay pruned."""
    new: dict[str, Tensor] = {}
    for unit, k in allocation.counts(mask).items():
        new.update(_split(keep_top(_joined(scores, unit), _joined(mask, unit), k), mask, unit))
    return Mask({n: new[n] for n in mask})


def match_density(scores: Mapping[str, Tensor], like: Mask) -> Mask:
    """A fresh mask from ``scores`` keeping exactly as many weights per layer as ``like``.

    Used by controls: random pruning keeps the ticket's per-layer sparsity, not its choice.
    """
    return Mask({n: keep_top(scores[n].cpu(), torch.ones_like(m), int(m.sum())) for n, m in like.items()})


def is_real_number_dtype(dtype: torch.dtype) -> bool:
    """Scores are ranked: real floating and integer dtypes are numbers; bool and complex are not."""
    return dtype != torch.bool and not dtype.is_complex


def validate_scores(scores: Any, mask: Mask, source: str) -> None:
    """A criterion must score every masked layer with a finite tensor of the right shape."""
    if not isinstance(scores, Mapping):
        raise PluginError(f"{source} returned {type(scores).__name__}, expected a dict of score tensors or a Mask")
    missing = set(mask) - set(scores)
    if missing:
        raise PluginError(f"{source} returned no scores for {sorted(missing)}")
    for n, m in mask.items():
        s = scores[n]
        if not isinstance(s, Tensor) or tuple(s.shape) != tuple(m.shape):
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise PluginError(f"{source} returned scores for {n} shaped {shape}, expected {tuple(m.shape)}")
        if not is_real_number_dtype(s.dtype):  # topk cannot rank complex numbers; bool scores are a mask by mistake
            raise PluginError(f"{source} returned {s.dtype} scores for {n}, expected real numbers (a floating or integer tensor)")
        if not torch.isfinite(s.detach().cpu()[m]).all():
            raise PluginError(f"{source} returned non-finite scores for unpruned weights of {n}")


def check_counts(new: Mask, mask: Mask, allocation: Allocation, source: str) -> None:
    """A criterion's own mask must tighten ``mask`` to exactly the allocation's counts."""
    try:
        check_tighter(mask, new, source)
    except LthError as exc:
        raise PluginError(str(exc)) from None
    for unit, k in allocation.counts(mask).items():
        kept = sum(int(new[n].sum()) for n in unit)
        if kept != k:
            raise PluginError(f"{source} returned a mask keeping {kept} weights of {', '.join(unit)}; the recipe's allocation keeps {k}")


def select(result: Any, mask: Mask, allocation: Allocation, source: str) -> Mask:
    """A criterion's result as the new mask: scores pruned by the allocation, or a mask
    the criterion chose itself (iterative pruners such as SynFlow), checked to tighten
    ``mask`` to exactly the allocation's counts."""
    if isinstance(result, Mask):
        check_counts(result, mask, allocation, source)
        return result
    validate_scores(result, mask, source)
    return prune_by_scores(result, mask, allocation)
