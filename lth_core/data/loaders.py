"""Data held in memory as tensors and batched by indexing: no per-sample Python.

Data-set plugins return a :class:`DataBundle` (the official train and test split, float32
or ``uint8`` with a normalization). :class:`DataModule` holds a seeded validation split out
of the training set as row indices into the bundle, not as copies: the data is held once,
as compactly as the bundle holds it, and each batch is gathered and normalised when it is
used. :class:`TensorLoader` serves the batches in an order that depends only on
``(seed, epoch)``, so a run is repeatable and can resume at any step. On an accelerator
the data moves to the device once, when it fits (:meth:`DataModule.place`), and batches
are gathered there.
"""

from __future__ import annotations

import copy
import weakref
from typing import Iterator

import torch
from torch import Tensor

from lth_core.data.augment import Augmentation
from lth_core.data.bundle import DataBundle, Normalization
from lth_core.errors import LthError


class TensorLoader:
    """Iterates ``(x, y)`` batches of in-memory tensors by index.

    With ``shuffle`` the order of epoch ``e`` is a permutation drawn from a generator
    seeded with ``seed * 1_000_003 + e``: it does not depend on what ran before, so
    resuming at epoch ``e`` (or step ``k``) sees the same data as an uninterrupted run.
    ``drop_last`` keeps every training step the same size, as the paper's fixed batch.
    Under data parallel training (:mod:`lth_core.engines.data_parallel`) process ``rank`` of
    ``world`` takes its contiguous ``1/world`` share of every batch: the batches, their
    order and their number stay those of one process, so the averaged gradient is the same.

    ``rows`` (optional) are the examples of ``x``/``y`` this loader serves, in order (a
    split of a larger tensor, without copying it); ``normalization`` turns the gathered
    ``uint8`` inputs into float32 (:class:`lth_core.data.bundle.Normalization`);
    ``augment`` (training loaders of a recipe with ``data.augment``) crops and flips each
    batch as stored, with the draws of its step (:class:`lth_core.data.augment.Augmentation`).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 rows: Tensor | None = None, normalization: Normalization | None = None):
        self.x, self.y, self.rows, self.normalization = x, y, rows, normalization
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0
        self.skip_batches = 0  # set to resume in the middle of an epoch
        self.rank, self.world = 0, 1  # this process's share of each batch (data parallel)
        self.augment: Augmentation | None = None

    @property
    def examples(self) -> int:
        return self.x.shape[0] if self.rows is None else self.rows.shape[0]

    def __len__(self) -> int:
        n = self.examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """Epoch ``epoch``'s order of the examples (drawn on the CPU, whatever the device)."""
        n = self.examples
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    def where(self, sel: Tensor) -> Tensor:
        """Positions ``sel`` of this loader's examples as rows of ``x`` and ``y``, on their device."""
        sel = sel.to(self.x.device)
        return sel if self.rows is None else self.rows[sel]

    def take(self, sel: Tensor, step: int | None = None) -> tuple[Tensor, Tensor]:
        """The examples at positions ``sel``: float32 inputs and their labels; augmented
        (when this loader augments) as the batches of consecutive steps from ``step`` on."""
        rows = self.where(sel)
        x = self.x[rows]
        if self.augment is not None and step is not None:
            x = self.augment(x, self.seed, step, self.batch_size, (self.rank, self.world))
        return (x if self.normalization is None else self.normalization.apply(x)), self.y[rows]

    def same_examples(self, other: "TensorLoader") -> bool:
        """Whether ``other`` serves the very examples this one does (a test split every trial shares)."""
        def same(a: Tensor | None, b: Tensor | None) -> bool:
            return a is b or (a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))

        return (same(self.x, other.x) and same(self.y, other.y) and same(self.rows, other.rows)
                and self.normalization == other.normalization)

    @property
    def device(self) -> torch.device:
        """Where the examples are held (and batches gathered)."""
        return self.x.device

    def planned(self) -> Iterator[tuple[int, Tensor]]:
        """This iteration's ``(step, positions)`` per batch (this process's share of each):
        epoch ``self.epoch`` from batch ``skip_batches`` on. Advances the epoch."""
        epoch = self.epoch
        idx = self.order(epoch).to(self.device)  # once per epoch: no host-to-device copy per batch
        self.epoch += 1
        start, self.skip_batches = self.skip_batches, 0
        items = []
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                sel = torch.tensor_split(sel, self.world)[self.rank]
                if not len(sel):  # a last evaluation batch smaller than the world
                    continue
            items.append((epoch * len(self) + b, sel))
        return iter(items)

    def serve(self, items: Iterator[tuple[int, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``(first step, positions)`` items, gathered by indexing."""
        for step, sel in items:
            yield self.take(sel, step)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: the epoch advances at the first batch, not when Lightning calls iter() to look
        yield from self.serve(self.planned())


class StepChunks:
    """The same training batches as :class:`TensorLoader`, ``chunk`` steps per item.

    Item ``j`` holds steps ``start + j*chunk`` up to ``end`` (exclusive), concatenated: the
    batches of step ``s`` are those ``TensorLoader`` yields at epoch ``s // len(loader)``,
    position ``s % len(loader)``, so a run trained from chunks sees exactly the data it
    would see one step at a time, across epoch boundaries too. One gather per chunk
    replaces ``chunk`` small ones, and Lightning's per-batch machinery runs once per chunk.
    """

    def __init__(self, loader: TensorLoader, start: int, end: int, chunk: int):
        if not loader.drop_last or chunk < 1 or end <= start:
            raise ValueError("StepChunks needs a drop_last loader, chunk >= 1 and end > start")
        self.loader, self.start, self.end, self.chunk = loader, start, end, chunk
        self.shuffle = loader.shuffle
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return -(-(self.end - self.start) // self.chunk)

    def _indices(self, first: int, last: int) -> Tensor:
        per_epoch, b = len(self.loader), self.loader.batch_size
        parts, s = [], first
        while s < last:
            epoch, pos = divmod(s, per_epoch)
            if epoch != self._epoch:  # once per epoch, moved to the data's device
                self._epoch, self._order = epoch, self.loader.order(epoch).to(self.loader.device)
            take = min(last - s, per_epoch - pos)
            parts.append(self._order[pos * b:(pos + take) * b])
            s += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def indices(self) -> Iterator[Tensor]:
        """The example indices of each item, in order (what :meth:`__iter__` gathers)."""
        for first in range(self.start, self.end, self.chunk):
            yield self._indices(first, min(first + self.chunk, self.end))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.loader.serve(zip(range(self.start, self.end, self.chunk), self.indices()))


#: A split's source in the bundle: the test split is the bundle's test set; validation and
#: training are rows of its training set.
SOURCE = {"train": "train", "val": "train", "test": "test"}


def split_rows(n: int, val_size: float | int, seed: int, subset: int | None = None) -> dict[str, Tensor | None]:
    """The rows of ``n`` training examples each split takes: validation first in a permutation
    seeded by ``seed``, training the rest (its first ``subset``), test the bundle's own.
    Data in memory and streamed data split by this one function, so a data set gives the
    same validation split whichever path loads it."""
    n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
    if not 0 < n_val < n:
        raise LthError(f"data.val_size={val_size} leaves no training or no validation data ({n} training examples)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx = perm[n_val:] if subset is None else perm[n_val:][:subset]
    return {"train": train_idx, "val": perm[:n_val], "test": None}


class Splits:
    """What the data in memory (:class:`DataModule`) and streamed data share: the recipe's
    batch sizes, seed, order seed and augmentation, checked against the training split, so
    both refuse the same mistakes in the same words. A subclass sets ``bundle``, ``rows``
    and what its ``examples`` and ``input_shape`` read before calling ``__init__``."""

    def __init__(self, batch_size: int, eval_batch_size: int, seed: int, order_seed: int | None, augment: list | None):
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        # ``data.order_seed``: another data order for the same θ0 and the same validation split.
        self.order_seed = seed if order_seed is None else order_seed
        if batch_size > self.examples("train"):
            raise LthError(f"data.batch_size={batch_size} is larger than the training split ({self.examples('train')} examples)")
        #: ``data.augment``: what the training batches go through (evaluation never is augmented).
        self.augment = Augmentation.of(augment)
        if self.augment is not None:
            self.augment.check(self.input_shape, f"data set {self.bundle.name or '?'}")


class DataModule(Splits):
    """The run's data: training / validation / test splits of one bundle, and their loaders.

    ``seed`` fixes the validation split; ``order_seed`` (default: ``seed``) the order of
    training batches, so two runs can share θ0 and split yet see the data differently.

    The splits are rows of the bundle's tensors (``rows["train"]``, ``rows["val"]``; the test split
    is the bundle's test set), never copies: the data exists once, as compactly as the
    bundle holds it (``uint8`` for the byte data sets), and every batch is gathered and
    normalised when it is used. ``train_x``, ``val_x`` and ``test_x`` are a whole split as
    float32 on the CPU, made on each access; :meth:`inputs` gives some of its examples,
    :meth:`sample_batch` a seeded batch.
    """

    def __init__(self, bundle: DataBundle, batch_size: int, eval_batch_size: int, val_size: float | int, seed: int, subset: int | None = None,
                 order_seed: int | None = None, augment: list | None = None):
        self.bundle = bundle
        self.rows = split_rows(bundle.train_x.shape[0], val_size, seed, subset)
        self.stored: dict[str, tuple[Tensor, Tensor]] = {"train": (bundle.train_x, bundle.train_y), "test": (bundle.test_x, bundle.test_y)}
        super().__init__(batch_size, eval_batch_size, seed, order_seed, augment)

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.bundle.input_shape

    @property
    def device(self) -> torch.device:
        """Where the data is held: the CPU, or the accelerator :meth:`place` moved it to."""
        return self.stored["train"][0].device

    def examples(self, split: str) -> int:
        """How many examples ``split`` (``train``, ``val`` or ``test``) holds."""
        rows = self.rows[split]
        return self.stored[SOURCE[split]][0].shape[0] if rows is None else rows.shape[0]

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> TensorLoader:
        """A :class:`TensorLoader` over ``split``'s examples."""
        x, y = self.stored[SOURCE[split]]
        rows = self.rows[split]
        return TensorLoader(x, y, batch_size, shuffle, seed, drop_last, rows=None if rows is None else rows.to(x.device),
                            normalization=self.bundle.normalization)

    def train_loader(self, seed: int) -> TensorLoader:
        """The training batches in the order ``seed`` fixes (shuffled per epoch, full batches
        only), augmented as ``data.augment`` says with draws seeded by ``seed`` and the step."""
        loader = self.loader("train", self.batch_size, shuffle=True, seed=seed, drop_last=True)
        loader.augment = self.augment
        return loader

    def eval_loaders(self, batch_size: int | None = None) -> list[TensorLoader]:
        """Validation first, then test: each evaluation point measures both, in batches of
        ``batch_size`` (default ``data.eval_batch_size``)."""
        size = batch_size or self.eval_batch_size
        return [self.loader("val", size), self.loader("test", size)]

    def inputs(self, split: str, index: slice | Tensor | None = None) -> Tensor:
        """Float32 inputs of ``split``'s examples at ``index`` (all when None), on the CPU."""
        x, _ = self.stored[SOURCE[split]]
        rows = self.rows[split]
        if rows is None and index is None:  # the whole test set: the bundle's own tensor, as it always was
            return self.bundle.normalise(x).cpu()
        return self.bundle.normalise(x[_positions(rows, index, x.shape[0]).to(x.device)]).cpu()

    def labels(self, split: str, index: slice | Tensor | None = None) -> Tensor:
        """Labels of ``split``'s examples at ``index`` (all when None), on the CPU."""
        _, y = self.stored[SOURCE[split]]
        return y[_positions(self.rows[split], index, y.shape[0]).to(y.device)].cpu()

    train_x = property(lambda self: self.inputs("train"), doc="The training split's inputs, float32 (made on access).")
    val_x = property(lambda self: self.inputs("val"), doc="The validation split's inputs, float32 (made on access).")
    test_x = property(lambda self: self.inputs("test"), doc="The test split's inputs, float32 (made on access).")
    train_y = property(lambda self: self.labels("train"), doc="The training split's labels.")
    val_y = property(lambda self: self.labels("val"), doc="The validation split's labels.")
    test_y = property(lambda self: self.labels("test"), doc="The test split's labels.")

    def sample_batch(self, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A seeded batch of training data (for data-driven criteria such as SNIP), on the CPU."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.examples("train"), generator=g)[:size]
        return self.inputs("train", idx), self.labels("train", idx)

    def with_train(self, keep: Tensor) -> "DataModule":
        """This data with only the training examples ``keep`` selects (a boolean mask or
        positions in the training split): same validation and test splits, nothing copied."""
        out = copy.copy(self)
        out.rows = {**self.rows, "train": self.rows["train"][keep.to(self.rows["train"].device)]}
        return out

    def close(self) -> None:
        """Nothing to stop: tensors in memory have no worker processes (the streaming data
        module's ``close`` stops its workers; the lottery calls it when it is done)."""

    def place(self, device: torch.device | str) -> bool:
        """Hold the data on ``device`` (an accelerator) if it fits, so batches are gathered
        there with no host-to-device copy per step; True if it is there. The data fits when
        it takes at most a quarter of the device's free memory (training needs the rest)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one device
            device = torch.device("cuda", torch.cuda.current_device())
        if self.device == device:
            return True
        if device.type != "cuda":
            return False
        tensors = [t for pair in self.stored.values() for t in pair]
        free, _ = torch.cuda.mem_get_info(device)
        if sum(t.numel() * t.element_size() for t in tensors) > free // 4:
            return False
        self.stored = {k: (_on(x, device), _on(y, device)) for k, (x, y) in self.stored.items()}
        self.rows = {k: None if r is None else r.to(device) for k, r in self.rows.items()}
        return True


def _positions(rows: Tensor | None, index: slice | Tensor | None, n: int) -> Tensor:
    """Rows of a split's source for positions ``index`` of the split (``rows`` None: the source itself)."""
    base = torch.arange(n) if rows is None else rows
    return base if index is None else base[index.to(base.device) if isinstance(index, Tensor) else index]


#: (id of a host tensor, device) -> (a weak reference to it, its copy on the device). Not a
#: WeakKeyDictionary: it compares keys with ``==``, which a tensor answers element-wise.
_DEVICE_COPIES: dict[tuple[int, str], tuple[weakref.ref, Tensor]] = {}


def _on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``, one copy per tensor and device however many runs place it
    (stacked trials share one bundle); the copy goes when ``t`` does."""
    key = (id(t), str(device))
    held = _DEVICE_COPIES.get(key)
    if held is not None and held[0]() is t:
        return held[1]
    copy = t.to(device)
    _DEVICE_COPIES[key] = (weakref.ref(t, lambda _, key=key: _DEVICE_COPIES.pop(key, None)), copy)
    return copy
