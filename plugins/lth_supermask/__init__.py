"""Supermasks: train a mask over a frozen random network, never its weights.

Two methods, one callback (``callbacks: [{name: supermask, method: ...}]``):

- ``edge_popup`` (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural
  network?"): every prunable weight gets a real score s. The forward pass uses, in each
  layer, exactly the top ``density`` fraction of weights by |s|; the backward pass hands
  the gradient of the masked weight's output straight through to s. ``density`` is the
  paper's k (fraction kept; about 0.5 is best).
- ``bernoulli`` (Zhou et al. 2019, "Deconstructing Lottery Tickets"): every weight gets a
  mask logit s (``score_init``); training samples mask ~ Bernoulli(sigmoid(s)) at every
  step, straight through to sigmoid(s). The density is learned. ``rescale`` is Zhou's
  dynamic weight rescaling: each layer is multiplied by numel(mask) / sum(mask).

How it stays out of the weights: the callback freezes every parameter of the model
(``requires_grad`` off for biases and batch norm) and puts a parametrization
(``torch.nn.utils.parametrize``) on each masked layer's ``weight``: the layer computes
with ``weight.detach()`` times the mask its scores choose, so no gradient reaches a weight
(torch's optimisers skip parameters without one) and the scores, which the parametrization
holds as a parameter, are what the recipe's optimiser trains. The core masks a
parametrized weight through its original tensor, so pruned weights stay zero as always.

When training ends the scores become the run's ticket: the mask is the top-k (edge-popup)
or the most likely mask sigmoid(s) > 0.5 (Bernoulli), the weights are the untouched random
ones (with ``rescale``, scaled per layer as the network was evaluated), so ``lth report``,
merging and export read it like any ticket. The scores themselves are kept beside it in
``supermask_scores.safetensors``. For Bernoulli masks the summary row also holds the test
accuracy of the expected network (weights x sigmoid(s)) and the mean, std, min and max over
``eval_samples`` sampled masks, the way Zhou et al. report it.

Initialisations matter (edge-popup: signed Kaiming constant is far better than Gaussian):
this plugin registers ``kaiming_normal``, ``signed_kaiming_constant`` and
``scaled_signed_kaiming_constant`` for a recipe's ``init:`` key.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lth_core import LthError, hookimpl

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    import torch
    from torch import Tensor, nn

    from lth_core import RoundContext
    from lth_supermask.callback import Supermask

METHODS = ("edge_popup", "bernoulli")
SCORES = "supermask_scores"


def supermask(context: RoundContext, method: str = "edge_popup", density: float = 0.5, score_init: float = 0.0,
              rescale: bool = False, eval_samples: int = 10) -> Supermask:
    """The ``supermask`` callback: train a mask of the frozen network (see module docstring).

    ``method``: edge_popup or bernoulli. ``density`` (edge_popup): fraction of each layer's
    weights kept, in (0, 1]. ``score_init`` (bernoulli): the initial mask logit, the same for
    every weight (0 = keep with probability 0.5). ``rescale`` (bernoulli): dynamic weight
    rescaling. ``eval_samples`` (bernoulli): sampled masks averaged at the end.
    """
    if method not in METHODS:
        raise LthError(f"callbacks.supermask.method is {method!r}; valid: {', '.join(METHODS)}")
    if not 0.0 < density <= 1.0:
        raise LthError(f"callbacks.supermask.density must be in (0, 1] (the fraction of weights kept), got {density}")
    if eval_samples < 1:
        raise LthError(f"callbacks.supermask.eval_samples must be >= 1, got {eval_samples}")
    if rescale and method == "edge_popup":
        raise LthError("callbacks.supermask.rescale is for method bernoulli; edge_popup keeps a fixed density "
                       "(use init: scaled_signed_kaiming_constant instead)")
    from lth_supermask.callback import Supermask

    return Supermask(context, method, float(density), float(score_init), bool(rescale), int(eval_samples))


# -- initialisations ------------------------------------------------------------------
def _fan_in_std(weight: Tensor, density: float = 1.0) -> float:
    from torch import nn

    fan_in = weight.shape[1] * math.prod(weight.shape[2:])  # inputs per output unit, as torch.nn.init counts them
    return nn.init.calculate_gain("relu") / math.sqrt(density * fan_in)


def kaiming_normal(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """Prunable weights ~ N(0, 2/fan_in) (He et al.), the Gaussian baseline of edge-popup."""
    import torch

    from lth_core import prunable_parameters

    return {n: torch.randn(p.shape, generator=generator) * _fan_in_std(p) for n, p in prunable_parameters(model).items()}


def signed_kaiming_constant(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """Prunable weights = ±sqrt(2/fan_in) with random signs (edge-popup's best init)."""
    return scaled_signed_kaiming_constant(model, generator, density=1.0)


def scaled_signed_kaiming_constant(model: nn.Module, generator: torch.Generator, density: float = 0.5) -> dict[str, Tensor]:
    """±sqrt(2/(density·fan_in)): the signed constant scaled for a mask keeping ``density``.

    A layer that keeps a fraction k of its inputs has an effective fan-in of k·fan_in; this
    keeps the activations' variance as Kaiming intends. Set ``density`` to the supermask's.
    """
    if not 0.0 < density <= 1.0:
        raise LthError(f"init.scaled_signed_kaiming_constant.density must be in (0, 1], got {density}")
    import torch

    from lth_core import prunable_parameters

    out = {}
    for n, p in prunable_parameters(model).items():
        signs = torch.randint(0, 2, p.shape, generator=generator).float() * 2 - 1
        out[n] = signs * _fan_in_std(p, density)
    return out


def __getattr__(name: str) -> Any:
    """``Supermask`` loads on first use: it is a Lightning callback (torch)."""
    if name == "Supermask":
        from lth_supermask.callback import Supermask

        return Supermask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_callbacks(register: Any) -> None:
    register("supermask", supermask)


@hookimpl
def register_initializers(register: Any) -> None:
    register("kaiming_normal", kaiming_normal)
    register("signed_kaiming_constant", signed_kaiming_constant)
    register("scaled_signed_kaiming_constant", scaled_signed_kaiming_constant)
