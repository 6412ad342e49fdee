"""Augmentation of training batches on the tensor path, drawn per step (``data.augment``).

The CIFAR-10 lotteries of the papers train on random crops (padding 4) and horizontal
flips; OpenLTH draws them per image inside its data set. Here they are drawn per *step*:
the crop offsets and flips of step ``s`` come from a CPU generator seeded with
``(seed, "augment", s)`` (:func:`lth_core.seeds.derive_seed`), whatever ran before. So a
run resumed at step ``s`` from a checkpoint sees exactly the batches an uninterrupted run
saw (the data order is already a function of the step), the same holds one step per call
or 50, and under data parallel each process takes its share of the draws of the whole
batch, as it takes its share of the batch.

The draws are a few bytes per image, made on the CPU; the images themselves are cropped
and flipped where the batch is (the accelerator, when the data was placed there). Each op
only moves a map of where every output pixel comes from (rows and columns per image), and
one ``gather`` over the whole batch makes the images: no per-image Python, one pass over
the pixels whatever the list (3x faster than a gather per crop and a ``where`` per flip).
Batches are augmented as stored, before :class:`~lth_core.data.bundle.Normalization`: a
byte image is padded with black, as torchvision's ``RandomCrop(padding=4)`` pads a PIL
image; a float32 data set is padded with zeros (its mean when it is standardised).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lth_core.config.schema import AUGMENTATIONS
from lth_core.errors import LthError
from lth_core.seeds import derive_seed


class Augmentation:
    """The recipe's ``data.augment`` list, applied in order to each training batch.

    ``ops`` are ``(name, options)`` with every option filled in from the schema's defaults.
    """

    def __init__(self, ops: list[tuple[str, dict]]):
        self.ops = ops

    @classmethod
    def of(cls, spec: list | None) -> "Augmentation | None":
        """The augmentation a recipe's ``data.augment`` declares, or None for none."""
        if not spec:
            return None
        ops = []
        for item in spec:
            item = {"name": item} if isinstance(item, str) else item
            ops.append((item["name"], AUGMENTATIONS[item["name"]].model_validate(item).model_dump(exclude={"name"})))
        return cls(ops)

    def check(self, input_shape: tuple[int, ...], source: str) -> None:
        """Crops and flips need images, ``(channels, height, width)`` per example."""
        if len(input_shape) != 3:
            raise LthError(f"data.augment ({', '.join(n for n, _ in self.ops)}) needs images shaped (channels, height, width); "
                           f"{source} gives inputs shaped {tuple(input_shape)}: remove data.augment or use an image data set")

    def draws(self, seed: int, step: int, batch: int, height: int, width: int) -> list[Tensor]:
        """Step ``step``'s random numbers for ``batch`` images, one tensor per op (CPU)."""
        g = torch.Generator().manual_seed(derive_seed(seed, "augment", step))
        out = []
        for name, opt in self.ops:
            if name == "random_crop":
                out.append(torch.randint(0, 2 * opt["padding"] + 1, (batch, 2), generator=g))
            else:  # hflip
                out.append(torch.rand(batch, generator=g) < opt["p"])
        return out

    def __call__(self, x: Tensor, seed: int, first_step: int, batch_size: int, share: tuple[int, int] = (0, 1)) -> Tensor:
        """``x`` (consecutive steps' batches from ``first_step`` on, ``batch_size`` images a
        step, or this process's ``share = (rank, world)`` of each) augmented, on its device."""
        world = share[1]
        per_step = len(torch.tensor_split(torch.empty(batch_size), world)[share[0]]) if world > 1 else batch_size
        steps = max(1, -(-x.shape[0] // per_step))
        parts: list[list[Tensor]] = [[] for _ in self.ops]
        for s in range(steps):
            for i, d in enumerate(self.draws(seed, first_step + s, batch_size, x.shape[-2], x.shape[-1])):
                parts[i].append(torch.tensor_split(d, world)[share[0]] if world > 1 else d)
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        rows = torch.arange(h, device=x.device).expand(n, h)  # where each output pixel comes from: a map per image
        cols = torch.arange(w, device=x.device).expand(n, w)
        for (name, opt), drawn in zip(self.ops, parts):
            d = torch.cat(drawn)[:n].to(x.device, non_blocking=True)
            if name == "random_crop":
                rows, cols = _shift(rows, d[:, 0] - opt["padding"], h), _shift(cols, d[:, 1] - opt["padding"], w)
            else:
                cols = torch.where(d.view(-1, 1), cols.flip(-1), cols)
        return _gather(x, rows, cols)

    def describe(self) -> str:
        """``random_crop(padding=4), hflip(p=0.5)``: for messages and benchmarks."""
        return ", ".join(f"{n}({', '.join(f'{k}={v}' for k, v in o.items())})" for n, o in self.ops)


def _shift(index: Tensor, offset: Tensor, size: int) -> Tensor:
    """A crop's map along one axis: output position ``i`` of image ``k`` shows what position
    ``i + offset[k]`` showed, or padding (-1) outside the image."""
    at = torch.arange(size, device=index.device) + offset.view(-1, 1)
    inside = (at >= 0) & (at < size)
    return torch.where(inside, index.gather(1, at.clamp(0, size - 1)), -1)


def _gather(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The images as the maps say, in one gather over the batch: every crop and flip of the
    list at once (padding is a zero appended to each channel)."""
    n, c, h, w = x.shape
    flat = torch.cat([x.reshape(n, c, h * w), x.new_zeros(n, c, 1)], dim=2)
    index = torch.where((rows.view(n, h, 1) < 0) | (cols.view(n, 1, w) < 0), h * w, rows.view(n, h, 1) * w + cols.view(n, 1, w))
    return flat.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
