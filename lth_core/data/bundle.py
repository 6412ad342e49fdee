"""What a data-set plugin returns: the official train and test split as tensors, checked.

Inputs are float32, or, for data sets whose source is bytes (MNIST, Fashion-MNIST,
CIFAR-10), ``uint8`` with a :class:`Normalization` that the loaders apply per batch: the
data is held once, a quarter of its float32 size, and every batch holds exactly the
values that normalising the whole split at load would give. :meth:`DataBundle.check`
refuses what would otherwise fail later, deep in torch or silently;
:func:`select_classes` keeps a recipe's ``data.classes``.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lth_core.errors import LthError, PluginError


@dataclass(frozen=True)
class Normalization:
    """How ``uint8`` inputs become what the model sees: ``x.float() / scale``, then
    ``(x - mean) / std`` per channel (dimension 1; one value for every channel).

    ``mean`` and ``std`` are float32 values (as Python floats, which hold them exactly):
    :meth:`of` computes them as standardising the whole split in float32 did, and
    :meth:`apply` runs the same three float32 operations on each batch, so a batch holds
    bit for bit the values a float32 copy of the whole split would.
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _constants: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def of(cls, train_x: Tensor, scale: float, per_channel: bool = False) -> "Normalization":
        """The standardisation of ``train_x / scale``: mean and std over every example (and
        every position; per channel when ``per_channel``), std at least 1e-8.

        The statistics are float32 reductions over a float32 copy of ``train_x``, which
        exists only here (a transient 4x the bytes); a reduction over pieces would round
        differently, and the values must be those the whole split gives.
        """
        x = train_x.to(torch.float32).div_(scale)
        dims = (0, *range(2, x.ndim)) if per_channel else tuple(range(x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True).clamp_min(1e-8)
        del x
        return cls(float(scale), tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))

    def apply(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        """``x`` (``uint8``) as normalised float32, on ``x``'s device. The channels are the
        dimension after the ``batch_dims`` leading ones: 1 for a batch ``(B, C, ...)``, 2 for
        stacked trials' ``(K, B, C, ...)``."""
        out = x.to(torch.float32)
        scale, mean, std = self._on(out.device, out.ndim, batch_dims)
        return out.div_(scale).sub_(mean).div_(std)

    def _on(self, device: torch.device, ndim: int, batch_dims: int = 1) -> tuple[Any, Tensor, Tensor]:
        """The constants as tensors on ``device`` shaped to broadcast over the channel
        dimension (after ``batch_dims``), made once per device: no host-to-device copy per
        batch. On the CPU ``scale`` is the Python float that standardising at load divided
        by; elsewhere a device tensor, since CUDA multiplies by the reciprocal of a host
        scalar, which can round differently."""
        key = (str(device), ndim, batch_dims)
        if key not in self._constants:
            shape = ((1,) * batch_dims + (-1,) + (1,) * (ndim - batch_dims - 1)) if len(self.mean) > 1 else (1,) * ndim
            mean = torch.tensor(self.mean, dtype=torch.float32).view(shape).to(device)
            std = torch.tensor(self.std, dtype=torch.float32).view(shape).to(device)
            scale = self.scale if device.type == "cpu" else torch.tensor(self.scale, dtype=torch.float32, device=device)
            self._constants[key] = (scale, mean, std)
        return self._constants[key]

    def problem(self, channels: int | None) -> str | None:
        """What makes this normalization unusable for inputs with ``channels`` channels, or None."""
        values = (self.scale, *self.mean, *self.std)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            return f"a normalization with a non-finite or non-numeric value ({self!r})"
        if self.scale <= 0 or min(self.std, default=0.0) <= 0:
            return f"a normalization with scale {self.scale} and std {self.std}, expected positive values"
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, channels):
            return (f"a normalization with {len(self.mean)} mean(s) and {len(self.std)} std(s) for inputs with {channels} "
                    "channel(s), expected one value or one per channel (dimension 1) of each")
        return None


@dataclass
class DataBundle:
    """What a data-set plugin returns: inputs and labels of the official train and test split.

    Inputs are float32 (``normalization`` None), or ``uint8`` with a
    :class:`Normalization` that turns each batch into float32 when it is used.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    name: str = ""
    normalization: Normalization | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def normalise(self, x: Tensor) -> Tensor:
        """Stored inputs (some of ``train_x`` or ``test_x``) as the float32 the model sees."""
        return x if self.normalization is None else self.normalization.apply(x)

    def check(self, source: str) -> None:
        """Refuse what would otherwise fail later, deep in torch or silently: ``source``
        (the data set and its plugin) is named with what it returned and what was expected."""
        check_num_classes(self.num_classes, source)
        for part in ("train", "test"):
            _check_split(self, part, source)
        if self.test_x.shape[1:] != self.train_x.shape[1:]:
            raise PluginError(f"{source} returned test inputs shaped {tuple(self.test_x.shape[1:])} per example, "
                              f"expected the train inputs' {tuple(self.train_x.shape[1:])}")
        if self.normalization is not None:
            if not isinstance(self.normalization, Normalization):
                raise PluginError(f"{source} returned normalization as {type(self.normalization).__name__}, "
                                  "expected an lth_core.Normalization or None")
            problem = self.normalization.problem(self.train_x.shape[1] if self.train_x.ndim > 1 else None)
            if problem:
                raise PluginError(f"{source} returned {problem}")


def check_num_classes(n: Any, source: str) -> None:
    """A data set's ``num_classes`` is a positive int (in memory or streamed): the model's
    output size and the range every label is checked against."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PluginError(f"{source} returned num_classes={n!r}, expected a positive int")


def _check_split(bundle: DataBundle, part: str, source: str) -> None:
    """One split: float32 finite inputs (or uint8 with a normalization), as many int64
    labels in ``0..num_classes-1``."""
    x, y = getattr(bundle, f"{part}_x"), getattr(bundle, f"{part}_y")
    for key, t in ((f"{part}_x", x), (f"{part}_y", y)):
        if not isinstance(t, Tensor):
            raise PluginError(f"{source} returned {key} as {type(t).__name__}, expected a torch.Tensor")
    if x.ndim < 1 or x.shape[0] == 0:
        raise PluginError(f"{source} returned an empty {part} split ({part}_x shaped {tuple(x.shape)}), expected examples")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise PluginError(f"{source} returned a misaligned {part} split: {part}_x shaped {tuple(x.shape)}, {part}_y shaped "
                          f"{tuple(y.shape)}; expected one label per input ({x.shape[0]},)")
    compact = x.dtype == torch.uint8 and bundle.normalization is not None
    if not (x.dtype == torch.float32 and bundle.normalization is None or compact) or y.dtype != torch.long:
        raise PluginError(f"{source} returned {part} inputs as {x.dtype} and labels as {y.dtype}"
                          f"{' with a normalization' if bundle.normalization is not None else ''}, expected torch.float32 "
                          "inputs and torch.int64 labels (or torch.uint8 inputs with a normalization)")
    bad = 0 if compact else int((~torch.isfinite(x)).sum())
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
    return DataBundle(train_x, train_y, test_x, test_y, len(classes), bundle.name, bundle.normalization)


