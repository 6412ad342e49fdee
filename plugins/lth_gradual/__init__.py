"""Pruning during training (Zhu & Gupta 2017, "To prune, or not to prune").

The named callback ``gradual_pruning`` prunes inside one training run, with no restart:
at every pruning step the lowest-scoring remaining weights are masked (set to zero at once
and held at zero until the run ends) until the layer reaches the density the schedule
asks for at that step. A recipe switches it on::

    lottery: {rounds: 0}                      # one training run; the ticket is its final mask
    callbacks:
      - {name: gradual_pruning, target: 0.107, schedule: cubic, every: 1ep}
    controls:
      - {name: retrain_from_init, rewind: init}   # the final mask, retrained once from θ0

Schedules (``t`` = lottery step, pruning at ``start_step``, every ``every`` steps after it,
and at ``end_step``):

- ``cubic``: density ``d_t = d_f + (d_i - d_f) (1 - (t - t0) / (t_end - t0))^3``: Zhu & Gupta's
  ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))^3`` written for the fraction *remaining*,
  with ``d_i`` the density when the run starts and ``d_f`` the target. Each layer keeps
  exactly ``round(d_t · size)`` weights, so ``end_step`` hits the target exactly.
- ``constant``: each pruning step removes ``rate`` of the remaining weights (never going
  below the target); if the target is not reached by ``end_step``, that last step prunes
  to it.

``target`` is the fraction of weights remaining at the end. It follows the lottery's
allocation: a layer with its own rate in ``lottery.layer_rates`` ends where as many IMP
rounds would leave it, ``(1 - r_layer)^k`` with ``k = ln(target) / ln(1 - lottery.rate)``
(so ``target: 0.107`` with ``layer_rates: {last: 0.1}`` gives exactly the per-layer densities
of 10 IMP rounds at 0.2), and ``lottery.scope: global`` ranks the pooled layers together.

Any registered criterion scores the weights (looked up at run time); it receives a
:class:`~lth_core.plugin_api.contexts.PruneContext` whose ``state`` is this run's
``RoundContext.state`` (what the run's other callbacks collected so far, e.g. movement
scores), whose ``initial`` holds the weights this run started from (θ0 in round 0) and
whose ``rates`` are the fractions of each layer's remaining weights this step removes.

By default the callback acts in round 0's ticket run only: controls (``retrain_from_init``
above, ``random_reinit``) then train the final mask without pruning further. The current
density is logged as ``<round>/<run>/density`` at every step; the pruning steps (step,
density, per-layer kept counts) are written to ``gradual_pruning.json`` in the run folder.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import TYPE_CHECKING, Any

from lth_core import LthError, choices, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from lth_core import Mask, RoundContext
    from lth_gradual.callback import GradualPruning

NAME = "gradual_pruning"
SCHEDULES = ("cubic", "constant")
POOL = "*global*"  # the unit of layers pooled by lottery.scope: global
_EVERY = re.compile(r"\s*(\d+)\s*(ep|it)\s*")


def parse_every(every: Any, steps_per_epoch: int) -> int:
    """Steps between pruning steps: ``"1ep"`` -> one epoch's steps, ``"100it"`` -> 100."""
    m = _EVERY.fullmatch(every) if isinstance(every, str) else None
    if m is None or int(m.group(1)) < 1:
        raise LthError(f"callbacks.{NAME}.every must be Nep (epochs, e.g. 1ep) or Nit (steps, e.g. 100it) with N >= 1, got {every!r}")
    n = int(m.group(1))
    return n * steps_per_epoch if m.group(2) == "ep" else n


def cubic_density(t: int, t0: int, t_end: int, d_initial: float, d_final: float) -> float:
    """Zhu & Gupta's cubic schedule as a fraction of weights remaining at step ``t``."""
    frac = min(max((t - t0) / (t_end - t0), 0.0), 1.0)
    return d_final + (d_initial - d_final) * (1.0 - frac) ** 3


def layer_targets(recipe: Any, mask: Mask, target: float) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Final density per layer, the per-layer exponent of the constant rate, and the pooled layers.

    A layer pruned at ``lottery.rate`` ends at ``target``; a layer with its own rate ``r_l``
    ends at ``(1 - r_l)^k`` where ``k = ln(target) / ln(1 - rate)`` (as many IMP rounds).
    The exponent ``ln(1 - r_l) / ln(1 - rate)`` turns the constant schedule's rate ``q``
    into the layer's own: ``1 - (1 - q)^exponent``.
    """
    from lth_core import Allocation

    allocation = Allocation.of_recipe(recipe, mask)
    rates, pooled = allocation.rates, list(allocation.pooled)
    base = math.log(1.0 - recipe["lottery"]["rate"])
    k = math.log(target) / base
    final = {n: (1.0 - r) ** k for n, r in rates.items()}
    return final, {n: math.log(1.0 - r) / base for n, r in rates.items()}, pooled


def _check_options(context: RoundContext, where: str, target: Any, schedule: Any, rate: Any, rounds: Any, runs: Any) -> float:
    """The options' values checked one by one (each mistake one line); returns the rate."""
    if schedule not in SCHEDULES:
        raise LthError(f"{where}.schedule is {schedule!r}; valid: {choices(SCHEDULES)}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target < 1.0:
        raise LthError(f"{where}.target must be a fraction of weights remaining in (0, 1), got {target!r}")
    if rate is not None and schedule != "constant":
        raise LthError(f"{where}.rate applies to schedule: constant only (the cubic schedule sets its own pace)")
    rate = context.recipe["lottery"]["rate"] if rate is None else rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
        raise LthError(f"{where}.rate must be in (0, 1) (a fraction of the remaining weights per pruning step), got {rate!r}")
    if rounds is not None and rounds != "all" and not (isinstance(rounds, list) and all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rounds)):
        raise LthError(f"{where}.rounds must be a list of round numbers (e.g. [0]) or 'all', got {rounds!r}")
    if runs is not None and runs != "all" and not (isinstance(runs, list) and all(isinstance(r, str) for r in runs)):
        raise LthError(f"{where}.runs must be a list of run names (ticket and/or control names) or 'all', got {runs!r}")
    return rate


def gradual_pruning(
    context: RoundContext,
    target: float,
    criterion: str = "magnitude",
    schedule: str = "cubic",
    every: str = "1ep",
    start_step: int = 0,
    end_step: int | None = None,
    rate: float | None = None,
    rounds: list | None = None,
    runs: list | None = None,
) -> GradualPruning | None:
    """Prune during training towards ``target`` (fraction of weights remaining).

    ``rounds`` (default ``[0]``) and ``runs`` (default ``["ticket"]``; control names, or
    ``"all"``) say which training runs it acts in. ``end_step`` defaults to 75% of
    ``trainer.max_steps``. ``rate`` is the constant schedule's fraction per step
    (default ``lottery.rate``).
    """
    where = f"callbacks.{NAME}"
    rate = _check_options(context, where, target, schedule, rate, rounds, runs)
    rounds = [0] if rounds is None else rounds
    runs = ["ticket"] if runs is None else runs
    context.registry.get("criteria", criterion)  # an unknown criterion fails now, naming the installed ones
    steps_per_epoch = len(context.data.train_loader(0))
    interval = parse_every(every, steps_per_epoch)
    trainer = context.recipe["trainer"]
    max_steps = trainer.get("max_steps", -1)
    if not max_steps or max_steps < 0:
        epochs = trainer.get("max_epochs", -1) or -1
        max_steps = epochs * steps_per_epoch if epochs > 0 else -1
    if end_step is None:
        if max_steps < 0:
            raise LthError(f"{where} needs end_step when training has no trainer.max_steps or max_epochs")
        end_step = (3 * max_steps) // 4
    if not isinstance(start_step, int) or start_step < 0:
        raise LthError(f"{where}.start_step must be a step >= 0, got {start_step!r}")
    if not isinstance(end_step, int) or end_step <= start_step:
        raise LthError(f"{where}.end_step ({end_step!r}) must be a step after start_step ({start_step})")
    if max_steps > 0 and end_step > max_steps:
        raise LthError(f"{where}.end_step ({end_step}) is after the last training step (trainer.max_steps = {max_steps})")
    if (rounds != "all" and context.round not in rounds) or (runs != "all" and context.name not in runs):
        return None
    if schedule == "constant":
        before_end = len(range(start_step if start_step >= 1 else interval, end_step, interval))
        if (1.0 - rate) ** before_end > target:
            warnings.warn(
                f"{where}: {before_end} pruning steps at rate {rate} before end_step {end_step} leave "
                f"{(1.0 - rate) ** before_end:.1%} of the weights; the step at end_step prunes straight to the target {target:.1%}",
                stacklevel=2,
            )
    from lth_gradual.callback import GradualPruning

    return GradualPruning(context, criterion, schedule, float(target), float(rate), interval, start_step, end_step)


def __getattr__(name: str) -> Any:
    """``GradualPruning`` loads on first use: it is a Lightning callback (torch)."""
    if name == "GradualPruning":
        from lth_gradual.callback import GradualPruning

        return GradualPruning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_callbacks(register):
    register(NAME, gradual_pruning, refers={"criterion": "criteria"})
