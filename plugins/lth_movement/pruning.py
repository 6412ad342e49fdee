"""The ``movement_pruning`` callback (see :mod:`lth_movement`): Sanh et al.'s hard and soft
movement pruning, loaded when a run uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lth_core import (
    Allocation,
    LthError,
    Mask,
    RoundContext,
    atomic_write_tensors,
    atomic_write_text,
    allocation_densities,
    erk_densities,
    is_writer,
    keep_top,
    layer_counts,
    make_dir,
    mean_over_processes,
    prunable_parameters,
)
from lth_movement import SCORES_FILE, cubic


def layer_densities(context: RoundContext, distribution: str, density: float) -> dict[str, float]:
    """``density`` over the round's layers: ``erk``, or ``uniform`` (the recipe's allocation)."""
    if distribution == "erk":
        return erk_densities(context.mask, density)
    return allocation_densities(context.mask, density, Allocation.of_recipe(context.recipe, context.mask).rates)


class _StraightThrough(torch.autograd.Function):
    """The 0/1 mask chosen from the scores, with the gradient passed to the scores unchanged
    (Sanh et al.'s straight-through estimator: ∂L/∂S = ∂L/∂M = ∂L/∂W' ⊙ W)."""

    @staticmethod
    def forward(ctx, scores: Tensor, chosen: Tensor) -> Tensor:
        return chosen.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _Masked(nn.Module):
    """A layer's ``weight`` parametrization: the (trained, never zeroed) weight times the mask
    its scores choose now; a masked weight gets no gradient, its score does."""

    def __init__(self, mask_of: Any):
        super().__init__()
        self.mask_of = mask_of

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask_of()


class _Layer:
    """One layer: its module, its scores (a leaf the optimiser trains), the weights the
    round allows, its final count (hard) and a cache of the mask at one step."""

    def __init__(self, name: str, module: nn.Module, allowed: Tensor, final: int):
        self.name, self.module, self.allowed, self.final = name, module, allowed, final
        self.scores: Tensor | None = None
        self.cache: tuple | None = None


class MovementPruning(pl.Callback):
    """Learns scores with the weights and masks every forward by them; see :mod:`lth_movement`."""

    owns_mask = True  # the mask in force is its choice until training ends

    def __init__(self, context: RoundContext, method: str, densities: dict[str, float] | None, threshold: float,
                 l1: float, score_lr: float, start_step: int, end_step: int):
        self.context, self.method, self.densities = context, method, densities
        self.threshold, self.l1, self.score_lr = threshold, l1, score_lr
        self.start_step, self.end_step = start_step, end_step
        self.layers: list[_Layer] = []

    # -- the schedule --------------------------------------------------------------------

    def kept(self, layer: _Layer, t: int) -> int:
        """Hard: weights the layer keeps at step ``t`` (cubic, from all it may keep to its final count)."""
        allowed = int(layer.allowed.sum())
        return int(round(cubic(t, self.start_step, self.end_step, allowed, layer.final)))

    def tau(self, t: int) -> float:
        """Soft: the threshold on sigmoid(S) at step ``t`` (cubic, from 0 to ``threshold``)."""
        return cubic(t, self.start_step, self.end_step, 0.0, self.threshold)

    def chosen(self, layer: _Layer, t: int) -> Tensor:
        """The bool mask the layer's forward uses at step ``t``."""
        scores = layer.scores.detach()
        key = t  # the scores change only at optimiser steps, which move t (and at a resume, which clears this)
        if layer.cache is None or layer.cache[0] != key:
            allowed = layer.allowed.to(scores.device)
            if self.method == "hard":
                mask = keep_top(scores, allowed, self.kept(layer, t))
            else:
                mask = (torch.sigmoid(scores) > self.tau(t)) & allowed
            layer.cache = (key, mask)
        return layer.cache[1]

    def layer_mask(self, layer: _Layer) -> Tensor:
        return _StraightThrough.apply(layer.scores, self.chosen(layer, self.context.module.step))

    # -- Lightning hooks -----------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Every prunable layer's ``weight`` becomes W ⊙ M(S): now, before a data-parallel
        wrapper is built over the parameters (it must see the layers as they will train)."""
        if stage != "fit" or self.layers:
            return
        run, start = self.context.module, self.context.mask
        params = prunable_parameters(run.model)
        finals = layer_counts(self.densities, start) if self.densities else {}
        for name in start:
            module = run.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else run.model
            if params[name] is not getattr(module, "weight", None):
                raise LthError(f"movement_pruning: {name} is not the weight of its layer; it masks layers' weights only")
            layer = _Layer(name, module, start[name].clone(), finals.get(name, 0))
            layer.scores = torch.zeros_like(params[name], requires_grad=True)
            parametrize.register_parametrization(module, "weight", _Masked(lambda layer=layer: self.layer_mask(layer)),
                                                 unsafe=True)
            self.layers.append(layer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Scores at zero beside every prunable weight, on its device now, trained by an Adam of
        their own at ``score_lr`` (the run's optimisers and schedules stay as the recipe or
        module made them)."""
        for layer in self.layers:
            weight = layer.module.parametrizations.weight.original
            layer.scores = torch.zeros_like(weight, requires_grad=True)
            layer.cache = None
        self.optimizer = torch.optim.Adam([layer.scores for layer in self.layers], lr=self.score_lr)
        self.stepped = -1
        self.context.module.density_fn = self.current_density

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """The scores' step, beside the weights' (once per training step, whatever the
        number of optimisers): their gradient, plus the soft variant's L1 penalty's."""
        t = self.context.module.step
        if self.stepped == t:
            return
        self.stepped = t
        grads = mean_over_processes({layer.name: layer.scores.grad for layer in self.layers if layer.scores.grad is not None})
        for layer in self.layers:  # data parallel: the whole batch's gradient on every process, as DDP's for weights
            if layer.name in grads:
                layer.scores.grad = grads[layer.name]
        if self.method == "soft" and self.l1:
            self._add_l1_gradient(self.l1 * self.tau(t) / self.threshold)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for layer in self.layers:
            layer.cache = None

    def _add_l1_gradient(self, lam: float) -> None:
        """∂/∂S of ``lam · mean_l(Σ σ(S_l) / n_l)``: as if the penalty were part of the loss."""
        with torch.no_grad():
            for layer in self.layers:
                s = torch.sigmoid(layer.scores)
                extra = s * (1 - s) * (lam / (len(self.layers) * layer.scores.numel()))
                layer.scores.grad = extra if layer.scores.grad is None else layer.scores.grad.add_(extra)

    def current_density(self) -> float:
        """The density of the masks the forward uses now, over every prunable weight."""
        t = self.context.module.step
        kept = sum(int(self.chosen(layer, t).sum()) for layer in self.layers)
        return kept / sum(layer.allowed.numel() for layer in self.layers)

    def state_dict(self) -> dict[str, Any]:
        """The scores and their Adam's state, by layer name (the weights are the model's)."""
        state = self.optimizer.state_dict()["state"] if self.layers else {}
        return {"scores": {layer.name: layer.scores.detach() for layer in self.layers}, "stepped": self.stepped,
                "adam": {layer.name: dict(state[i]) for i, layer in enumerate(self.layers) if i in state}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        with torch.no_grad():
            for layer in self.layers:
                layer.scores.copy_(state_dict["scores"][layer.name])
                layer.cache = None
        saved = self.optimizer.state_dict()
        saved["state"] = {i: dict(state_dict["adam"][layer.name]) for i, layer in enumerate(self.layers) if layer.name in state_dict["adam"]}
        self.optimizer.load_state_dict(saved)
        self.stepped = int(state_dict["stepped"])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The ticket: the mask of the last step, over the trained weights (pruned ones zeroed)."""
        if not self.layers:
            return
        run, t = self.context.module, self.context.module.step
        final = {layer.name: self.chosen(layer, t).cpu() for layer in self.layers}
        self._save_scores(final, t)
        self._restore()
        run.set_mask(Mask(final))
        self.layers = []

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        self.layers = []

    # -- helpers -------------------------------------------------------------------------

    def _restore(self) -> None:
        """Plain layers again, holding the trained weights (masked ones keep their values until set_mask)."""
        for layer in self.layers:
            if parametrize.is_parametrized(layer.module, "weight"):
                parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=False)
        self.context.module.density_fn = None

    def _save_scores(self, final: dict[str, Tensor], t: int) -> None:
        out = self.context.out_dir
        if out is None or not is_writer():
            return
        make_dir(Path(out))
        atomic_write_tensors(Path(out) / SCORES_FILE, {layer.name: layer.scores.detach().cpu() for layer in self.layers})
        record = {"method": self.method, "step": t, "start_step": self.start_step, "end_step": self.end_step,
                  "kept": {n: int(m.sum()) for n, m in final.items()}}
        if self.method == "soft":
            record.update(threshold=self.threshold, l1=self.l1)
        atomic_write_text(Path(out) / "movement_pruning.json", json.dumps(record, indent=1))
