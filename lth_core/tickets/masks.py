"""Masks are plain data: parameter name -> bool tensor, ``True`` = weight kept.

A :class:`Mask` knows nothing about training. :func:`prunable_parameters` says which
weights can be pruned (the weights of linear and convolutional layers; never biases or
normalisation parameters), :func:`prune_by_scores` turns a criterion's scores into a new
mask, and :class:`MaskEnforcer` (attached to the optimiser) keeps pruned weights at exactly zero
while a round trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights a lottery prunes: ``weight`` of every Linear/Conv layer, in model order.

    Biases and batch-norm parameters are never pruned (as in the paper). A model can
    override the choice by defining ``prunable_parameter_names() -> list[str]``.
    """
    params = dict(model.named_parameters())
    if hasattr(model, "prunable_parameter_names"):
        names = list(model.prunable_parameter_names())
        unknown = [n for n in names if n not in params]
        if unknown:
            from lth_core.errors import LthError

            raise LthError(f"prunable_parameter_names() names {unknown[:3]}, which are not parameters of the model")
        return {n: params[n] for n in names}
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and getattr(module, "weight", None) is not None:
            name = f"{mod_name}.weight" if mod_name else "weight"
            out[name] = params[name]
    return out


class Mask(Mapping[str, Tensor]):
    """An immutable-by-convention mapping of parameter name -> bool tensor on the CPU."""

    def __init__(self, tensors: Mapping[str, Tensor]):
        self._t = {}
        for name, t in tensors.items():
            if t.dtype != torch.bool:
                raise TypeError(f"mask for {name!r} must be bool, got {t.dtype}")
            self._t[name] = t.detach().to("cpu")

    @classmethod
    def ones_like(cls, model: nn.Module) -> "Mask":
        """The dense mask: every prunable weight kept."""
        return cls({n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in prunable_parameters(model).items()})

    def __getitem__(self, name: str) -> Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def kept(self) -> int:
        return int(sum(int(t.sum()) for t in self._t.values()))

    def total(self) -> int:
        return int(sum(t.numel() for t in self._t.values()))

    def density(self) -> float:
        """Fraction of prunable weights remaining (the paper's Pm)."""
        total = self.total()
        return self.kept() / total if total else 1.0

    def report(self) -> dict[str, dict]:
        """Per-layer counts: {name: {"kept", "total", "density"}}, counted from the tensors."""
        return {
            n: {"kept": int(t.sum()), "total": t.numel(), "density": float(t.sum()) / max(t.numel(), 1)}
            for n, t in self._t.items()
        }

    def intersection(self, other: "Mask") -> "Mask":
        return Mask({n: self[n] & other[n] for n in self})

    def union(self, other: "Mask") -> "Mask":
        return Mask({n: self[n] | other[n] for n in self})

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Mask)
            and set(self) == set(other)
            and all(torch.equal(self[n], other[n]) for n in self)
        )

    def __repr__(self) -> str:
        return f"Mask({len(self)} layers, density={self.density():.4f})"


def check_mask_fits(mask: Mask, model: nn.Module, source: str = "mask") -> None:
    """Refuse a mask whose names or shapes differ from the model's prunable weights."""
    from lth_core.errors import LthError

    params = prunable_parameters(model)
    missing, extra = set(params) - set(mask), set(mask) - set(params)
    if missing or extra:
        raise LthError(
            f"{source} does not fit this model: missing layers {sorted(missing) or '-'}, "
            f"unknown layers {sorted(extra) or '-'}"
        )
    for n, p in params.items():
        if tuple(mask[n].shape) != tuple(p.shape):
            raise LthError(f"{source} does not fit this model: {n} is {tuple(mask[n].shape)}, model has {tuple(p.shape)}")


def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero every pruned weight of ``model`` in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, m in mask.items():
            params[n].mul_(m.to(params[n].device, params[n].dtype))


def keep_counts(mask: Mask, rates: Mapping[str, float]) -> dict[str, int]:
    """How many weights each layer keeps after pruning ``rates[name]`` of its remaining ones."""
    out = {}
    for n, m in mask.items():
        remaining = int(m.sum())
        out[n] = remaining - int(round(rates.get(n, 0.0) * remaining))
    return out


def _topk_mask(scores: Tensor, current: Tensor, k: int) -> Tensor:
    """Keep the ``k`` highest-scoring weights among those still kept in ``current``."""
    flat = scores.detach().flatten().to(torch.float64).clone()
    flat[~current.flatten()] = -torch.inf
    keep = torch.zeros_like(current.flatten())
    if k > 0:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    return keep.view_as(current)


def is_real_number_dtype(dtype: torch.dtype) -> bool:
    """Scores are ranked: real floating and integer dtypes are numbers; bool and complex are not."""
    return dtype != torch.bool and not dtype.is_complex


def validate_scores(scores: Mapping[str, Tensor], mask: Mask, source: str) -> None:
    """A criterion must score every masked layer with a finite tensor of the right shape."""
    from lth_core.errors import PluginError

    if not isinstance(scores, Mapping):
        raise PluginError(f"{source} returned {type(scores).__name__}, expected a dict of score tensors")
    missing = set(mask) - set(scores)
    if missing:
        raise PluginError(f"{source} returned no scores for {sorted(missing)}")
    for n, m in mask.items():
        s = scores[n]
        if not isinstance(s, Tensor) or tuple(s.shape) != tuple(m.shape):
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise PluginError(f"{source} returned scores for {n} shaped {shape}, expected {tuple(m.shape)}")
        if not is_real_number_dtype(s.dtype):  # topk cannot rank complex numbers; bool scores are a mask by mistake
            raise PluginError(f"{source} returned {s.dtype} scores for {n}, expected real numbers (a floating or integer tensor)")
        if not torch.isfinite(s.detach().cpu()[m]).all():
            raise PluginError(f"{source} returned non-finite scores for unpruned weights of {n}")


def prune_by_scores(
    scores: Mapping[str, Tensor],
    mask: Mask,
    rates: Mapping[str, float],
    scope: str = "layer",
    global_layers: list[str] | None = None,
) -> Mask:
    """Prune the lowest-scoring remaining weights.

    ``scope="layer"``: each layer loses ``rates[name]`` of its remaining weights.
    ``scope="global"``: the layers in ``global_layers`` (default: all with a rate) are
    pooled and lose ``rates`` of their pooled remaining weights by one ranking, at the
    pooled rate (every pooled layer must share it); other layers are pruned layer-wise.
    Already pruned weights stay pruned. Counts are exact: ``round(rate * remaining)``.
    """
    new: dict[str, Tensor] = {}
    counts = keep_counts(mask, rates)
    if scope != "global":
        pooled = []
    elif global_layers is None:
        pooled = [n for n in mask if n in rates]  # the documented default: all with a rate
    else:
        pooled = list(global_layers)
    for n in mask:
        if n not in pooled:
            new[n] = _topk_mask(scores[n].cpu(), mask[n], counts[n])
    if pooled:
        rate_values = {rates.get(n, 0.0) for n in pooled}
        if len(rate_values) != 1:
            raise ValueError(f"global pruning needs one rate for all pooled layers, got {sorted(rate_values)}")
        flat_scores = torch.cat([scores[n].detach().cpu().flatten() for n in pooled])
        flat_mask = torch.cat([mask[n].flatten() for n in pooled])
        remaining = int(flat_mask.sum())
        k = remaining - int(round(rate_values.pop() * remaining))
        keep = _topk_mask(flat_scores, flat_mask, k)
        offset = 0
        for n in pooled:
            size = mask[n].numel()
            new[n] = keep[offset : offset + size].view_as(mask[n])
            offset += size
    return Mask({n: new[n] for n in mask})


def match_density(scores: Mapping[str, Tensor], like: Mask) -> Mask:
    """A fresh mask from ``scores`` keeping exactly as many weights per layer as ``like``.

    Used by controls: random pruning keeps the ticket's per-layer sparsity, not its choice.
    """
    return Mask(
        {n: _topk_mask(scores[n].cpu(), torch.ones_like(m), int(m.sum())) for n, m in like.items()}
    )


@dataclass
class _Bound:
    params: list[Tensor]
    masks: list[Tensor]


class MaskEnforcer:
    """Keeps pruned weights at exactly zero after every optimiser step.

    An optimiser step post-hook (torch's ``register_step_post_hook``) zeroes pruned weights
    after *every* step whatever the optimiser, so momentum, Adam moments and weight decay
    cannot resurrect a weight; a per-parameter gradient hook masks each gradient as
    backward accumulates it, so the optimiser state of pruned weights stays zero. The cost
    is one fused multiply per step (``torch._foreach_mul_``) plus one multiply per masked
    gradient, in place on the model's own tensors: no copy of the model.
    """

    def __init__(self, model: nn.Module, mask: Mask):
        params = dict(model.named_parameters())
        names = list(mask)  # every layer, so a mask may tighten during training (set_mask)
        self.names = names
        self.bound = _Bound(
            params=[params[n] for n in names],
            masks=[mask[n].to(params[n].device, params[n].dtype) for n in names],
        )
        self._handles: list = []

    def enforce(self) -> None:
        if self.bound.params:
            with torch.no_grad():
                torch._foreach_mul_(self.bound.params, self.bound.masks)

    def set_mask(self, mask: Mask) -> None:
        """Switch to a new mask in place (pruning during training) and apply it at once."""
        with torch.no_grad():
            for n, m in zip(self.names, self.bound.masks):
                m.copy_(mask[n].to(m.device, m.dtype))
        self.enforce()

    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights in one fused multiply, between backward and step.

        The multi-step training path calls it instead of :meth:`attach`'s hooks. With the
        gradients masked, SGD (with momentum, Nesterov, weight decay), Adam and AdamW leave
        a weight that is exactly zero at exactly zero: its update is zero, and decay of
        zero is zero. So the post-step multiply of :meth:`attach` is not needed there.
        """
        if self.bound.params:
            with torch.no_grad():
                torch._foreach_mul_([p.grad for p in self.bound.params], self.bound.masks)

    def _mask_grad(self, param: Tensor, mask: Tensor) -> None:
        with torch.no_grad():
            param.grad.mul_(mask)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook into ``optimizer`` so the mask holds after each of its steps.

        Gradients are masked as backward accumulates them (a per-parameter hook), not in an
        optimiser pre-step hook: Lightning, like any closure-based ``step``, runs backward
        *inside* ``optimizer.step``, after pre-step hooks have fired.
        """
        for p, m in zip(self.bound.params, self.bound.masks):
            self._handles.append(p.register_post_accumulate_grad_hook(lambda param, m=m: self._mask_grad(param, m)))
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.enforce()))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
