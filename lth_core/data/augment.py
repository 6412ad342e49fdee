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
and flipped where the batch is (the accelerator, when the data was placed there), by one
``gather`` per crop and one ``where`` per flip over the whole batch: no per-image Python.
Batches are augmented as stored, before :class:`~lth_core.data.bundle.Normalization`: a
byte image is padded with black, as torchvision's ``RandomCrop(padding=4)`` pads a PIL
image; a float32 data set is padded with zeros (its mean when it is standardised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        for (name, opt), drawn in zip(self.ops, parts):
            d = torch.cat(drawn)[: x.shape[0]].to(x.device, non_blocking=True)
            x = _crop(x, d, opt["padding"]) if name == "random_crop" else _flip(x, d)
        return x

    def describe(self) -> str:
        """``random_crop(padding=4), hflip(p=0.5)``: for messages and benchmarks."""
        return ", ".join(f"{n}({', '.join(f'{k}={v}' for k, v in o.items())})" for n, o in self.ops)


def _crop(x: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Each image padded by ``padding`` zeros, then its window at ``offsets`` (row, column)
    of its own size: two gathers over the batch, on ``x``'s device."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def _flip(x: Tensor, flips: Tensor) -> Tensor:
    """The images where ``flips`` is True mirrored left to right."""
    return torch.where(flips.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)

