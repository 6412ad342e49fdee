"""Seeds derived from a run's seed and the names and numbers of what draws from them.

Every random choice of a lottery (θ0, random pruning, a reinitialisation, a criterion's
batch) draws from a generator seeded by mixing the recipe's seed with where it happens,
so it repeats exactly on a rerun and never depends on what ran before it.
"""

from __future__ import annotations

from typing import Any

import torch


def salt(name: str) -> int:
    """A number standing for a name (a criterion's, a run's) in a seed."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003


def derive_seed(*parts: Any) -> int:
    """One seed from integers and names, in order: equal parts give equal seeds."""
    seed = 0
    for p in parts:
        v = p if isinstance(p, int) and not isinstance(p, bool) else salt(str(p))
        seed = (seed * 1_000_003 + v) % (2**63 - 1)
    return seed


def seeded_generator(*parts: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
