"""Fully connected networks of the Lottery Ticket paper.

``lenet300`` is LeNet-300-100 (784-300-100-10 on MNIST); ``mlp`` takes any hidden sizes.
Weights use Gaussian Glorot initialisation as in the paper, biases start at zero.
The convolutional models (``conv2``, ``conv4``, ``conv6``, ``vgg19``, ``resnet20``) live in
:mod:`lth_models.convnets`, which documents their parameter names. ``torchvision`` builds
any of torchvision's classification networks by name (:mod:`lth_models.torchvision_models`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lth_core import hookimpl
from lth_models.convnets import conv2, conv4, conv6, resnet20, vgg19
from lth_models.torchvision_models import torchvision_model

if TYPE_CHECKING:  # the networks (torch) load when a model is built, not when the plugin loads
    from torch import nn


def mlp(input_shape: tuple, num_classes: int, hidden: list = (300, 100), dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron with the given hidden widths."""
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
    from lth_models.networks import MLP

    return MLP(math.prod(input_shape), list(hidden), num_classes, dropout)


def lenet300(input_shape: tuple, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """LeNet-300-100 as in the paper (hidden widths 300 and 100)."""
    from lth_models.networks import MLP

    return MLP(math.prod(input_shape), [300, 100], num_classes, dropout)


def __getattr__(name: str) -> Any:
    """``MLP`` loads on first use: it is an ``nn.Module`` (torch)."""
    if name == "MLP":
        from lth_models.networks import MLP

        return MLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_models(register):
    register("lenet300", lenet300)
    register("mlp", mlp)
    register("conv2", conv2)
    register("conv4", conv4)
    register("conv6", conv6)
    register("vgg19", vgg19)
    register("resnet20", resnet20)
    register("torchvision", torchvision_model)
