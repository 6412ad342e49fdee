"""The networks of :mod:`lth_models` and :mod:`lth_models.convnets` as ``nn.Module`` s.

Imported when a model is built: the factories (and their options) are torch-free, so
loading the plugin for ``lth plugins`` or ``lth --help`` does not import torch.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from lth_models.convnets import BATCHNORMS, FC_WIDTHS, INITS


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
