"""SNIP, GraSP and SynFlow scores (see :mod:`lth_pai`); imported by the first scoring, with torch."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lth_core import Allocation, LthError, Mask, PruneContext, apply_mask, prune_by_scores
from lth_pai import DEFAULT_BATCH, DEFAULT_ITERATIONS, DEFAULT_TEMPERATURE, _options, _positive_int


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
