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
    ``options`` the recipe's ``lottery.criterion_options``. ``rates`` (per parameter),
    ``scope`` and ``pooled`` say how the core will allocate: a criterion that prunes
    iteratively inside one step (SynFlow) can aim at the same per-layer counts
    (:func:`lth_core.masks.keep_counts`).
    """

    initial: dict[str, Tensor]
    generator: torch.Generator
    round: int
    data: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    scope: str = "layer"
    pooled: list[str] = field(default_factory=list)


@dataclass
class RewindContext:
    """Passed to a rewind policy's ``rewind_fn``.

    ``initial`` is θ0's full state dict, ``generator`` a seeded CPU generator,
    ``seed`` an integer derived from the run seed for this round (for policies that build
    fresh weights with ``new_model``), ``new_model()`` builds a freshly initialised model
    of the recipe's architecture under the current global RNG. ``run_dir`` is the run
    folder (``round_0/`` holds what round 0's callbacks saved, e.g. weights at step k).

    A policy may also *set* two fields, read by the core after it returns:
    ``start_step`` (train from step k of the schedule and data order: late rewinding) and
    ``optimizer`` (a copy of the recipe's optimiser settings: fine-tuning lowers ``lr``).
    ``max_steps`` and ``steps_per_epoch`` help convert "2ep" to steps.
    """

    initial: dict[str, Tensor]
    generator: torch.Generator
    seed: int
    round: int
    new_model: Callable[[], nn.Module]
    options: dict[str, Any] = field(default_factory=dict)
    run_dir: Any = None
    optimizer: dict[str, Any] = field(default_factory=dict)
    max_steps: int = -1
    steps_per_epoch: int = 0
    start_step: int = 0


@dataclass
class RoundContext:
    """Describes one training run of the lottery: a round or one of its controls.

    ``state`` is handed, after training, to the criterion that prunes the next round
    (a movement criterion's callback accumulates its scores here, keyed by plugin).
    ``module`` is the :class:`lth_core.module.LotteryModule` once training starts: a
    callback that prunes during training calls ``module.set_mask(new_mask)``.
    ``registry`` and ``data`` give callbacks the run's plugins and data.
    """

    recipe: Any
    round: int
    name: str  # "ticket" or the control's name
    mask: Mask
    model: nn.Module
    out_dir: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    registry: Any = None
    data: Any = None
    module: Any = None
