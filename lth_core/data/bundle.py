"""What a data-set plugin returns: the official train and test split as tensors, checked.

:meth:`DataBundle.check` refuses what would otherwise fail later, deep in torch or
silently; :func:`select_classes` keeps a recipe's ``data.classes``.
"""


from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lth_core.errors import LthError, PluginError


@dataclass
class DataBundle:
    """What a data-set plugin returns."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    name: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def check(self, source: str) -> None:
        """Refuse what would otherwise fail later, deep in torch or silently: ``source``
        (the data set and its plugin) is named with what it returned and what was expected."""
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PluginError(f"{source} returned num_classes={n!r}, expected a positive int")
        for part in ("train", "test"):
            _check_split(self, part, source)
        if self.test_x.shape[1:] != self.train_x.shape[1:]:
            raise PluginError(f"{source} returned test inputs shaped {tuple(self.test_x.shape[1:])} per example, "
                              f"expected the train inputs' {tuple(self.train_x.shape[1:])}")


def _check_split(bundle: DataBundle, part: str, source: str) -> None:
    """One split: float32 finite inputs, as many int64 labels in ``0..num_classes-1``."""
    x, y = getattr(bundle, f"{part}_x"), getattr(bundle, f"{part}_y")
    for key, t in ((f"{part}_x", x), (f"{part}_y", y)):
        if not isinstance(t, Tensor):
            raise PluginError(f"{source} returned {key} as {type(t).__name__}, expected a torch.Tensor")
    if x.ndim < 1 or x.shape[0] == 0:
        raise PluginError(f"{source} returned an empty {part} split ({part}_x shaped {tuple(x.shape)}), expected examples")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise PluginError(f"{source} returned a misaligned {part} split: {part}_x shaped {tuple(x.shape)}, {part}_y shaped "
                          f"{tuple(y.shape)}; expected one label per input ({x.shape[0]},)")
    if x.dtype != torch.float32 or y.dtype != torch.long:
        raise PluginError(f"{source} returned {part} inputs as {x.dtype} and labels as {y.dtype}, "
                          "expected torch.float32 inputs and torch.int64 labels")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise PluginError(f"{source} returned {bad} NaN or infinite values in {part}_x, expected finite inputs")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= bundle.num_classes:
        raise PluginError(f"{source} returned {part} labels {low}..{high}, expected 0..{bundle.num_classes - 1} "
                          f"(num_classes={bundle.num_classes})")


def select_classes(bundle: DataBundle, classes: list[int] | None) -> DataBundle:
    """Keep only ``classes`` (recipe ``data.classes``), relabelled by their position in the list.

    A ticket trained on classes ``[0, 1, 2, 3, 4]`` has a 5-unit head; the order of the list
    is the order of the output units, so ``[5, 6, 7, 8, 9, 0, ...]`` puts class 5 on unit 0.
    Inputs are not re-normalised: a subset sees exactly the tensors the whole data set has.
    """
    if classes is None:
        return bundle
    bad = [c for c in classes if not 0 <= c < bundle.num_classes]
    if bad:
        raise LthError(
            f"data.classes names {bad}, which data set {bundle.name or '?'} does not have (its classes are 0..{bundle.num_classes - 1})"
        )
    lookup = torch.full((bundle.num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))

    def keep(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        sel = lookup[y] >= 0
        return x[sel], lookup[y[sel]]

    train_x, train_y = keep(bundle.train_x, bundle.train_y)
    test_x, test_y = keep(bundle.test_x, bundle.test_y)
    return DataBundle(train_x, train_y, test_x, test_y, len(classes), bundle.name)


