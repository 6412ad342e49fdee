"""Any torchvision classification model by name: ``model: {name: torchvision, arch: resnet18}``.

The field's everyday baselines (torchvision's ResNets, VGGs, MobileNets, EfficientNets,
...) built by ``torchvision.models.get_model(arch, weights=None, num_classes=...)``: from
scratch, with torchvision's own initialisation under the seed lth sets, and the output
layer sized to the data set. Every conv and linear weight is prunable, as for the bundled
networks; batch-norm parameters and biases are not. Parameter names are torchvision's
(``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.weight`` for a ResNet), so
``lottery.layer_rates`` names them as torchvision does (``fc: 0`` keeps a ResNet's output
layer dense; ``last`` names the output layer of any of them).

``stem``: torchvision's networks are built for 224x224 ImageNet images and downsample by 4
in their first two layers, which leaves little of a 32x32 image. ``small`` adapts the stem
as the CIFAR versions of these networks do: a ResNet-style stem (``conv1`` 7x7 stride 2,
then a 3x3 max-pool) becomes a 3x3 stride-1 convolution with no max-pool (He et al.
2016's CIFAR stem; the rest of the network is torchvision's); any other network's first
convolution gets stride 1 (its kernel and padding unchanged), unless it is a patch
embedding (kernel = stride: ViT, Swin), which is left as it is. ``imagenet`` leaves the stem
as torchvision builds it; ``auto`` (the default) is ``small`` for images of at most 64
pixels a side and ``imagenet`` otherwise. Whatever the stem, the first convolution takes
the data set's number of channels (1 for greyscale images). ViTs are built for the data
set's image size; Inception v3 and GoogLeNet without their auxiliary classifiers.

``weights``: pretrained weights come only from a local file the user names, never from
the network: a ``.safetensors`` file (preferred: no code can run when it loads), or a
``.pt``/``.pth`` state dict read with ``torch.load(weights_only=True)`` (torchvision's own
weight files are such state dicts). Every tensor is loaded into the network; the layers lth
adapted (the stem, an output layer of another number of classes) keep their fresh weights
where the file's shapes differ. Keys the network does not have, or lacks, are one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lth_core import LthError, choices

if TYPE_CHECKING:
    from torch import nn

#: Side (pixels) at or under which ``stem: auto`` adapts the stem to small images.
SMALL_IMAGE = 64


def torchvision_model(input_shape: tuple, num_classes: int, arch: str, stem: Literal["auto", "imagenet", "small"] = "auto",
                      weights: str = "") -> nn.Module:
    """torchvision's classification network ``arch``, from scratch (or from the local file
    ``weights``), with ``num_classes`` outputs and its stem fitted to the images."""
    import torchvision.models as tvm

    if len(input_shape) != 3:
        raise LthError(f"model torchvision needs images shaped (channels, height, width), the data set gives {tuple(input_shape)}")
    known = tvm.list_models(module=tvm)
    if arch not in known:
        raise LthError(f"model.arch {arch!r} is not one of torchvision's classification models; valid: {choices(known)}")
    channels, height, width = input_shape
    extra = {"aux_logits": False, "init_weights": True} if arch in ("inception_v3", "googlenet") else {}
    if arch.startswith("vit_"):
        extra["image_size"] = height
    model = tvm.get_model(arch, weights=None, num_classes=num_classes, **extra)
    small = stem == "small" or (stem == "auto" and max(height, width) <= SMALL_IMAGE)
    _fit_stem(model, channels, small)
    if weights:
        load_weights(model, Path(weights).expanduser())
    return model


def _first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise LthError("model torchvision: this network has no 2-D convolution to take the images")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _fit_stem(model: nn.Module, channels: int, small: bool) -> None:
    """The first convolution takes ``channels``; with ``small``, the CIFAR stem (see the module)."""
    from torch import nn

    name, conv = _first_conv(model)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    resnet_stem = small and name == "conv1" and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d)
    if resnet_stem:
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
        model.maxpool = nn.Identity()
    elif small and conv.kernel_size != conv.stride:  # not a patch embedding (ViT, Swin): those keep their stride
        stride = (1, 1)
    if (channels, kernel, stride, padding) == (conv.in_channels, conv.kernel_size, conv.stride, conv.padding):
        return
    new = nn.Conv2d(channels, conv.out_channels, kernel, stride, padding, conv.dilation, conv.groups, conv.bias is not None)
    if kernel == conv.kernel_size and channels == conv.in_channels:
        new.load_state_dict(conv.state_dict())  # only the stride changed: keep torchvision's init
    else:  # a new kernel: He initialisation, as torchvision's ResNets initialise theirs
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    _replace(model, name, new)


def read_weights(path: Path) -> dict:
    """The state dict in ``path``: safetensors, or a torch state dict loaded with
    ``weights_only=True`` (no pickled code runs). One line for anything else."""
    import torch

    if not path.exists():
        raise LthError(f"model.weights {str(path)!r} does not exist; name a local .safetensors (or .pt/.pth state dict) file")
    if not path.is_file():
        raise LthError(f"model.weights {str(path)!r} is a folder, not a file; name a .safetensors (or .pt/.pth) file in it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file, another format, pickled objects
        detail = " ".join(str(exc).split())[:200]
        raise LthError(f"model.weights {str(path)!r} could not be read as a state dict ({type(exc).__name__}: {detail}); "
                       "save it with safetensors.torch.save_file(model.state_dict(), PATH)") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LthError(f"model.weights {str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``: every key must match; tensors of another shape (the
    adapted stem, another number of classes) leave the fresh ones in place."""
    import torch

    state, own = read_weights(path), model.state_dict()
    unknown, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
    if unknown or missing:
        what = [f"{len(unknown)} key(s) this network does not have ({', '.join(unknown[:3])})" if unknown else "",
                f"no value for {len(missing)} of its key(s) ({', '.join(missing[:3])})" if missing else ""]
        raise LthError(f"model.weights {str(path)!r} does not fit this network: {'; '.join(w for w in what if w)}; "
                       "is it a state dict of the same arch?")
    with torch.no_grad():
        for key, value in state.items():
            if value.shape == own[key].shape:
                own[key].copy_(value)
