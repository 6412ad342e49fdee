"""Data sets that stream from disk: a folder of images per class, torchvision's by name.

Both return an :class:`lth_core.DatasetBundle` (torch ``Dataset``s the core feeds through
``DataLoader`` workers): the images are read when a batch needs them, so the data set
may be larger than memory.

- ``image_folder``: torchvision's ``ImageFolder`` layout, one sub-folder of images per
  class (PNG, JPEG, ...): ``root/train/<class>/*`` and ``root/test/<class>/*`` (or
  ``root/val/``) give the official split; a ``root/<class>/*`` without them is split by a
  fixed seed, ``test_size`` of it held out for testing. Images are decoded to ``uint8``
  and resized to ``image_size`` x ``image_size`` (torchvision transforms v2, antialiased;
  images already of that size are left as they are), ``channels`` 1 or 3 (0: as the first
  training image).
- ``torchvision``: any of torchvision's classification data sets by class name
  (``dataset: CIFAR100``, ``SVHN``, ``STL10``, ``KMNIST``, ...), read from ``root``
  (default ``$LTH_DATA``), downloaded into it when ``download`` and online; absent and
  offline is one line naming the folder and what to do. ``image_size`` 0 keeps the data
  set's own size.

Both are standardised (per channel for colour) with the statistics of the training
images, computed over all of them up to ``stats_images`` (default 10,000) and over that
many drawn with a fixed seed beyond, as a :class:`lth_core.Normalization` applied per
batch: the same values as the tensor path gives the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lth_core import LthError

if TYPE_CHECKING:
    from lth_core import DatasetBundle

#: Test-split folder names looked for under an image folder's root, in order.
TEST_FOLDERS = ("test", "val")


def _check_sizes(image_size: int, stats_images: int, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if isinstance(image_size, bool) or not low <= image_size <= 8192:
        raise LthError(f"data.image_size is {image_size!r}; expected a side in pixels, {low}..8192"
                       f"{' (0: the images as they are)' if allow_zero else ''}")
    if isinstance(stats_images, bool) or not 1 <= stats_images <= 10**9:
        raise LthError(f"data.stats_images is {stats_images!r}; expected a number of images >= 1")


def image_folder(root: str, image_size: int, test_size: float = 0.2, channels: Literal[0, 1, 3] = 0,
                 stats_images: int = 10_000) -> DatasetBundle:
    """A folder of images per class (see the module), streamed from disk."""
    _check_sizes(image_size, stats_images, allow_zero=False)
    if not 0.0 < test_size < 1.0:
        raise LthError(f"data.test_size is {test_size!r}; expected a fraction in (0, 1) of the images held out for testing")
    where = Path(root).expanduser()
    if not where.exists():
        raise LthError(f"data.root {str(where)!r} does not exist; set it to a folder with one sub-folder of images per class "
                       "(or train/ and test/ folders of such sub-folders)")
    if not where.is_dir():
        raise LthError(f"data.root {str(where)!r} is a file, not a folder; set it to a folder with one sub-folder of images per class")
    from lth_datasets.images import folder_bundle

    test = next((where / t for t in TEST_FOLDERS if (where / "train").is_dir() and (where / t).is_dir()), None)
    return folder_bundle(where, test, image_size, test_size, channels, stats_images)


def torchvision_dataset(dataset: str, root: str = "", download: bool = True, image_size: int = 0,
                        stats_images: int = 10_000) -> DatasetBundle:
    """torchvision's classification data set ``dataset`` (its class name), streamed."""
    _check_sizes(image_size, stats_images, allow_zero=True)
    from lth_datasets import default_root
    from lth_datasets.images import torchvision_bundle

    return torchvision_bundle(dataset, Path(root).expanduser() if root else default_root(), download, image_size, stats_images)
