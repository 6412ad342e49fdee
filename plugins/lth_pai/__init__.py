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

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lth_core import Allocation, LthError, Mask, PruneContext, apply_mask, hookimpl, prune_by_scores

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


def _masked_copy(model: nn.Module, mask: Mask) -> tuple[nn.Module, list[Tensor]]:
    """A copy of ``model`` in eval mode with pruned weights at zero, and its prunable weights
    (gradients on): the caller's model is untouched."""
    clone = copy.deepcopy(model)
    apply_mask(clone, mask)
    clone.eval()
    params = dict(clone.named_parameters())
    return clone, [params[n].requires_grad_(True) for n in mask]


def _grads(output: Tensor, weights: list[Tensor], create_graph: bool = False) -> list[Tensor]:
    """d output / d weights, zero for a weight the output does not depend on."""
    grads = torch.autograd.grad(output, weights, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]


def _batch(name: str, context: PruneContext, options: dict) -> tuple[Tensor, Tensor]:
    """A seeded batch of training data for the data-driven criteria."""
    if context.data is None:
        raise LthError(f"criterion {name!r} needs training data (context.data is None)")
    size = _positive_int(options, "batch_size", DEFAULT_BATCH)
    seed = options.get("seed")
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=context.generator))
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise LthError(f"lottery.criterion_options.seed must be an integer, got {seed!r}")
    return context.data.sample_batch(size, seed)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def snip_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """SNIP: |∂L/∂θ ⊙ θ| of the masked model on one seeded training batch (pruned weights score 0)."""
    options = _options("snip", context)
    x, y = _batch("snip", context, options)
    net, weights = _masked_copy(model, mask)
    device = _device(net)
    loss = F.cross_entropy(net(x.to(device)), y.to(device))
    grads = _grads(loss, weights)
    return {n: (g * w).detach().abs().cpu() for n, g, w in zip(mask, grads, weights)}


def grasp_scores(model: nn.Module, mask: Mask, context: PruneContext) -> dict[str, Tensor]:
    """GraSP: (H g) ⊙ θ of the masked model; the lowest are pruned (the paper removes the highest -(Hg)⊙θ)."""
    options = _options("grasp", context)
    temperature = options.get("temperature", DEFAULT_TEMPERATURE)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise LthError(f"lottery.criterion_options.temperature must be positive, got {temperature!r}")
    x, y = _batch("grasp", context, options)
    net, weights = _masked_copy(model, mask)
    device = _device(net)
    x, y = x.to(device), y.to(device)
    g = [t.detach() for t in _grads(F.cross_entropy(net(x) / temperature, y), weights)]
    grads = _grads(F.cross_entropy(net(x) / temperature, y), weights, create_graph=True)
    gnorm = sum((a * b).sum() for a, b in zip(g, grads))  # g stopped: d(gᵀ∇L)/dθ = H g
    hg = _grads(gnorm, weights)
    return {n: (h * w).detach().cpu() for n, h, w in zip(mask, hg, weights)}


# --------------------------------------------------------------------------------- SynFlow


class _Linearised:
    """A double-precision copy of a model with every parameter and floating buffer made
    non-negative (batch-norm running statistics included), in eval mode, as Synaptic-Flow's
    ``linearize``. The caller's model is never modified, so nothing needs restoring."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.net = copy.deepcopy(model).to(torch.float64).eval()
        with torch.no_grad():
            for t in self.net.state_dict().values():  # state_dict tensors share the copy's storage
                if t.is_floating_point():
                    t.abs_()
        self.params = dict(self.net.named_parameters())
        for p in self.params.values():
            p.requires_grad_(True)
        self.abs_weights: dict[str, Tensor] = {}
        device = _device(self.net)
        self.ones = torch.ones((1, *tuple(input_shape)), dtype=torch.float64, device=device)

    def scores(self, mask: Mask) -> dict[str, Tensor]:
        """|∂R/∂θ ⊙ θ| of the network masked by ``mask``, float64 on the CPU (pruned weights: 0)."""
        names = list(mask)
        with torch.no_grad():
            for n in names:
                p = self.params[n]
                if n not in self.abs_weights:
                    self.abs_weights[n] = p.detach().clone()
                p.copy_(self.abs_weights[n] * mask[n].to(p.device, p.dtype))
        weights = [self.params[n] for n in names]
        r = self.net(self.ones).sum()
        grads = torch.autograd.grad(r, weights, allow_unused=True)
        return {
            n: torch.zeros(w.shape, dtype=torch.float64) if g is None else (g * w).detach().abs().cpu()
            for n, g, w in zip(names, grads, weights)
        }


def synflow_once(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> dict[str, Tensor]:
    """One SynFlow scoring of the masked model: |∂R/∂θ ⊙ θ| with R the summed output of the
    linearised network on an all-ones input; float64 on the CPU. ``model`` is not modified."""
    return _Linearised(model, input_shape).scores(mask)


def synflow_iterative(model: nn.Module, mask: Mask, context: PruneContext, iterations: int) -> Mask | dict[str, Tensor]:
    """Iterative SynFlow: the mask it reaches, or plain SynFlow scores when the allocation
    prunes nothing (a control asking for scores to rank).

    Units are the layers the core ranks together (``context.allocation.units``: each
    layer, or the pooled layers under global scope). Step ``t`` of ``T`` keeps
    ``round(R · (K/R)^(t/T))`` weights of each unit (``R`` remaining before, ``K`` the
    allocation's count), pruning the lowest SynFlow scores of the model masked by the
    previous step; the last step keeps exactly ``K``.
    """
    linear = _Linearised(model, tuple(context.data.input_shape))
    allocation = context.allocation
    targets = allocation.counts(mask)
    starts = {unit: sum(int(mask[n].sum()) for n in unit) for unit in targets}
    scores = linear.scores(mask)
    if targets == starts:
        return scores
    current = mask
    for t in range(1, iterations + 1):
        if t > 1:
            scores = linear.scores(current)
        rates: dict[str, float] = {}
        for unit, k in targets.items():
            r = starts[unit]
            keep = k if t == iterations or r == 0 else int(round(r * (k / r) ** (t / iterations)))
            remaining = sum(int(current[n].sum()) for n in unit)
            keep = min(keep, remaining)
            rates.update({n: (remaining - keep) / remaining if remaining else 0.0 for n in unit})
        current = prune_by_scores(scores, current, Allocation(rates, allocation.scope, allocation.pooled))
    return current


def synflow_scores(model: nn.Module, mask: Mask, context: PruneContext) -> Mask | dict[str, Tensor]:
    """SynFlow, data free and iterative: the mask its iterations reach (see :func:`synflow_iterative`)."""
    options = _options("synflow", context)
    iterations = _positive_int(options, "iterations", DEFAULT_ITERATIONS)
    return synflow_iterative(model, mask, context, iterations)


@hookimpl
def register_criteria(register):
    register("snip", snip_scores, options=sorted(KNOWN_OPTIONS["snip"]))
    register("synflow", synflow_scores, options=sorted(KNOWN_OPTIONS["synflow"]))
    register("grasp", grasp_scores, options=sorted(KNOWN_OPTIONS["grasp"]))
