"""The torch side of :mod:`lth_datasets.folders`: datasets of ``uint8`` image tensors.

Imported when a streaming data set is loaded, not when the plugin is (``lth plugins``
imports no torch). Items are ``(uint8 image (C, H, W), int label)``; decoding and resizing
use torchvision (``torchvision.io`` and transforms v2), deterministically, so a worker
returns the same tensor for the same index every time.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from lth_core import DatasetBundle, LthError, Normalization

#: Split arguments of torchvision's classification data sets that take ``split=``
#: (the others take ``train=True/False``): (training split, test split).
SPLITS = {"SVHN": ("train", "test"), "STL10": ("train", "test"), "Food101": ("train", "test"), "Flowers102": ("train", "test"),
          "DTD": ("train", "test"), "GTSRB": ("train", "test"), "FGVCAircraft": ("trainval", "test"),
          "StanfordCars": ("train", "test"), "OxfordIIITPet": ("trainval", "test"), "Country211": ("train", "test"),
          "PCAM": ("train", "test"), "RenderedSST2": ("train", "test"), "ImageNet": ("train", "val"), "Imagenette": ("train", "val")}
#: torchvision's classification data sets with ``train=True/False``.
TRAIN_FLAG = ("MNIST", "FashionMNIST", "KMNIST", "QMNIST", "CIFAR10", "CIFAR100", "USPS")


class Sized:
    """An image as ``uint8`` ``(channels, size, size)``: resized (antialiased) unless it
    already is that size (``size`` 0: as it is)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Tensor) -> Tensor:
        if self.size and tuple(img.shape[-2:]) != (self.size, self.size):
            img = v2.functional.resize(img, [self.size, self.size], antialias=True)
        return img


class Decode:
    """An image file as a ``uint8`` tensor of 1 (grey) or 3 (RGB) channels."""

    def __init__(self, channels: int):
        self.mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB

    def __call__(self, path: str) -> Tensor:
        return decode_image(path, mode=self.mode)


class Part(Dataset):
    """Some examples of a dataset (``index``), keeping its ``targets``."""

    def __init__(self, base: Dataset, index: list[int]):
        self.base, self.index = base, index
        self.targets = [base.targets[i] for i in index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.index[i]]


class Converted(Dataset):
    """A torchvision data set whose items are PIL images, as ``uint8`` tensors of its
    first image's channels, resized; ``targets`` when the data set keeps its labels."""

    def __init__(self, base: Any, size: int, mode: str):
        self.base, self.sized, self.mode = base, Sized(size), mode
        labels = next((getattr(base, a) for a in ("targets", "labels", "_labels") if hasattr(base, a)), None)
        self.targets = [int(t) for t in labels] if labels is not None and len(labels) == len(base) else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[i]
        img = v2.functional.pil_to_tensor(img.convert(self.mode)) if hasattr(img, "convert") else torch.as_tensor(img)
        return self.sized(img), int(label)


def statistics(ds: Dataset, limit: int) -> Normalization:
    """The standardisation of the training images: over all of them up to ``limit``,
    else over ``limit`` drawn with seed 0 (per channel for colour images)."""
    n = len(ds)
    index = range(n) if n <= limit else torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].tolist()
    x = torch.stack([ds[i][0] for i in index])
    return Normalization.of(x, 255.0, per_channel=x.shape[1] > 1)


def _image_folder(path: Path, size: int, channels: int) -> tvd.ImageFolder:
    try:
        return tvd.ImageFolder(str(path), loader=Decode(channels), transform=Sized(size))
    except (FileNotFoundError, OSError) as exc:
        detail = " ".join(str(exc).split())
        raise LthError(f"data.root {str(path)!r} holds no images in class folders ({detail}); expected one sub-folder of "
                       "images per class (PNG, JPEG, ...)") from exc


def _channels(folder: tvd.ImageFolder) -> int:
    """1 for a greyscale first image, else 3."""
    return 1 if decode_image(folder.samples[0][0], mode=ImageReadMode.UNCHANGED).shape[0] == 1 else 3


def folder_bundle(root: Path, test: Path | None, size: int, test_size: float, channels: int, stats_images: int) -> DatasetBundle:
    """``root/train`` and ``test`` as the official split, or ``root`` split by seed 0."""
    train_dir = root / "train" if test is not None else root
    train = _image_folder(train_dir, size, 3)  # one line if there is nothing to read
    channels = channels or _channels(train)
    train.loader = Decode(channels)
    if test is not None:
        test_set = _image_folder(test, size, channels)
        if test_set.classes != train.classes:
            raise LthError(f"data.root {str(root)!r}: {test.name}/ has classes {test_set.classes[:5]}..., train/ has "
                           f"{train.classes[:5]}...; both must hold the same class folders")
        train_set: Dataset = train
    else:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = max(1, round(test_size * len(train)))
        train_set, test_set = Part(train, sorted(perm[n_test:])), Part(train, sorted(perm[:n_test]))
    return DatasetBundle(train_set, test_set, len(train.classes), f"image_folder:{root.name}", statistics(train_set, stats_images))


def _open(cls: Any, name: str, root: Path, download: bool, split: str) -> Any:
    """``cls``'s ``split`` (0 train, 1 test) under ``root``, or one line saying why not."""
    from lth_datasets import _why

    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"download": download} if "download" in params else {}
    if name in SPLITS:
        kwargs["split"] = SPLITS[name][split]
    else:
        kwargs["train"] = split == 0
    try:
        return cls(str(root), **kwargs)
    except Exception as exc:  # noqa: BLE001 - missing, unreadable or undownloadable: the user's files or network
        online = "run once with network access" + ("" if download else " and data.download: true")
        if "download" not in params:
            online = f"download {name} yourself (torchvision cannot) and put it there"
        raise LthError(f"torchvision data set {name} could not be loaded from {root}: {_why(root, download, exc)}; "
                       f"set data.root to a folder holding torchvision's files for {name}, or {online}") from exc


def torchvision_bundle(name: str, root: Path, download: bool, size: int, stats_images: int) -> DatasetBundle:
    """torchvision's data set ``name`` (train and test split) as ``uint8`` tensors."""
    known = sorted((*TRAIN_FLAG, *SPLITS))
    if name not in known or not hasattr(tvd, name):
        raise LthError(f"data.dataset {name!r} is not one of torchvision's classification data sets lth reads; "
                       f"valid: {', '.join(n for n in known if hasattr(tvd, n))}")
    cls = getattr(tvd, name)
    train_base = _open(cls, name, root, download, 0)
    test_base = _open(cls, name, root, download, 1)
    first, _ = train_base[0]
    mode = "L" if getattr(first, "mode", "RGB") in ("L", "1", "I", "I;16") else "RGB"
    train, test = Converted(train_base, size, mode), Converted(test_base, size, mode)
    classes = getattr(train_base, "classes", None)
    if classes:
        num_classes = len(classes)
    elif train.targets is not None:
        num_classes = max(train.targets) + 1
    else:
        raise LthError(f"torchvision data set {name}: lth cannot tell its number of classes (no classes or targets)")
    return DatasetBundle(train, test, num_classes, name, statistics(train, stats_images))
