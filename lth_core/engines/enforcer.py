"""Pruned weights stay exactly zero while a run trains, whatever the optimiser."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lth_core.engines.private_apis import foreach_mul_
from lth_core.tickets.mask import Mask, parameters_by_name


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
    is one fused multiply per step plus one multiply per masked gradient, in place on the
    model's own tensors: no copy of the model.
    """

    def __init__(self, model: nn.Module, mask: Mask):
        names = list(mask)
        params = parameters_by_name(model, names)  # every layer, so a mask may tighten during training (set_mask)
        self.names = names
        self.bound = _Bound(
            params=[params[n] for n in names],
            masks=[mask[n].to(params[n].device, params[n].dtype) for n in names],
        )
        self._handles: list = []

    def enforce(self) -> None:
        if self.bound.params:
            with torch.no_grad():
                foreach_mul_(self.bound.params, self.bound.masks)

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
                foreach_mul_([p.grad for p in self.bound.params], self.bound.masks)

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
