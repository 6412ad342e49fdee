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

from collections import OrderedDict

import torch
import torch.nn.functional as F
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


def _check_image_shape(input_shape: tuple, model: str) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"{model} needs image inputs shaped (channels, height, width), got {shape}")
    return shape  # type: ignore[return-value]


class ConvNet(nn.Sequential):
    """The paper's Conv-N: named layers ``conv1``.., ``pool1``.., ``flatten``, ``fc1``..``fc3``."""

    def __init__(self, input_shape: tuple, num_classes: int, plan: list, fc_widths: tuple = FC_WIDTHS, dropout: float = 0.0,
                 batchnorm: str = "none", width_factor: float = 1.0):
        channels, height, width = _check_image_shape(input_shape, f"conv{sum(1 for s in plan if s != 'M')}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if batchnorm not in BATCHNORMS:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORMS)}, got {batchnorm!r}")
        if not width_factor > 0:
            raise ValueError(f"width must be > 0, got {width_factor}")
        plan = [s if s == "M" else max(1, round(s * width_factor)) for s in plan]
        fc_widths = tuple(max(1, round(w * width_factor)) for w in fc_widths)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        n_conv = n_pool = 0
        for spec in plan:
            if spec == "M":
                n_pool += 1
                layers[f"pool{n_pool}"] = nn.MaxPool2d(kernel_size=2, stride=2)
                height, width = height // 2, width // 2
            else:
                n_conv += 1
                layers[f"conv{n_conv}"] = nn.Conv2d(channels, spec, kernel_size=3, padding=1)
                if batchnorm != "none":
                    layers[f"bn{n_conv}"] = nn.BatchNorm2d(spec, affine=batchnorm == "affine")
                layers[f"relu{n_conv}"] = nn.ReLU()
                channels = spec
        if height < 1 or width < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for {n_pool} 2x2 max-pools")
        layers["flatten"] = nn.Flatten()
        sizes = [channels * height * width, *fc_widths, num_classes]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            if dropout:
                layers[f"dropout{i}"] = nn.Dropout(dropout)
            layers[f"fc{i}"] = nn.Linear(a, b)
            if i < len(sizes) - 1:
                layers[f"fc_relu{i}"] = nn.ReLU()
        super().__init__(layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)


def conv2(input_shape: tuple, num_classes: int, dropout: float = 0.0, batchnorm: str = "none", width: float = 1.0) -> nn.Module:
    """Conv-2 of the paper: conv 64,64,pool; fc 256,256,num_classes."""
    return ConvNet(input_shape, num_classes, CONV_PLANS[2], dropout=dropout, batchnorm=batchnorm, width_factor=width)


def conv4(input_shape: tuple, num_classes: int, dropout: float = 0.0, batchnorm: str = "none", width: float = 1.0) -> nn.Module:
    """Conv-4 of the paper: conv 64,64,pool,128,128,pool; fc 256,256,num_classes."""
    return ConvNet(input_shape, num_classes, CONV_PLANS[4], dropout=dropout, batchnorm=batchnorm, width_factor=width)


def conv6(input_shape: tuple, num_classes: int, dropout: float = 0.0, batchnorm: str = "none", width: float = 1.0) -> nn.Module:
    """Conv-6 of the paper: conv 64,64,pool,128,128,pool,256,256,pool; fc 256,256,num_classes."""
    return ConvNet(input_shape, num_classes, CONV_PLANS[6], dropout=dropout, batchnorm=batchnorm, width_factor=width)


def _initialise(model: nn.Module, init: str) -> None:
    """OpenLTH's initialisers: conv/linear weights by ``init``, BN weight U(0,1), biases 0."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "kaiming_normal":
                nn.init.kaiming_normal_(m.weight)
            else:
                nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


class VGGConvModule(nn.Module):
    """conv 3x3 (padding 1) -> batch norm -> ReLU, named ``conv`` and ``bn`` as OpenLTH."""

    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    """OpenLTH's CIFAR VGG: ``layers`` (conv modules and max-pools), global avg pool, ``fc``."""

    def __init__(self, input_shape: tuple, num_classes: int, plan: list, init: str = "kaiming_normal"):
        super().__init__()
        channels, height, width = _check_image_shape(input_shape, "vgg")
        layers: list[nn.Module] = []
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                height, width = height // 2, width // 2
            else:
                layers.append(VGGConvModule(channels, spec))
                channels = spec
        if height < 1 or width < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for VGG's max-pools")
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _initialise(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


def vgg19(input_shape: tuple, num_classes: int, init: str = "kaiming_normal") -> nn.Module:
    """VGG-19 for CIFAR-10 with batch norm, as OpenLTH's ``cifar_vgg_19``."""
    return VGG(input_shape, num_classes, VGG19_PLAN, init)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; identity shortcut, or 1x1 conv (stride 2) + BN when the shape changes."""

    def __init__(self, f_in: int, f_out: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(f_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """OpenLTH's CIFAR ResNet: ``conv``/``bn`` stem, ``blocks``, global average pool, ``fc``."""

    def __init__(self, input_shape: tuple, num_classes: int, depth: int = 20, width: int = 16, init: str = "kaiming_normal"):
        super().__init__()
        channels, _, _ = _check_image_shape(input_shape, "resnet")
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (8, 14, 20, ...), got {depth}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, current = [], width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for b in range(per_stage):
                blocks.append(BasicBlock(current, filters, downsample=stage > 0 and b == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current, num_classes)
        _initialise(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(input_shape: tuple, num_classes: int, width: int = 16, init: str = "kaiming_normal") -> nn.Module:
    """ResNet-20 for CIFAR-10 (OpenLTH ``cifar_resnet_20_W``; ``width`` = W, the first stage's filters)."""
    return CifarResNet(input_shape, num_classes, depth=20, width=width, init=init)
