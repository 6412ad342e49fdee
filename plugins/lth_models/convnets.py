"""Convolutional networks of the Lottery Ticket paper and of OpenLTH's CIFAR-10 models.

Every factory has the plugin signature ``(input_shape, num_classes, **options)`` and returns
a freshly initialised ``nn.Module`` (the caller seeds the global RNG first).

``conv2``, ``conv4``, ``conv6`` (Frankle & Carbin 2019, Figure 2)
    3x3 convolutions (padding 1) + ReLU, a 2x2 max-pool after each pair of convolutions:
    Conv-2 ``64,64,pool``; Conv-4 ``64,64,pool,128,128,pool``; Conv-6
    ``64,64,pool,128,128,pool,256,256,pool``; then fully connected ``256, 256, num_classes``
    with ReLU between them. The first fc layer's input size is computed from ``input_shape``
    (so 1x28x28 Fashion-MNIST works as well as 3x32x32 CIFAR-10). Gaussian Glorot
    initialisation (``xavier_normal_``) of every conv and linear weight, zero biases, as in
    the paper. Option ``dropout`` (default 0, off): the paper's dropout variant (Figure 6)
    trains these nets with dropout on the fully connected part; here a ``Dropout(dropout)``
    is applied to the input of every fully connected layer (after the flatten, and after
    each hidden fc layer's ReLU); the convolutions are never dropped. Dropout has no
    parameters, so parameter names are the same with and without it.
    Option ``batchnorm`` (default ``none``, the paper's nets): ``affine`` or ``non_affine``
    adds ``bnN = BatchNorm2d`` after each convolution, before its ReLU; ``non_affine`` (no
    learned scale or shift, only running statistics) is what edge-popup's supermasks use
    (Ramanujan et al. 2020). Option ``width`` (default 1) multiplies every conv and hidden
    fc width (rounded): the width sweeps of supermask experiments.

    Parameter names (what ``lottery.layer_rates`` keys may name; module names also work):
    ``conv1.weight`` ... ``convN.weight`` (N = 2, 4, 6), ``fc1.weight``, ``fc2.weight``,
    ``fc3.weight`` (the output layer, also reachable as ``last``), each with a ``.bias``.
    The paper's Conv-2/4 setting is ``rate: 0.2`` with ``layer_rates: {conv1: 0.1, ...}``
    (Conv-6: 0.15 on the convolutions).

``vgg19`` (OpenLTH ``cifar_vgg_19``, used by the LTH paper for CIFAR-10)
    Conv widths ``64,64,M,128,128,M,256x4,M,512x4,M,512x4`` (M = 2x2 max-pool), each conv
    3x3 padding 1 followed by batch norm and ReLU; then an average pool of the last feature
    map to 1x1 and a single ``Linear(512, num_classes)``. OpenLTH uses ``AvgPool2d(2)``,
    which on 32x32 inputs (a 2x2 map after four pools) is exactly the global average pool
    used here; the adaptive pool also accepts other input sizes. Initialisation as OpenLTH's
    defaults (``model_init=kaiming_normal``, ``batchnorm_init=uniform``): Kaiming normal
    conv and linear weights, batch-norm weights U(0, 1) and biases 0; conv and linear
    biases start at zero (OpenLTH leaves PyTorch's default bias init). Option ``init``:
    ``"kaiming_normal"`` (default) or ``"glorot"`` (Gaussian Glorot, as the paper's Conv nets).
    Names follow OpenLTH: ``layers.<i>.conv.weight`` / ``layers.<i>.bn.{weight,bias}`` with
    ``i`` the position in the plan (pool positions 2, 5, 10, 15 hold no parameters), so
    the convolutions are ``layers.{0,1,3,4,6,7,8,9,11,12,13,14,16,17,18,19}.conv``; the
    output layer is ``fc`` (``fc.weight``, ``fc.bias``). 20,040,522 parameters for 10 classes,
    the count OpenLTH's own test asserts.

``resnet20`` (He et al. 2016; OpenLTH ``cifar_resnet_20[_W]``)
    A 3x3 conv (W filters) + BN + ReLU, then three stages of three basic blocks with W, 2W,
    4W filters (W = ``width``, default 16); the first block of stages 2 and 3 has stride 2
    and a 1x1 conv (stride 2) + BN shortcut, as OpenLTH. Convolutions have no bias. Global
    average pool, then ``Linear(4W, num_classes)``. Initialisation as ``vgg19`` (option
    ``init``). Names: ``conv.weight``, ``bn.*``; ``blocks.<b>.conv1.weight``,
    ``blocks.<b>.conv2.weight``, ``blocks.<b>.bn1.*``, ``blocks.<b>.bn2.*`` for b = 0..8;
    shortcuts ``blocks.3.shortcut.0.weight`` and ``blocks.6.shortcut.0.weight`` (their BN
    ``blocks.{3,6}.shortcut.1.*``); output layer ``fc``. 272,474 parameters at W = 16 for
    10 classes, the count OpenLTH's own test asserts.

Prunable weights are found by :func:`lth_core.tickets.mask.prunable_parameters`: every conv and
linear ``weight``; biases and batch-norm parameters are never pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the networks (torch) load when a model is built, not when the plugin loads
    from torch import nn

#: The paper's Conv-2/4/6 convolution plans: one entry per conv layer, "M" = 2x2 max-pool.
CONV_PLANS: dict[int, list] = {
    2: [64, 64, "M"],
    4: [64, 64, "M", 128, 128, "M"],
    6: [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}
#: OpenLTH's cifar_vgg_19 plan.
VGG19_PLAN: list = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
FC_WIDTHS = (256, 256)
INITS = ("kaiming_normal", "glorot")
BATCHNORMS = ("none", "affine", "non_affine")


def conv2(input_shape: tuple, num_classes: int, dropout: float = 0.0, batchnorm: str = "none", width: float = 1.0) -> nn.Module:
    """Conv-2 of the paper: conv 64,64,pool; fc 256,256,num_classes."""
    from lth_models.networks import ConvNet

    return ConvNet(input_shape, num_classes, CONV_PLANS[2], dropout=dropout, batchnorm=batchnorm, width_factor=width)


def conv4(input_shape: tuple, num_classes: int, dropout: float = 0.0, batchnorm: str = "none", width: float = 1.0) -> nn.Module:
    """Conv-4 of the paper: conv 64,64,pool,128,128,pool; fc 256,256,num_classes."""
    from lth_models.networks import ConvNet

    return ConvNet(input_shape, num_classes, CONV_PLANS[4], dropout=dropout, batchnorm=batchnorm, width_factor=width)


def conv6(input_shape: tuple, num_classes: int, dropout: float = 0.0, batchnorm: str = "none", width: float = 1.0) -> nn.Module:
    """Conv-6 of the paper: conv 64,64,pool,128,128,pool,256,256,pool; fc 256,256,num_classes."""
    from lth_models.networks import ConvNet

    return ConvNet(input_shape, num_classes, CONV_PLANS[6], dropout=dropout, batchnorm=batchnorm, width_factor=width)


def vgg19(input_shape: tuple, num_classes: int, init: str = "kaiming_normal") -> nn.Module:
    """VGG-19 for CIFAR-10 with batch norm, as OpenLTH's ``cifar_vgg_19``."""
    from lth_models.networks import VGG

    return VGG(input_shape, num_classes, VGG19_PLAN, init)


def resnet20(input_shape: tuple, num_classes: int, width: int = 16, init: str = "kaiming_normal") -> nn.Module:
    """ResNet-20 for CIFAR-10 (OpenLTH ``cifar_resnet_20_W``; ``width`` = W, the first stage's filters)."""
    from lth_models.networks import CifarResNet

    return CifarResNet(input_shape, num_classes, depth=20, width=width, init=init)
