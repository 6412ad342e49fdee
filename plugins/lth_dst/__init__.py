"""Dynamic sparse training: RigL (Evci et al. 2020) and SET (Mocanu et al. 2018).

A sparse network trains at a fixed density from its first step; every ``update_every``
steps each layer drops a fraction of its active weights (the smallest in magnitude) and
regrows as many elsewhere, so the mask moves both ways while the density never changes:

- ``rigl`` regrows where the dense gradient is largest: the gradient the pruned weights
  would have had on that step's batch (``context.module.dense_grads()``).
- ``set`` regrows at random (a generator seeded from the recipe's seed, the round, the run
  and the step: a resumed run regrows the same weights).

Both callbacks own the run's mask (``owns_mask = True``): lth lets them grow it, and checks
at the end that the ticket's mask is the one in force with its pruned weights at zero. A
regrown weight starts at zero, as RigL initialises it, and its optimiser state (Adam's
moments, SGD's momentum) is reset by the core's ``set_mask``. A recipe::

    lottery: {rounds: 0}                  # one training run; the ticket is its final mask
    callbacks:
      - {name: rigl, density: 0.1, update_every: 100, drop_fraction: 0.3}

Options (both callbacks):

- ``density``: the fraction of the prunable weights kept throughout;
- ``distribution``: ``erk`` (Erdős-Rényi-Kernel, RigL's choice: small layers denser) or
  ``uniform`` (the recipe's allocation: every layer at ``density``, or in the proportions
  ``lottery.layer_rates`` gives, see :func:`lth_core.allocation_densities`);
- ``update_every``: steps between mask updates (RigL's ΔT, 100);
- ``drop_fraction``: the fraction of each layer's active weights moved at an update
  (α, 0.3); ``decay: cosine`` (RigL's default) anneals it to
  ``α/2 · (1 + cos(π t / end_step))``, ``constant`` (SET's) keeps it;
- ``end_step``: no update after it (default: 75% of training, as RigL);
- ``rounds`` (default ``[0]``), ``runs`` (default ``["ticket"]``): which training runs it acts in.

The run starts from a random mask at the layers' densities (within the mask the round
starts under). Updates happen after the optimiser step of each ``update_every``-th step;
the dense gradient RigL ranks by is that step's (taken before the step, as the gradient the
optimiser applied). Every update is recorded in ``rigl.json`` / ``set.json`` in the run
folder: step, drop fraction, weights moved, and how many of the regrown weights had been
active before (a weight that comes back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from lth_core import LthError, Number, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from lth_core import RoundContext
    from lth_dst.callback import DynamicSparsity

METHODS = ("rigl", "set")
Fraction = Annotated[Number, Field(gt=0, le=1)]
Runs = list[Annotated[int, Field(ge=0)]] | Literal["all"] | None
Names = list[str] | Literal["all"] | None


def end_of_updates(context: RoundContext, end_step: int | None, where: str) -> int:
    """The last step that may update the mask: ``end_step``, or 75% of training."""
    last = context.last_step()
    if end_step is None:
        if last is None:
            raise LthError(f"{where} needs end_step when training has no trainer.max_steps or max_epochs")
        return (3 * last) // 4
    if last is not None and end_step > last:
        raise LthError(f"{where}.end_step ({end_step}) is after the last training step ({last})")
    return end_step


def acts_here(context: RoundContext, rounds: Runs, runs: Names) -> bool:
    """Whether the callback acts in this training run (default: round 0's ticket run)."""
    rounds = [0] if rounds is None else rounds
    runs = ["ticket"] if runs is None else runs
    return (rounds == "all" or context.round in rounds) and (runs == "all" or context.name in runs)


def _factory(method: str, default_decay: str):
    def factory(
        context: RoundContext,
        density: Fraction,
        update_every: Annotated[int, Field(ge=1)] = 100,
        drop_fraction: Annotated[Number, Field(gt=0, lt=1)] = 0.3,
        decay: Literal["cosine", "constant"] = default_decay,
        end_step: Annotated[int, Field(ge=1)] | None = None,
        distribution: Literal["erk", "uniform"] = "erk",
        rounds: Runs = None,
        runs: Names = None,
    ) -> DynamicSparsity | None:
        where = f"callbacks.{method}"
        end = end_of_updates(context, end_step, where)
        if not acts_here(context, rounds, runs):
            return None
        from lth_dst.callback import DynamicSparsity

        return DynamicSparsity(context, method, float(density), update_every, float(drop_fraction), decay, end, distribution)

    factory.__name__ = method
    factory.__doc__ = f"{method}: dynamic sparse training at ``density`` (see :mod:`lth_dst`)."
    return factory


rigl = _factory("rigl", "cosine")
set_ = _factory("set", "constant")


def __getattr__(name: str) -> Any:
    """``DynamicSparsity`` loads on first use: it is a Lightning callback (torch)."""
    if name == "DynamicSparsity":
        from lth_dst.callback import DynamicSparsity

        return DynamicSparsity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_callbacks(register):
    register("rigl", rigl)
    register("set", set_)
