"""What the core hands to plugins: small dataclasses, documented in hookspecs.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from lth_core.plugin_api.criteria import prune_with
from lth_core.seeds import seeded_generator
from lth_core.tickets.mask import Mask
from lth_core.tickets.pruning import Allocation


@dataclass
class PruneContext:
    """Passed to a criterion's ``score_fn``.

    ``initial`` holds θ0 (the weights the lottery rewinds to), ``generator`` a seeded
    ``torch.Generator`` (CPU) for random criteria, ``round`` the round being created,
    ``data`` the run's :class:`lth_core.DataModule` (for data-driven criteria
    such as SNIP), ``state`` whatever the round's callbacks collected (keyed by plugin) and
    ``options`` the recipe's ``lottery.criterion_options``. ``allocation`` says how the
    core will prune (:class:`lth_core.Allocation`: per-layer rates, the
    layers ranked together): a criterion that prunes iteratively inside one step (SynFlow)
    aims at exactly ``allocation.counts(mask)`` and returns the :class:`Mask` it reached.
    """

    initial: dict[str, Tensor]
    generator: torch.Generator
    round: int
    data: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    allocation: Allocation = field(default_factory=Allocation)

    @property
    def rates(self) -> Mapping[str, float]:
        """``allocation.rates``: the fraction of each layer's remaining weights pruned."""
        return self.allocation.rates

    @property
    def scope(self) -> str:
        """``allocation.scope``: ``layer`` or ``global``."""
        return self.allocation.scope

    @property
    def pooled(self) -> list[str]:
        """``allocation.pooled``: the layers ranked together under global scope."""
        return list(self.allocation.pooled)


@dataclass
class RewindContext:
    """Passed to a rewind policy's ``rewind_fn``.

    ``initial`` is θ0's full state dict, ``generator`` a seeded CPU generator,
    ``seed`` an integer derived from the run seed for this round (for policies that build
    fresh weights with ``new_model``), ``new_model()`` builds a freshly initialised model
    of the recipe's architecture under the current global RNG. ``round`` is the round
    being created. ``options`` is a copy of the recipe's ``lottery.rewind_options`` (the
    keys the policy declared with ``options=`` are checked at load; late rewinding reads
    ``to``). ``run_dir`` is the run folder (``round_0/`` holds what round 0's callbacks
    saved, e.g. weights at step k).

    A policy may also *set* two fields, read by the core after it returns:
    ``start_step`` (train from step k of the schedule and data order: late rewinding; a
    step in ``[0, max_steps)``) and ``optimizer`` (a copy of the recipe's optimiser
    settings: fine-tuning lowers ``lr``). ``max_steps`` (``trainer.max_steps``, -1 when
    training is limited otherwise) and ``steps_per_epoch`` (full training batches per
    epoch) help convert "2ep" to steps.
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

    ``recipe`` is the run's :class:`lth_core.Recipe`, ``round`` its round and ``name``
    ``"ticket"`` or the control's name; ``mask`` is the mask it starts under and ``model``
    the network (at its start weights when the run begins). ``out_dir`` is the run's own
    folder (``round_<k>/`` or ``round_<k>/control_<name>/``; write files there only where
    :func:`lth_core.is_writer` is true). ``state`` is handed, after training, to the criterion that prunes the next round
    (a movement criterion's callback accumulates its scores here, keyed by plugin).
    ``module`` is the lottery's view of the run once training starts: a
    :class:`lth_core.LotteryModule`, or for a user's own LightningModule
    (``lth_core.run(module=...)``) an object with the same surface (``model``, ``mask``,
    ``set_mask``, ``step``, ``history``, ``log_prefix``, ``density_fn``). Callbacks read and
    change the run through it, not through the ``pl_module`` Lightning hands their hooks
    (which is the user's own module there): a callback that prunes during training calls
    ``context.module.set_mask(new_mask)``.
    ``registry`` and ``data`` give callbacks the run's plugins and data. ``metrics`` takes
    extra numbers a callback measured (a supermask's accuracy over sampled masks); they
    join the run's summary row.
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
    metrics: dict[str, float] = field(default_factory=dict)

    def last_step(self) -> int | None:
        """The lottery step at which this run's training ends: ``trainer.max_steps``, else
        ``trainer.max_epochs`` times the steps of an epoch; ``None`` when neither is set.
        Schedules inside a run (pruning, mask updates) are laid out against it."""
        trainer = self.recipe["trainer"]
        max_steps = trainer.get("max_steps", -1)
        if max_steps is not None and max_steps > 0:
            return int(max_steps)
        epochs = trainer.get("max_epochs", -1) or -1
        return epochs * len(self.data.train_loader(0)) if epochs > 0 else None

    def prune(self, criterion: str, model: nn.Module, mask: Mask, allocation: Allocation, *, initial: dict[str, Tensor],
              seed: tuple = (), where: str = "") -> Mask:
        """``mask`` pruned by the registered ``criterion`` to ``allocation``, exactly as the
        lottery's rounds prune: the criterion gets a :class:`PruneContext` with this run's
        data and ``state``, the recipe's ``lottery.criterion_options``, ``initial`` as θ0 and
        a generator seeded from the recipe's seed, this round and ``seed``; its result is
        checked (scores for every layer, or a mask of exactly the allocation's counts).
        A callback that prunes during training calls this, then ``context.module.set_mask``.
        """
        context = PruneContext(initial=initial, generator=seeded_generator(self.recipe["seed"], self.round, *seed),
                               round=self.round, data=self.data, state=self.state,
                               options=dict(self.recipe["lottery"]["criterion_options"]), allocation=allocation)
        return prune_with(self.registry, criterion, model, mask, context, where)


@dataclass
class MergeContext:
    """Passed to a merge strategy's ``merge_fn`` by ``lth merge``.

    ``model_name`` is the registered model of the tickets and ``new_model()`` builds a
    fresh one (for structure and shapes; a strategy never trains it). ``recipe`` is the
    :class:`lth_core.Recipe` the merge runs under (the first ticket's run's, or
    ``--recipe``, with ``--set``). ``data`` is the
    recipe's :class:`lth_core.DataModule`, ``generator`` a CPU generator seeded from
    the recipe seed (e.g. the order of weight matching's coordinate descent).
    ``retrain(mask, start=None, start_step=0)`` trains ``mask`` with the recipe's training
    (the same ``lottery.train`` a round uses) from ``start`` weights (default: the first
    ticket's rewind weights) at step ``start_step`` (a late-rewound ticket's
    ``meta["start_step"]``) and returns the trained
    :class:`lth_core.Ticket`, already saved as the merge's ticket: a strategy that
    combines masks retrains through it and never forks the training loop.
    """

    model_name: str
    new_model: Callable[[], nn.Module]
    data: Any
    generator: torch.Generator
    retrain: Callable[..., Any]
    recipe: Any = None


@dataclass
class MergeResult:
    """What a merge strategy returns.

    A merged network: ``weights`` (a full state dict of the model) and ``mask`` (the
    prunable weights it keeps; weights outside it must be zero), optionally ``init``
    (the weights its ticket rewinds to; default ``weights``). An ensemble: ``members``
    (one full state dict per member; the core averages their logits) and no ``weights``.
    An averaging strategy also returns ``endpoints``: each ticket's weights as it averaged
    them (after any alignment, the first ticket's unchanged); the core then measures the
    linear path from the first endpoint to each other one besides the naive path between
    the tickets' own weights. ``info`` is JSON-able detail kept in ``merge.json``.
    """

    weights: dict[str, Tensor] | None = None
    mask: Mask | None = None
    init: dict[str, Tensor] | None = None
    members: list[dict[str, Tensor]] | None = None
    endpoints: list[dict[str, Tensor]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
