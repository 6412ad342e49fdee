"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning"): prune weights moving to zero.

The ``movement`` criterion scores each weight by how much it moved *away from zero* while
the round trained, accumulated over every optimiser step t of the round:

    S = -Σ_t  W_t ⊙ ∂L/∂W_t

(Sanh et al., Eq. 4, with the straight-through estimator of their soft movement pruning:
under plain gradient descent W_{t+1} = W_t - lr·g_t, so -W_t·g_t > 0 exactly when the step
points away from zero). The lowest scores are pruned, as for every criterion: a weight that
shrank towards zero scores low, one that grew scores high, whatever its final magnitude.

How it is collected: the criterion is registered with ``collects=collect_movement``, so when
a recipe uses ``movement`` anywhere (``lottery.criterion``, a control's criterion, a
callback option that names a criterion) the core adds a :class:`MovementScores` callback
to every training run. After each backward pass
and before the optimiser step (``on_before_optimizer_step``: the gradient is the one the
step will use, already masked by the core, and W is still W_t) it adds ``-W ⊙ grad`` to S.
The scores live in ``context.state["movement"]`` = ``{"scores": {name: Tensor}, "steps": n}``
throughout training (so a callback that prunes mid-training with ``criterion: movement``
sees the scores so far); at the end of training they become CPU copies, and the core
hands them to the criterion that prunes the next round. In ``one_shot`` mode every round
is pruned from round 0's scores.

What it refuses: movement needs the scores of the training run it prunes from. There are
none in ``lottery.mode: at_init`` (θ0 is scored before any training) or when a rerun
*reuses* a finished ticket written without them (the core keeps a run's ``context.state``
beside its ticket, ``round_state.*``, so a resumed lottery prunes with the scores its
ticket's run collected; older tickets have none); the criterion then raises an
:class:`LthError` saying so, rather than silently falling back to another criterion.

Hard movement pruning (learned scores, top-k with a straight-through estimator) is *not*
provided: in Sanh et al. a masked weight keeps its value and keeps receiving the score
gradient W·∂L/∂(W⊙M), so it can come back. This core holds pruned weights at exactly zero
and masks their gradients (``MaskEnforcer``), so every pruned weight's score gradient is
identically zero and a re-selected weight would restart from 0: the method would not be
the paper's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, PruneContext, RoundContext
    from lth_movement.callback import MovementScores

NAME = "movement"
STATE_KEY = "movement"  # context.state key, the plugin's name


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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_criteria(register):
    register(NAME, movement_scores, options=[], collects=collect_movement)
