"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning"): keep the weights moving away from zero.

Two things under one plugin, because the paper's idea can be used two ways:

**The callback ``movement_pruning``** is the method as the paper defines it, in one
training run. Every prunable weight W has a score S, learned with the weights; every
forward uses ``W ⊙ M(S)``; the scores receive the gradient through the straight-through
estimator (∂L/∂S = ∂L/∂(W ⊙ M) ⊙ W), so a masked weight keeps its value, its score keeps
moving, and it can come back. Scores start at zero and train with an Adam of their own
at ``score_lr`` (no weight decay, no schedule; the paper trains them with Adam at a rate of
their own too), stepped with the weights' optimiser; the run's optimisers and schedules
stay as the recipe or the user's module made them.

- ``method: hard``: M keeps each layer's top-v scores, v following a cubic schedule
  from every weight the round allows (at ``start_step``) to ``density`` (at ``end_step``,
  and on until the end). ``distribution`` spreads ``density`` over the layers: ``uniform``
  (the recipe's allocation, :func:`lth_core.allocation_densities`) or ``erk``.
- ``method: soft``: M = 1(σ(S) > τ), τ cubic from 0 to ``threshold``, with the penalty
  ``λ_t · mean_l(Σ σ(S_l) / n_l)`` added to the loss, ``λ_t = l1 · τ_t / threshold``
  (the paper's L1 on the scores, scheduled as its code schedules it); the density is what
  the penalty leaves (a larger ``l1`` prunes more).

The callback owns the run's mask (``owns_mask = True``). When training ends the mask of the
last step becomes the run's: the layers return to plain weights and the masked ones are
set to zero, so the ticket is exactly the network the last evaluation measured. The final
scores are written to ``movement_scores.safetensors`` and the kept counts to
``movement_pruning.json`` in the run folder. A recipe::

    lottery: {rounds: 0}
    callbacks:
      - {name: movement_pruning, method: hard, density: 0.1}

**The criterion ``movement_imp``** (``movement`` is its older name, kept for recipes that
use it) is an IMP criterion: it scores each weight by how much it moved *away from zero*
while the round trained, accumulated over every optimiser step t of the round,

    S = -Σ_t  W_t ⊙ ∂L/∂W_t

(Sanh et al., Eq. 4: under plain gradient descent W_{t+1} = W_t - lr·g_t, so -W_t·g_t > 0
exactly when the step points away from zero), and the round's end prunes the lowest, as
for every criterion. It is registered with ``collects=collect_movement``: when a recipe
uses it anywhere (``lottery.criterion``, a control's criterion, a callback option that
names a criterion) the core adds a :class:`MovementScores` callback to every training run,
which adds ``-W ⊙ grad`` to S before each optimiser step (the gradient the step will use,
already masked). The scores live in ``context.state["movement"]`` =
``{"scores": {name: Tensor}, "steps": n}`` throughout training (so ``gradual_pruning`` with
``criterion: movement_imp`` sees the scores so far) and are handed to the criterion that
prunes the next round. There are none in ``lottery.mode: at_init`` (θ0 is scored before
any training) or when a rerun reuses a finished ticket written without them: the
criterion then raises an :class:`LthError` saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lth_core import LthError, Number, hookimpl, option_error

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, PruneContext, RoundContext
    from lth_movement.callback import MovementScores
    from lth_movement.pruning import MovementPruning

NAME = "movement_imp"
OLD_NAME = "movement"  # the criterion's first name; recipes that use it run as before
CALLBACK = "movement_pruning"
STATE_KEY = "movement"  # context.state key, the plugin's name
SCORES_FILE = "movement_scores.safetensors"
SOFT_THRESHOLD, SOFT_L1 = 0.1, 30.0  # λ = 30: about 11% of LeNet-300-100 left after 5,000 steps on Fashion-MNIST


def movement_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """Score = S = -Σ_t W_t ⊙ ∂L/∂W_t, collected while the pruned-from run trained."""
    state = context.state.get(STATE_KEY) if context.state else None
    if not state or not state.get("steps"):
        raise LthError(
            f"criterion {NAME!r} needs the scores collected while the previous round trained, and round "
            f"{context.round} has none: lottery.mode at_init scores θ0 before any training, and a rerun that "
            "reuses a finished ticket does not retrain (so collects nothing). Use another criterion, or delete "
            "that round's ticket.json (or choose a new --out) so it trains again"
        )
    scores = state["scores"]
    missing = [n for n in mask if n not in scores]
    if missing:
        raise LthError(f"criterion {NAME!r}: no movement scores were collected for {missing}")
    return {n: scores[n].detach().cpu().float() for n in mask}


def collect_movement(context: RoundContext) -> MovementScores:
    """The callback accumulating S for one training run (Lightning loads only now)."""
    from lth_movement.callback import MovementScores

    return MovementScores(context)


def __getattr__(name: str) -> Any:
    """``MovementScores`` loads on first use: it is a Lightning callback (torch)."""
    if name == "MovementScores":
        from lth_movement.callback import MovementScores

        return MovementScores
    if name == "MovementPruning":
        from lth_movement.pruning import MovementPruning

        return MovementPruning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cubic(t: int, t0: int, t1: int, start: float, end: float) -> float:
    """Zhu & Gupta's cubic schedule: ``start`` until ``t0``, ``end`` from ``t1``, and
    ``end + (start - end)(1 - (t - t0)/(t1 - t0))^3`` between (fast at first, then slow)."""
    if t <= t0:
        return start
    if t >= t1:
        return end
    return end + (start - end) * (1.0 - (t - t0) / (t1 - t0)) ** 3


class MovementOptions(BaseModel):
    """The options of ``movement_pruning`` (checked when the recipe loads, each mistake one line)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    method: Literal["hard", "soft"] = "hard"
    density: Annotated[Number, Field(gt=0, le=1)] | None = Field(None, description="hard: fraction of weights kept at the end")
    threshold: Annotated[Number, Field(gt=0, lt=1)] | None = Field(None, description=f"soft: final τ on σ(S) (default {SOFT_THRESHOLD})")
    l1: Annotated[Number, Field(ge=0)] | None = Field(None, description=f"soft: final L1 coefficient λ (default {SOFT_L1})")
    score_lr: Annotated[Number, Field(gt=0)] = Field(0.01, description="the scores' Adam learning rate")
    start_step: Annotated[int, Field(ge=0)] = 0
    end_step: Annotated[int, Field(ge=1)] | None = Field(None, description="default: 75% of training")
    distribution: Literal["uniform", "erk"] = "uniform"
    rounds: list[Annotated[int, Field(ge=0)]] | Literal["all"] | None = None
    runs: list[str] | Literal["all"] | None = None

    @model_validator(mode="after")
    def _fits_the_method(self) -> "MovementOptions":
        if self.method == "hard":
            if self.density is None:
                raise option_error("method hard needs density (the fraction of weights kept at the end)")
            given = [k for k in ("threshold", "l1") if getattr(self, k) is not None]
            if given:
                raise option_error(f"has {' and '.join(given)}, which belong to method soft (method hard keeps the top density of the scores)")
        elif self.density is not None:
            raise option_error("method soft has no density (the L1 penalty decides it: raise l1 to prune more; "
                               "method hard keeps a fixed density)")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise option_error(f"end_step ({self.end_step}) must come after start_step ({self.start_step})")
        return self


def movement_pruning(
    context: RoundContext,
    method: Literal["hard", "soft"] = "hard",
    density: Annotated[Number, Field(gt=0, le=1)] | None = None,
    threshold: Annotated[Number, Field(gt=0, lt=1)] | None = None,
    l1: Annotated[Number, Field(ge=0)] | None = None,
    score_lr: Annotated[Number, Field(gt=0)] = 0.01,
    start_step: Annotated[int, Field(ge=0)] = 0,
    end_step: Annotated[int, Field(ge=1)] | None = None,
    distribution: Literal["uniform", "erk"] = "uniform",
    rounds: list[Annotated[int, Field(ge=0)]] | Literal["all"] | None = None,
    runs: list[str] | Literal["all"] | None = None,
) -> MovementPruning | None:
    """Hard or soft movement pruning in one run (see the module docstring). ``end_step``
    defaults to 75% of training; ``rounds`` (default ``[0]``) and ``runs`` (default
    ``["ticket"]``) say which training runs it acts in."""
    where = f"callbacks.{CALLBACK}"
    last = context.last_step()
    if end_step is None:
        if last is None:
            raise LthError(f"{where} needs end_step when training has no trainer.max_steps or max_epochs")
        end_step = (3 * last) // 4
    if end_step <= start_step or (last is not None and end_step > last):
        raise LthError(f"{where}.end_step ({end_step}) must come after start_step ({start_step}) and by the last step ({last})")
    rounds, runs = [0] if rounds is None else rounds, ["ticket"] if runs is None else runs
    if (rounds != "all" and context.round not in rounds) or (runs != "all" and context.name not in runs):
        return None
    from lth_movement.pruning import MovementPruning, layer_densities  # torch loads only now

    densities = layer_densities(context, distribution, float(density)) if method == "hard" else None

    return MovementPruning(context, method, densities, float(threshold or SOFT_THRESHOLD), float(SOFT_L1 if l1 is None else l1),
                           float(score_lr), start_step, end_step)


@hookimpl
def register_criteria(register):
    register(NAME, movement_scores, options=[], collects=collect_movement)
    register(OLD_NAME, movement_scores, options=[], collects=collect_movement)


@hookimpl
def register_callbacks(register):
    register(CALLBACK, movement_pruning, options=MovementOptions)
