"""Data sets, each loaded once into tensors, and data sets streamed from disk.

- ``image_folder`` and ``torchvision`` (any of torchvision's classification data sets by
  name) stream from disk through ``DataLoader`` workers: :mod:`lth_datasets.folders`.

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits, shipped inside the
  package (offline, no download). Fixed stratified 80/20 train/test split.
- ``mnist``, ``fashion_mnist``, ``cifar10``: through torchvision. ``root`` is where the
  files live (default ``$LTH_DATA`` or ``~/.cache/lth/data``); ``download`` fetches them
  when missing and online. ``fashion_mnist`` first looks for Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).

Inputs are standardised with the training split's statistics (per channel for CIFAR-10).
MNIST, Fashion-MNIST and CIFAR-10 are bytes, and stay bytes: their bundles hold ``uint8``
images with a :class:`lth_core.Normalization` the loaders apply to each batch (a quarter of
the memory of float32 copies, the same values). Their IDX files are read directly when
present (no torchvision, no copy); torchvision downloads them, and reads anything unusual.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from lth_core import LthError, atomic_path, hookimpl
from lth_datasets.folders import image_folder, torchvision_dataset

if TYPE_CHECKING:  # loading the plugin imports no torch: `lth plugins` and `lth --help` stay fast
    import torch

    from lth_core import DataBundle

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_root() -> Path:
    return Path(os.environ.get("LTH_DATA", Path.home() / ".cache" / "lth" / "data"))


def _standardise(train: torch.Tensor, test: torch.Tensor, dims: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def digits() -> DataBundle:
    """scikit-learn's handwritten digits: 1x8x8 images, 10 classes."""
    import torch

    from lth_core import DataBundle
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2, random_state=0, stratify=d.target)
    xtr, xte = _standardise(x[tr], x[te], dims=(0, 1, 2, 3))
    return DataBundle(xtr, y[tr], xte, y[te], 10, "digits")


#: Where torchvision keeps each data set's files under ``root``.
TORCHVISION_FILES = {"MNIST": "MNIST/raw/ (the four IDX files)", "FashionMNIST": "FashionMNIST/raw/ (the four IDX files)",
                     "CIFAR10": "cifar-10-batches-py/"}


def _torchvision_set(cls_name: str, root: Path, download: bool):
    """The train and test sets of torchvision's ``cls_name`` under ``root``.

    Whatever goes wrong becomes one line naming the folder tried, why it failed and what
    to do: torchvision's own messages span lines and suggest ``download=True`` even when
    the download is what failed.
    """
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
    except Exception as exc:  # noqa: BLE001 - missing, unreadable or undownloadable: the user's files or network
        raise LthError(f"{cls_name} could not be loaded from {root}: {_why(root, download, exc)}; "
                       f"{_remedy(cls_name, download)}") from exc


def _why(root: Path, download: bool, exc: Exception) -> str:
    """What went wrong, in a few words, from the folder and torchvision's exception."""
    if root.exists() and not root.is_dir():
        return "it is a file, not a folder"
    if not download and isinstance(exc, RuntimeError) and "not found" in str(exc):
        where = "no such folder" if not root.exists() else "the folder does not hold its files"
        return f"{where} and data.download is false"
    if download and (isinstance(exc, OSError) or "Error downloading" in str(exc)):
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return f"its files are not there and downloading them failed ({lines[-1] if lines else type(exc).__name__})"
    detail = " ".join(str(exc).split())
    return f"its files are unreadable ({type(exc).__name__}{': ' + detail if detail else ''})"


def _remedy(cls_name: str, download: bool) -> str:
    """What to do: Debian's package (Fashion-MNIST), a folder with torchvision's files, or the network."""
    online = "run once with network access" + ("" if download else " and data.download: true")
    folder = f"set data.root to a folder holding torchvision's {TORCHVISION_FILES[cls_name]}"
    if cls_name != "FashionMNIST":
        return f"{folder}, or {online}"
    if (DEBIAN_FASHION_MNIST / f"{IDX_FILES[0]}.gz").is_file():
        debian = f"leave data.root unset to use Debian's copy in {DEBIAN_FASHION_MNIST}"
    else:
        debian = f"install Debian's dataset-fashion-mnist package (apt install dataset-fashion-mnist, read from {DEBIAN_FASHION_MNIST} when data.root is unset)"
    return f"{debian}, {folder}, or {online}"


def read_idx(path: Path, ndim: int) -> torch.Tensor | None:
    """An IDX file of unsigned bytes (``ndim`` dimensions) as a ``uint8`` tensor read
    straight into its own memory, or None when the file is not one (torchvision then
    reads it and says what is wrong)."""
    import numpy as np
    import torch

    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
        if len(head) < 4 + 4 * ndim or head[:4] != bytes((0, 0, 0x08, ndim)):
            return None
        shape = struct.unpack(f">{ndim}i", head[4:])
        data = np.fromfile(path, dtype=np.uint8, offset=len(head))
    except OSError:
        return None
    if data.size != int(np.prod(shape)):
        return None
    return torch.from_numpy(data).view(*shape)


def _idx_splits(cls_name: str, root: Path, download: bool) -> tuple:
    """(train images, train labels, test images, test labels) of an MNIST-like data set:
    ``uint8`` images and int64 labels, read directly when the four files are well formed."""
    raw = root / cls_name / "raw"
    if raw.is_dir():
        parts = [read_idx(raw / f, 3 if "images" in f else 1) for f in IDX_FILES]
        if all(p is not None for p in parts):
            return parts[0], parts[1].long(), parts[2], parts[3].long()
    train, test = _torchvision_set(cls_name, root, download)
    return train.data, train.targets.long(), test.data, test.targets.long()


def _grey_bundle(cls_name: str, name: str, root: Path, download: bool) -> DataBundle:
    """28x28 greyscale bytes, standardised over the whole training split (per batch)."""
    from lth_core import DataBundle, Normalization

    xtr, ytr, xte, yte = _idx_splits(cls_name, root, download)
    xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)
    return DataBundle(xtr, ytr, xte, yte, 10, name, Normalization.of(xtr, 255.0))


def mnist(root: str = "", download: bool = True) -> DataBundle:
    """MNIST (60k/10k, 1x28x28) through torchvision."""
    return _grey_bundle("MNIST", "mnist", Path(root) if root else default_root(), download)


def prepare_debian_fashion_mnist(source: Path, root: Path) -> bool:
    """Unpack Debian's gzipped IDX files where torchvision expects them; True if done."""
    if not all((source / f"{f}.gz").is_file() for f in IDX_FILES):
        return False
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        target = raw / f
        if not target.is_file():
            with atomic_path(target) as tmp, gzip.open(source / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return True


def fashion_mnist(root: str = "", download: bool = True) -> DataBundle:
    """Fashion-MNIST (60k/10k, 1x28x28) through torchvision; Debian's copy when present."""
    where = Path(root) if root else default_root()
    if not root and not (where / "FashionMNIST" / "raw" / IDX_FILES[0]).is_file():
        prepare_debian_fashion_mnist(DEBIAN_FASHION_MNIST, where)
    return _grey_bundle("FashionMNIST", "fashion_mnist", where, download)


def cifar10(root: str = "", download: bool = True) -> DataBundle:
    """CIFAR-10 (50k/10k, 3x32x32) through torchvision, standardised per channel."""
    import torch

    from lth_core import DataBundle, Normalization

    train, test = _torchvision_set("CIFAR10", Path(root) if root else default_root(), download)
    # The images as torchvision holds them (N, 32, 32, 3), seen channels first: no copy.
    xtr = torch.from_numpy(train.data).permute(0, 3, 1, 2)
    xte = torch.from_numpy(test.data).permute(0, 3, 1, 2)
    norm = Normalization.of(xtr, 255.0, per_channel=True)
    return DataBundle(xtr, torch.tensor(train.targets), xte, torch.tensor(test.targets), 10, "cifar10", norm)


@hookimpl
def register_datasets(register):
    register("digits", digits)
    register("mnist", mnist)
    register("fashion_mnist", fashion_mnist)
    register("cifar10", cifar10)
    register("image_folder", image_folder)
    register("torchvision", torchvision_dataset)
