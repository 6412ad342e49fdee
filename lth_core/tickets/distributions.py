"""How a target density is spread over a network's layers, for methods that fix it up
front (dynamic sparse training, movement pruning's schedule) rather than reach it by
rounds of pruning.

Two distributions, each returning a fraction of every layer's weights to keep (of the
whole layer, so the overall density is ``sum(d_l * n_l) / sum(n_l)`` as
:meth:`lth_core.Mask.density` counts it):

- :func:`allocation_densities`: the recipe's own allocation. Every layer keeps
  ``(1 - r_l) ** k`` of its weights, ``r_l`` its rate in the lottery's allocation
  (``lottery.rate``, or its ``lottery.layer_rates`` entry) and ``k`` the one number of
  rounds, fractional, that gives the target overall. With no per-layer rates that is the
  target in every layer; with LeNet's output layer at half the rate it is where as many IMP
  rounds would have left each layer, so a method compared with IMP at a density keeps
  IMP's per-layer proportions.
- :func:`erk_densities`: Erdős-Rényi-Kernel (Evci et al. 2020, after Mocanu et al. 2018),
  the distribution RigL uses: a layer of shape ``(n_out, n_in, k_h, k_w)`` keeps in
  proportion to ``sum(shape) / prod(shape)``, so small layers stay denser; a layer the
  proportion would make denser than 1 is kept dense and the rest rescaled.

:func:`layer_counts` turns densities into exact weight counts, never more than the
run's mask allows.
"""

from __future__ import annotations

import math
from typing import Mapping

from lth_core.errors import LthError
from lth_core.tickets.mask import Mask


def _check_target(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise LthError(f"a target density must be in (0, 1], got {density!r}")


def allocation_densities(mask: Mask, density: float, rates: Mapping[str, float]) -> dict[str, float]:
    """Per-layer densities ``(1 - rates[l]) ** k`` whose overall density is ``density``.

    ``rates`` are the allocation's per-round rates by layer (:attr:`lth_core.Allocation.rates`);
    a layer at rate 0 stays dense. ``k`` is found by bisection: the overall density falls
    steadily as ``k`` grows.
    """
    _check_target(density)
    sizes = {n: m.numel() for n, m in mask.items()}
    total = sum(sizes.values())

    def overall(k: float) -> float:
        return sum((1.0 - rates.get(n, 0.0)) ** k * s for n, s in sizes.items()) / total

    if overall(1e6) > density:
        dense = [n for n in sizes if rates.get(n, 0.0) <= 0.0]
        raise LthError(f"density {density} is below what the allocation can reach: layers {dense} are never pruned (rate 0)")
    low, high = 0.0, 1.0
    while overall(high) > density:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if overall(mid) > density else (low, mid)
    return {n: (1.0 - rates.get(n, 0.0)) ** high for n in sizes}


def erk_densities(mask: Mask, density: float, power: float = 1.0) -> dict[str, float]:
    """Erdős-Rényi-Kernel densities with overall density ``density`` (RigL's algorithm:
    layers that would exceed 1 are made dense, one largest at a time, and the others'
    scale ``eps`` solved again). ``power`` scales the raw proportion (RigL's
    ``erk_power_scale``; 1 is the paper's)."""
    _check_target(density)
    shapes = {n: tuple(m.shape) for n, m in mask.items()}
    sizes = {n: m.numel() for n, m in mask.items()}
    raw = {n: (sum(s) / math.prod(s)) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in sizes if n not in dense)
        if divisor == 0:
            return {n: 1.0 for n in sizes}
        eps = budget / divisor
        over = [n for n in sizes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in sizes}
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)


def layer_counts(densities: Mapping[str, float], mask: Mask) -> dict[str, int]:
    """Weights each layer keeps: ``round(d_l * n_l)``, at least 1 when ``d_l > 0``, never
    more than ``mask`` keeps there."""
    out = {}
    for n, m in mask.items():
        want = int(round(densities[n] * m.numel()))
        if densities[n] > 0:
            want = max(want, 1)
        out[n] = min(want, int(m.sum()))
    return out
