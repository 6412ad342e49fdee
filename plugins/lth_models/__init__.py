"""Fully connected networks of the Lottery Ticket paper.

``lenet300`` is LeNet-300-100 (784-300-100-10 on MNIST); ``mlp`` takes any hidden sizes.
Weights use Gaussian Glorot initialisation as in the paper, biases start at zero.
The convolutional models (``conv2``, ``conv4``, ``conv6``, ``vgg19``, ``resnet20``) live in
:mod:`lth_models.convnets`, which documents their parameter names.
"""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear + ReLU per hidden layer, then a Linear output layer."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def mlp(input_shape: tuple, num_classes: int, hidden: list = (300, 100), dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron with the given hidden widths."""
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
    return MLP(math.prod(input_shape), list(hidden), num_classes, dropout)


def lenet300(input_shape: tuple, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """LeNet-300-100 as in the paper (hidden widths 300 and 100)."""
    return MLP(math.prod(input_shape), [300, 100], num_classes, dropout)


from lth_core import hookimpl
from lth_models.convnets import conv2, conv4, conv6, resnet20, vgg19  # noqa: E402


@hookimpl
def register_models(register):
    register("lenet300", lenet300)
    register("mlp", mlp)
    register("conv2", conv2)
    register("conv4", conv4)
    register("conv6", conv6)
    register("vgg19", vgg19)
    register("resnet20", resnet20)
