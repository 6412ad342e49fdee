"""What the core hands to plugins: small dataclasses, documented in hookspecs.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from lth_core.masks import Mask


@dataclass
class PruneContext:
    """Passed to a criterion's ``score_fn``.

    ``initial`` holds θ0 (the weights the lottery rewinds to), ``generator`` a seeded
    ``torch.Generator`` (CPU) for random criteria, ``round`` the round being created,
    ``data`` the run's :class:`lth_core.data.DataModule` (for data-driven criteria such as
    SNIP), ``state`` whatever the round's callbacks collected (keyed by plugin) and
    ``options`` the recipe's ``lottery.criterion_options``.
    """

    initial: dict[str, Tensor]
    generator: torch.Generator
    round: int
    data: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewindContext:
    """Passed to a rewind policy's ``rewind_fn``.

    ``initial`` is θ0's full state dict, ``generator`` a seeded CPU generator,
    ``seed`` an integer derived from the run seed for this round (for policies that build
    fresh weights with ``new_model``), ``new_model()`` builds a freshly initialised model
    of the recipe's architecture under the current global RNG.
    """

    initial: dict[str, Tensor]
    generator: torch.Generator
    seed: int
    round: int
    new_model: Callable[[], nn.Module]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundContext:
    """Describes one training run of the lottery: a round or one of its controls."""

    recipe: Any
    round: int
    name: str  # "ticket" or the control's name
    mask: Mask
    model: nn.Module
    out_dir: Any = None
    state: dict[str, Any] = field(default_factory=dict)
