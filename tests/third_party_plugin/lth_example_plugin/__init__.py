"""An example third-party lth plugin.

- criterion ``layer_mean_distance``: a weight's score is ``|w - mean(w)|``, the mean taken
  over the weights of its layer that are still unpruned. Weights closest to their layer's
  mean are pruned first (for a layer centred on zero this is magnitude pruning; for a
  layer that drifted during training it keeps the weights that stand out from the drift).
- model ``example_tiny_mlp``: flatten, one tanh hidden layer of ``width`` units, output.

Installed with ``pip install`` (or ``lth install``), it is found through the ``lth``
entry-point group declared in this distribution's pyproject.toml.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lth_core import hookimpl


def layer_mean_distance(model: nn.Module, mask, context) -> dict[str, Tensor]:
    """Score = distance of each weight from the mean of its layer's surviving weights."""
    params = dict(model.named_parameters())
    scores: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, keep in mask.items():
            w = params[name].detach().cpu().to(torch.float64)
            kept = w[keep]
            centre = kept.mean() if kept.numel() else torch.zeros((), dtype=w.dtype)
            scores[name] = (w - centre).abs()
    return scores


def example_tiny_mlp(input_shape: tuple, num_classes: int, width: int = 32) -> nn.Module:
    """Flatten -> Linear(width) -> Tanh -> Linear(num_classes)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.Tanh(),
        nn.Linear(width, num_classes),
    )


@hookimpl
def register_criteria(register):
    register("layer_mean_distance", layer_mean_distance)


@hookimpl
def register_models(register):
    register("example_tiny_mlp", example_tiny_mlp)
