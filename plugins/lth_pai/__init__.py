"""Pruning at initialisation: SNIP, SynFlow and GraSP as pruning criteria.

They are meant for ``lottery.mode: at_init`` (score θ0 before any training, prune in one
shot to each round's density), but like any criterion they work in every mode.

``snip`` (Lee et al. 2019, "SNIP: single-shot network pruning based on connection
sensitivity"): score ``|g ⊙ θ|`` where ``g`` is the gradient of the cross-entropy of the
*masked* model on one seeded batch of training data (``context.data.sample_batch``).

``synflow`` (Tanaka et al. 2020, "Pruning neural networks without any data by iteratively
conserving synaptic flow"): data free. A double-precision copy of the masked model has every
parameter and buffer replaced by its absolute value and is put in eval mode (batch norm then
uses its absolute running statistics, as in the authors' code, ganguli-lab/Synaptic-Flow);
an all-ones input of shape ``(1, *input_shape)`` gives ``R = sum(outputs)`` and the score is
``|∂R/∂θ ⊙ θ|``. Only ``context.data.input_shape`` is read; the caller's model is never
modified. It prunes iteratively: over ``iterations`` steps the number of weights kept
shrinks exponentially towards exactly the counts of the core's allocation (per layer, or
per pooled group under global pruning), rescoring the masked model at every step, and
returns the mask it reached (the core checks it keeps exactly those counts). With nothing
to prune (no rates, e.g. a control that only ranks weights) it returns the plain
single-shot SynFlow scores. Cost: ``iterations`` forward/backward passes of one input.

``grasp`` (Wang et al. 2020, "Picking winning tickets before training by preserving gradient
flow"): score ``(H g) ⊙ θ`` with ``g`` the (detached) gradient of the loss on logits divided
by a temperature (200) and ``H g`` a Hessian-gradient product; the lowest are pruned, which
is the paper's "remove the highest ``-(H g) ⊙ θ``" (as in Synaptic-Flow's GraSP).

Options (``lottery.criterion_options``): ``batch_size`` (snip, grasp; default 256),
``seed`` (snip, grasp; default drawn from the run's seeded generator), ``temperature``
(grasp; 200), ``iterations`` (synflow; 100). Models are scored in eval mode (dropout off,
batch norm on running statistics), as Synaptic-Flow does for every pruner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    from torch import Tensor, nn

    from lth_core import Mask, PruneContext

DEFAULT_BATCH = 256
DEFAULT_ITERATIONS = 100
DEFAULT_TEMPERATURE = 200.0

KNOWN_OPTIONS = {
    "snip": {"batch_size", "seed"},
    "grasp": {"batch_size", "seed", "temperature"},
    "synflow": {"iterations"},
}


def _options(name: str, context: PruneContext) -> dict[str, Any]:
    """The criterion options, refusing unknown keys so a typo does not pass silently.

    Options meant for another criterion (a control may score with a different one) are
    ignored if some criterion of this plugin knows them.
    """
    options = dict(context.options or {})
    known = set().union(*KNOWN_OPTIONS.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise LthError(
            f"lottery.criterion_options: unknown option(s) {', '.join(unknown)} for criterion {name!r}; "
            f"valid: {', '.join(sorted(KNOWN_OPTIONS[name]))}"
        )
    return {k: v for k, v in options.items() if k in KNOWN_OPTIONS[name]}


def _positive_int(options: dict, key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LthError(f"lottery.criterion_options.{key} must be a positive integer, got {value!r}")
    return value


def snip_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """SNIP (:func:`lth_pai.scores.snip_scores`); torch loads with the first scoring."""
    from lth_pai import scores

    return scores.snip_scores(model, mask, context)


def grasp_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """GraSP (:func:`lth_pai.scores.grasp_scores`); torch loads with the first scoring."""
    from lth_pai import scores

    return scores.grasp_scores(model, mask, context)


def synflow_scores(model: nn.Module, mask: Mask, context: PruneContext) -> Mask | dict[str, Tensor]:
    """SynFlow (:func:`lth_pai.scores.synflow_scores`); torch loads with the first scoring."""
    from lth_pai import scores

    return scores.synflow_scores(model, mask, context)


@hookimpl
def register_criteria(register):
    register("snip", snip_scores, options=sorted(KNOWN_OPTIONS["snip"]))
    register("synflow", synflow_scores, options=sorted(KNOWN_OPTIONS["synflow"]))
    register("grasp", grasp_scores, options=sorted(KNOWN_OPTIONS["grasp"]))
