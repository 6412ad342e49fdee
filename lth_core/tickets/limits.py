"""How many pruning rounds a model can take before they stop meaning anything.

Each round keeps ``remaining - round(rate * remaining)`` weights of every unit of the
allocation (:meth:`lth_core.tickets.pruning.Allocation.counts`). Sooner or later a round
either empties a layer (it would keep no weight: the network is cut) or removes nothing
(every count stays: the round would train the previous round's mask again, and so would
every round after it). ``lottery.rounds`` beyond that point is work with no end, so it is
refused when the recipe loads, naming the largest number of rounds that makes sense.

The arithmetic runs on the counts alone (no tensors), from a dense model: a round's mask
is fixed by its counts under every criterion that scores weights (one that returns its own
mask must keep exactly these counts too). A callback that prunes while a run trains can
reach the end sooner; the lottery then stops when a round's mask equals the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from lth_core.tickets.mask import Mask
from lth_core.tickets.pruning import Allocation


@dataclass(frozen=True)
class RoundsLimit:
    """The largest number of rounds that each prune something, and why the next does not."""

    rounds: int
    why: str


def _keep(remaining: int, rate: float) -> int:
    return remaining - int(round(rate * remaining))


def _unit_rates(allocation: Allocation, mask: Mask) -> dict[tuple[str, ...], float]:
    """Each unit's rate (one per unit: :meth:`Allocation.counts` refuses more)."""
    return {unit: allocation.rates.get(unit[0], 0.0) for unit in allocation.units(mask)}


def counts_after(sizes: Mapping[tuple[str, ...], int], rates: Mapping[tuple[str, ...], float],
                 k: int, iterative_from: Mapping[tuple[str, ...], int] | None = None) -> dict[tuple[str, ...], int]:
    """Weights each unit keeps after round ``k``: one more step from ``iterative_from``
    (round k-1's counts), or in one shot from the dense ``sizes`` (``one_shot``, ``at_init``)."""
    if iterative_from is not None:
        return {u: _keep(n, rates[u]) for u, n in iterative_from.items()}
    return {u: _keep(n, 1.0 - (1.0 - rates[u]) ** k) for u, n in sizes.items()}


def rounds_limit(allocation: Allocation, mask: Mask, mode: str, wanted: int) -> RoundsLimit | None:
    """``None`` when all ``wanted`` rounds prune something and leave every layer a weight;
    otherwise the largest number of rounds that do, and why the round after it does not."""
    rates = _unit_rates(allocation, mask)
    sizes = {unit: sum(int(mask[n].sum()) for n in unit) for unit in rates}
    before = dict(sizes)
    for k in range(1, wanted + 1):
        after = counts_after(sizes, rates, k, before if mode == "iterative" else None)
        emptied = [u for u, n in after.items() if n == 0 and before[u] > 0]
        if emptied:
            layers = ", ".join(emptied[0])
            return RoundsLimit(k - 1, f"round {k} would prune {layers} ({_weights(before[emptied[0]])} left) to no weight at all")
        if after == before:
            kept = sum(after.values())
            return RoundsLimit(k - 1, f"from round {k} on no layer loses another weight ({kept} of {sum(sizes.values())} "
                                      "remain): every further round would train the same mask again")
        before = after
    return None


def _weights(n: int) -> str:
    return f"{n} weight" if n == 1 else f"{n} weights"
