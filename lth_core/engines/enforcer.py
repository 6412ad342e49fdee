"""Pruned weights stay exactly zero while a run trains, whatever the optimiser."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lth_core.private_apis import foreach_mul_
from lth_core.engines.collectives import mean_over_processes
from lth_core.tickets.mask import Mask, check_tighter, parameters_by_name


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
        self.dense: dict[int, Tensor] | None = None  # gradients kept before masking, when asked

    def enforce(self) -> None:
        if self.bound.params:
            with torch.no_grad():
                foreach_mul_(self.bound.params, self.bound.masks)

    def set_mask(self, mask: Mask, optimizers: tuple = ()) -> None:
        """Switch to a new mask in place and apply it at once.

        Every weight whose place in the mask changes has its state in each optimiser of
        ``optimizers`` (Adam's moments, SGD's momentum) reset to zero: a newly pruned weight
        then gets no update from momentum it gathered (it stays exactly zero on every
        path, also where only gradients are masked), and a regrown one, zero since it was
        pruned, starts afresh, as RigL initialises regrown weights.
        """
        changed: dict[Tensor, Tensor] = {}
        with torch.no_grad():
            for n, p, m in zip(self.names, self.bound.params, self.bound.masks):
                new = mask[n].to(m.device, m.dtype)
                moved = new != m
                if bool(moved.any()):
                    changed[p] = moved
                m.copy_(new)
        self.enforce()
        for optimizer in optimizers:
            reset_state(optimizer, changed)

    def capture_dense_grads(self) -> None:
        """Keep the next backward's gradients of every masked layer before they are masked
        (the gradient a pruned weight would get: RigL regrows where it is largest)."""
        self.dense = {}

    def dense_grads(self) -> dict[str, Tensor]:
        """The gradients :meth:`capture_dense_grads` kept, by parameter name (and stop keeping)."""
        kept, self.dense = self.dense or {}, None
        return {n: kept[id(p)] for n, p in zip(self.names, self.bound.params) if id(p) in kept}

    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights in one fused multiply, between backward and step.

        The multi-step training path calls it instead of :meth:`attach`'s hooks. With the
        gradients masked, SGD (with momentum, Nesterov, weight decay), Adam and AdamW leave
        a weight that is exactly zero at exactly zero: its update is zero, and decay of
        zero is zero. So the post-step multiply of :meth:`attach` is not needed there.
        """
        if self.bound.params:
            with torch.no_grad():
                if self.dense is not None:
                    self.dense.update({id(p): p.grad.detach().clone() for p in self.bound.params})
                foreach_mul_([p.grad for p in self.bound.params], self.bound.masks)

    def _mask_grad(self, param: Tensor, mask: Tensor) -> None:
        with torch.no_grad():
            if self.dense is not None:
                self.dense[id(param)] = param.grad.detach().clone()
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


def reset_state(optimizer: torch.optim.Optimizer, positions_of: dict[Tensor, Tensor]) -> None:
    """Zero, in ``optimizer``'s state, every per-element entry (Adam's moments, SGD's
    momentum) of the positions ``positions_of`` marks in each parameter."""
    for param, positions in positions_of.items():
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value[positions.to(value.device)] = 0


class MaskedRun:
    """The mask-changing half of the lottery's view of a run (:class:`lth_core.LotteryModule`
    and a user's module's view share it). ``mask_owner`` names the callback that owns the
    run's mask (``owns_mask = True``): only then may a new mask grow weights back, within
    ``mask_bound`` (the mask the run started under)."""

    mask: Mask
    enforcer: MaskEnforcer | None
    mask_owner: str | None = None
    mask_bound: Mask | None = None

    def give_mask_to(self, owner: str, bound: Mask) -> None:
        """Let the callback ``owner`` (its plugin, for messages) grow the mask within ``bound``."""
        self.mask_owner, self.mask_bound = owner, bound

    def set_mask(self, mask: Mask) -> None:
        """Change the mask mid-training; pruned weights are zeroed at once.

        A callback's mask is checked before it takes effect: a Mask with the current
        layers, shapes and bool tensors that revives no pruned weight (a weight at zero has
        lost its value; reviving it would not be the run the recipe describes), unless a
        callback owns the mask: then it may grow weights back, which restart at zero with
        their optimiser state reset.
        """
        if self.mask_owner:
            check_tighter(self.mask_bound, mask, self.mask_owner, "a mask's owner regrows only weights the run started with")
        else:
            check_tighter(self.mask, mask)
        self.mask = mask
        if self.enforcer is not None:
            self.enforcer.set_mask(mask, tuple(self.optimizers_now()))

    def optimizers_now(self) -> list[torch.optim.Optimizer]:
        """The torch optimisers training the run now (none before training starts)."""
        trainer = self.attached()
        return [getattr(o, "optimizer", o) for o in trainer.optimizers] if trainer is not None else []

    def attached(self):
        return None

    def capture_dense_grads(self) -> None:
        """Keep the next backward's unmasked gradients (see :meth:`dense_grads`)."""
        if self.enforcer is not None:
            self.enforcer.capture_dense_grads()

    def dense_grads(self) -> dict[str, Tensor]:
        """The gradients of every masked layer from the backward after
        :meth:`capture_dense_grads`, before the mask zeroed the pruned weights' ones."""
        grads = self.enforcer.dense_grads() if self.enforcer is not None else {}
        return mean_over_processes(grads)  # data parallel: the gradient of the whole batch, as DDP's
