"""The supermask callback and its parametrizations (see :mod:`lth_supermask`); loaded when a run uses it."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lth_core import LthError, Mask, RoundContext, atomic_write_tensors, keep_top, make_dir, prunable_parameters
from lth_supermask import SCORES


class _TopK(torch.autograd.Function):
    """Edge-popup's mask: 1 for the ``k`` largest |scores| among ``allowed``; identity gradient."""

    @staticmethod
    def forward(ctx, scores: Tensor, allowed: Tensor, k: int) -> Tensor:
        return keep_top(scores.detach().abs(), allowed, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


def sample_bernoulli(scores: Tensor, allowed: Tensor) -> Tensor:
    """A Bernoulli(sigmoid(s)) mask whose gradient goes straight through to sigmoid(s)."""
    p = torch.sigmoid(scores)
    m = torch.bernoulli(p.detach())
    return (m + p - p.detach()) * allowed


class _MaskedWeight(nn.Module):
    """The parametrization of a masked layer's ``weight`` (``torch.nn.utils.parametrize``):
    the frozen weight times the mask its scores choose now. It holds the scores, so the
    optimiser finds them among the model's parameters."""

    def __init__(self, scores: Tensor, mask_of: Any):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.mask_of = mask_of

    def forward(self, weight: Tensor) -> Tensor:
        return weight.detach() * self.mask_of()


class _Layer:
    """One masked layer: its module, its parametrization (with the scores), allowed weights and top-k count."""

    def __init__(self, name: str, module: nn.Module, allowed: Tensor, k: int):
        self.name, self.module, self.allowed, self.k = name, module, allowed, k
        self.masked: _MaskedWeight | None = None

    @property
    def scores(self) -> Tensor:
        return self.masked.scores


class Supermask(pl.Callback):
    """Trains per-weight scores of a frozen network; see the module docstring."""

    def __init__(self, context: RoundContext, method: str, density: float, score_init: float,
                 rescale: bool, eval_samples: int):
        self.context, self.method, self.density = context, method, density
        self.score_init, self.rescale, self.eval_samples = score_init, rescale, eval_samples
        self.layers: list[_Layer] = []
        self._requires_grad: dict[str, bool] = {}
        self._fixed_mask = None  # evaluation with a given mask per layer (expected, sampled)

    # -- the masked forward ------------------------------------------------------------
    def layer_mask(self, layer: _Layer) -> Tensor:
        """The 0/1 mask a layer's forward uses now (sampled while training Bernoulli masks)."""
        s = layer.scores
        if layer.allowed.device != s.device:
            layer.allowed = layer.allowed.to(s.device)
        allowed = layer.allowed
        if self._fixed_mask is not None:
            return self._rescaled(self._fixed_mask(layer), allowed)
        if self.method == "edge_popup":
            return _TopK.apply(s.abs(), allowed, layer.k)  # the gradient reaches s through |s|, as in the paper's code
        if layer.module.training:
            m = sample_bernoulli(s, allowed)
        else:
            m = (s.detach() > 0).to(s.dtype) * allowed  # sigmoid(s) > 0.5: the most likely mask
        return self._rescaled(m, allowed)

    def _rescaled(self, m: Tensor, allowed: Tensor) -> Tensor:
        """Zhou's dynamic weight rescaling: x numel(allowed) / sum(mask), when switched on."""
        if not self.rescale:
            return m
        return m * (allowed.sum() / m.detach().sum().clamp_min(1.0))

    def _wrap(self, layer: _Layer, scores: Tensor) -> None:
        """Mask the layer's weight through a parametrization that owns its scores."""
        layer.masked = _MaskedWeight(scores, lambda: self.layer_mask(layer))
        parametrize.register_parametrization(layer.module, "weight", layer.masked, unsafe=True)

    # -- Lightning hooks ---------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model, mask = self.context.model, self.context.mask
        params = prunable_parameters(model)
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            if n not in mask:
                p.requires_grad_(False)
        for name in mask:
            module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or params[name] is not module.weight:
                raise LthError(f"supermask: {name} is not the weight of a Linear or Conv layer; supermasks mask only those")
            allowed = mask[name].clone()
            n_allowed = int(allowed.sum())
            k = max(1, round(self.density * n_allowed)) if n_allowed and self.method == "edge_popup" else 0
            scores = torch.empty_like(module.weight, requires_grad=True)
            with torch.no_grad():
                if self.method == "edge_popup":
                    nn.init.kaiming_uniform_(scores, a=math.sqrt(5))  # as Ramanujan et al.'s code
                else:
                    scores.fill_(self.score_init)
            layer = _Layer(name, module, allowed, k)
            self._wrap(layer, scores)
            self.layers.append(layer)
        self.context.module.density_fn = self.current_density

    def state_dict(self) -> dict:
        """Nothing beyond the model: the scores it trains are model parameters (a checkpoint
        keeps them with the weights, their optimiser state with the optimiser's) and
        everything else is rebuilt by ``setup`` from the run's start."""
        return {}

    def current_density(self) -> float:
        """Density of the mask evaluated now, over every prunable weight (as Mask.density).

        Edge-popup keeps exactly ``k`` weights per layer, so only Bernoulli masks are counted.
        """
        if self.method == "edge_popup":
            kept = sum(layer.k for layer in self.layers)
        else:
            with torch.no_grad():
                kept = sum(int(self._final_layer_mask(layer).sum()) for layer in self.layers)
        total = sum(layer.allowed.numel() for layer in self.layers)
        return kept / total if total else 1.0

    def _final_layer_mask(self, layer: _Layer) -> Tensor:
        s, allowed = layer.scores.detach(), layer.allowed.to(layer.scores.device)
        if self.method == "edge_popup":
            return keep_top(s.abs(), allowed, layer.k)
        return (s > 0) & allowed

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.layers:
            return
        if self.method == "bernoulli":
            self.context.metrics.update(self._bernoulli_metrics(pl_module))
        final = {layer.name: self._final_layer_mask(layer).cpu() for layer in self.layers}
        scales = {layer.name: self._scale(final[layer.name], layer) for layer in self.layers}
        self._save_scores()
        self._restore(pl_module)
        with torch.no_grad():
            for layer in self.layers:
                if scales[layer.name] != 1.0:
                    layer.module.weight.mul_(scales[layer.name])
        full = {n: final.get(n, self.context.mask[n]) for n in self.context.mask}
        self.context.module.set_mask(Mask(full))  # the ticket: this mask over the (untouched) random weights
        self.layers = []

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.layers:
            self._restore(pl_module)
            self.layers = []

    # -- helpers -----------------------------------------------------------------------
    def _scale(self, mask: Tensor, layer: _Layer) -> float:
        if not self.rescale:
            return 1.0
        return float(layer.allowed.sum()) / max(1.0, float(mask.sum()))

    def _restore(self, pl_module: pl.LightningModule) -> None:
        """Put the model back as it was: plain forwards, no scores, gradients as before."""
        for layer in self.layers:
            parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=False)
        for n, p in self.context.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(n, True))
        self.context.module.density_fn = None

    def _save_scores(self) -> None:
        if self.context.out_dir is None:
            return
        make_dir(self.context.out_dir)
        atomic_write_tensors(self.context.out_dir / f"{SCORES}.safetensors", {layer.name: layer.scores for layer in self.layers})

    @torch.no_grad()
    def _bernoulli_metrics(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Test accuracy of the expected network and over sampled masks (Zhou et al.)."""
        model = self.context.model
        was_training = model.training
        model.eval()
        x, y = self.context.data.test_x.to(pl_module.device), self.context.data.test_y.to(pl_module.device)
        expected = self._accuracy(model, x, y, lambda layer: torch.sigmoid(layer.scores) * layer.allowed)
        gen = torch.Generator(device="cpu").manual_seed(self.context.round * 7919 + 17)

        def sample(layer: _Layer) -> Tensor:
            p = torch.sigmoid(layer.scores.detach()).cpu()
            return torch.bernoulli(p, generator=gen).to(x.device) * layer.allowed

        sampled = [self._accuracy(model, x, y, sample) for _ in range(self.eval_samples)]
        model.train(was_training)
        return {
            "supermask_test_acc_expected": expected,
            "supermask_test_acc_sampled_mean": statistics.fmean(sampled),
            "supermask_test_acc_sampled_std": statistics.pstdev(sampled),
            "supermask_test_acc_sampled_min": min(sampled),
            "supermask_test_acc_sampled_max": max(sampled),
            "supermask_expected_density": self._expected_density(),
        }

    def _expected_density(self) -> float:
        kept = sum(float((torch.sigmoid(layer.scores.detach()) * layer.allowed).sum()) for layer in self.layers)
        return kept / sum(layer.allowed.numel() for layer in self.layers)

    def _accuracy(self, model: nn.Module, x: Tensor, y: Tensor, mask_of) -> float:
        """Test accuracy with each masked layer using ``mask_of(layer)`` (then rescaled)."""
        self._fixed_mask = mask_of
        try:
            correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(2000), y.split(2000)))
        finally:
            self._fixed_mask = None
        return correct / len(y)
