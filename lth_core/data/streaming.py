"""Data beyond memory: map-style torch ``Dataset``s fed through ``DataLoader`` workers.

A data-set plugin may return a :class:`DatasetBundle` (the official train and test split
as map-style datasets whose items are ``(image tensor, label)``) instead of a
:class:`~lth_core.data.bundle.DataBundle` of tensors. :class:`StreamingData` then plays the
part :class:`~lth_core.data.loaders.DataModule` plays for tensors, with the same
promises:

- the validation split is held out of the training set by the recipe's seed, as row
  indices (the same permutation the tensor path draws);
- the training order of epoch ``e`` is the tensor path's seeded permutation, so the batch
  of step ``s`` is a function of ``(order seed, s)``: a checkpoint's step is the sampler's
  position, and a killed run resumes at the very batch it would have trained;
- ``data.augment`` draws per step, as on the tensor path (in the worker that makes the
  batch, on the CPU);
- under data parallel each process loads only its contiguous share of every batch.

:class:`StreamLoader` hands the ``DataLoader`` the index lists of its batches (a batch
sampler), so workers load in parallel while the order stays the sampler's. The
``DataLoader`` holds at most ``workers x prefetch`` batches ahead (2 per worker): memory
is bounded by the batch size, not the data set (measured by ``benchmarks/data_paths.py``). Items are ``uint8`` images with the
bundle's :class:`~lth_core.data.bundle.Normalization` (applied per batch, as on the tensor
path) or float32.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lth_core.data.augment import Augmentation
from lth_core.data.bundle import Normalization, check_num_classes
from lth_core.data.loaders import Splits, TensorLoader, split_rows
from lth_core.private_apis import stop_dataloader_workers
from lth_core.errors import PluginError


@dataclass
class DatasetBundle:
    """What a data-set plugin returns for data that does not fit in memory: the official
    train and test split as map-style torch ``Dataset``s of ``(input, label)`` items.

    Inputs are tensors of one shape: float32, or ``uint8`` with a ``normalization`` the
    loaders apply per batch. Labels are ints (or 0-d integer tensors) in
    ``0..num_classes-1``. Random transforms belong in the recipe's ``data.augment``
    (drawn per step, so a resumed run sees the same batches), not in the datasets.
    """

    train: Any
    test: Any
    num_classes: int
    name: str = ""
    normalization: Normalization | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0][0].shape)

    def check(self, source: str) -> None:
        """Refuse what would fail later inside a worker: empty splits, items that are not
        ``(tensor, label)``, other dtypes or shapes, labels out of range (first and last
        item of each split are read)."""
        check_num_classes(self.num_classes, source)
        shape = None
        for part in ("train", "test"):
            ds = getattr(self, part)
            if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
                raise PluginError(f"{source} returned {part} as {type(ds).__name__}, expected a map-style torch Dataset")
            if len(ds) == 0:
                raise PluginError(f"{source} returned an empty {part} split, expected examples")
            for i in (0, len(ds) - 1):
                shape = _check_item(self, ds[i], f"{part}[{i}]", source, shape)
        if self.normalization is not None:
            problem = self.normalization.problem(shape[0] if len(shape) else None)
            if problem:
                raise PluginError(f"{source} returned {problem}")


def _check_item(bundle: DatasetBundle, item: Any, where: str, source: str, shape: tuple | None) -> tuple:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor)):
        raise PluginError(f"{source} returned {where} as {type(item).__name__}, expected an (input tensor, label) pair")
    x, y = item
    compact = x.dtype == torch.uint8 and bundle.normalization is not None
    if not (compact or x.dtype == torch.float32 and bundle.normalization is None):
        raise PluginError(f"{source} returned {where} with a {x.dtype} input, expected torch.float32 "
                          "(or torch.uint8 with a normalization)")
    if shape is not None and tuple(x.shape) != shape:
        raise PluginError(f"{source} returned {where} shaped {tuple(x.shape)}, expected every input shaped {shape}")
    label = int(y) if isinstance(y, int) or (isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point()) else None
    if label is None or not 0 <= label < bundle.num_classes:
        raise PluginError(f"{source} returned {where} with label {y!r}, expected an int in 0..{bundle.num_classes - 1}")
    return tuple(x.shape)


class _Plan:
    """The ``DataLoader``'s sampler: one item per batch, ``(step, indices, share)``."""

    def __init__(self, loader: "StreamLoader"):
        self.loader = weakref.proxy(loader)  # no cycle: a loader nobody uses goes, and its workers with it
        self.items: list[tuple[int, Tensor]] = []

    def __iter__(self) -> Iterator[tuple[int, list[int], tuple[int, int]]]:
        rows, share = self.loader.rows, (self.loader.rank, self.loader.world)
        for step, sel in self.items:
            yield step, (sel if rows is None else rows[sel]).tolist(), share

    def __len__(self) -> int:
        return len(self.items)


class _Batch(Dataset):
    """A whole batch per item, made in the worker: its examples loaded and stacked, then
    augmented with the draws of its step and normalised. The main process only receives
    finished float32 batches (in shared memory): it allocates nothing per batch, which
    keeps its memory flat (normalising there let glibc's heap grow by a batch a step)."""

    def __init__(self, loader: "StreamLoader"):
        self.dataset, self.augment, self.seed = loader.dataset, loader.augment, loader.seed
        self.batch_size, self.normalization = loader.batch_size, loader.normalization

    def __getitem__(self, item: tuple[int, list[int], tuple[int, int]]) -> tuple[Tensor, Tensor]:
        step, indices, share = item
        examples = [self.dataset[i] for i in indices]
        x = torch.stack([e[0] for e in examples])
        y = torch.tensor([int(e[1]) for e in examples], dtype=torch.long)
        if self.augment is not None:
            x = self.augment(x, self.seed, step, self.batch_size, share)
        return (x if self.normalization is None else self.normalization.apply(x)), y


class StreamLoader:
    """The batches of one split of a :class:`DatasetBundle`, loaded by ``DataLoader`` workers.

    Same order, resumption (``epoch``, ``skip_batches``), data-parallel share (``rank``,
    ``world``) and augmentation as :class:`~lth_core.data.loaders.TensorLoader`, whose
    order it uses; ``rows`` are the split's indices into ``dataset``.
    """

    def __init__(self, dataset: Any, rows: Tensor | None, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, normalization: Normalization | None = None, workers: int = 0):
        self.dataset, self.rows, self.normalization, self.workers = dataset, rows, normalization, workers
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch, self.skip_batches, self.rank, self.world = 0, 0, 0, 1
        self.augment: Augmentation | None = None
        self._plan = _Plan(self)
        self._loader: DataLoader | None = None

    examples = property(lambda self: len(self.dataset) if self.rows is None else self.rows.shape[0])
    device = property(lambda self: torch.device("cpu"), doc="Batches are collated on the CPU.")
    __len__ = TensorLoader.__len__  # the tensor path's length, order and shares: the same batches
    order = TensorLoader.order
    planned = TensorLoader.planned

    def serve(self, items: Iterator[tuple[int, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``(first step, positions)`` items, made by the workers in order
        (:class:`_Batch`: loaded, augmented with the draws of their step, normalised)."""
        self._plan.items = list(items)
        if self._loader is None:  # one DataLoader per split: its workers persist across evaluations
            self._loader = DataLoader(_Batch(self), batch_size=None, sampler=self._plan, num_workers=self.workers,
                                      persistent_workers=self.workers > 0, prefetch_factor=2 if self.workers else None)
        yield from self._loader

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: the epoch advances at the first batch, not when Lightning calls iter() to look
        yield from self.serve(self.planned())

    def same_examples(self, other: Any) -> bool:
        return False

    def close(self) -> None:
        """Stop this loader's worker processes (a later iteration starts new ones)."""
        if self._loader is not None:
            stop_dataloader_workers(self._loader)
            self._loader = None


class StreamingData(Splits):
    """The run's data when it streams: training / validation / test splits of a
    :class:`DatasetBundle`, with the :class:`~lth_core.data.loaders.DataModule` interface
    that the lottery and plugins use (loaders, ``inputs``, ``labels``, ``sample_batch``).

    ``inputs`` and ``labels`` load the examples they are asked for; ``train_x`` and the
    like load a whole split (meant for small test sets; a criterion should use
    :meth:`sample_batch`).
    """

    def __init__(self, bundle: DatasetBundle, batch_size: int, eval_batch_size: int, val_size: float | int, seed: int,
                 subset: int | None = None, order_seed: int | None = None, augment: list | None = None, workers: int = 0):
        self.bundle, self.rows = bundle, split_rows(len(bundle.train), val_size, seed, subset)  # the tensor path's split
        self.workers = workers
        super().__init__(batch_size, eval_batch_size, seed, order_seed, augment)
        self._loaders: dict[tuple, StreamLoader] = {}

    num_classes = property(lambda self: self.bundle.num_classes)
    input_shape = property(lambda self: self.bundle.input_shape)
    device = property(lambda self: torch.device("cpu"), doc="Streaming data is loaded on the CPU.")

    def _dataset(self, split: str) -> Any:
        return self.bundle.test if split == "test" else self.bundle.train

    def close(self) -> None:
        """Stop every loader's worker processes: the lottery calls this when it is done with
        the data, so no worker outlives it (they persist across its evaluations and runs)."""
        for ld in self._loaders.values():
            ld.close()

    def examples(self, split: str) -> int:
        rows = self.rows[split]
        return len(self._dataset(split)) if rows is None else rows.shape[0]

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> StreamLoader:
        """A :class:`StreamLoader` over ``split``; one per split and settings (its workers persist)."""
        key = (split, batch_size, shuffle, seed, drop_last)
        if key not in self._loaders:
            self._loaders[key] = StreamLoader(self._dataset(split), self.rows[split], batch_size, shuffle, seed, drop_last,
                                              self.bundle.normalization, self.workers)
        ld = self._loaders[key]
        ld.epoch, ld.skip_batches, ld.rank, ld.world = 0, 0, 0, 1
        return ld

    def train_loader(self, seed: int) -> StreamLoader:
        ld = self.loader("train", self.batch_size, shuffle=True, seed=seed, drop_last=True)
        ld.augment = self.augment
        return ld

    def eval_loaders(self, batch_size: int | None = None) -> list[StreamLoader]:
        size = batch_size or self.eval_batch_size
        return [self.loader("val", size), self.loader("test", size)]

    def _positions(self, split: str, index: slice | Tensor | None) -> list[int]:
        rows = self.rows[split]
        base = torch.arange(self.examples(split)) if rows is None else rows
        return (base if index is None else base[index]).tolist()

    def inputs(self, split: str, index: slice | Tensor | None = None) -> Tensor:
        """Float32 inputs of ``split``'s examples at ``index`` (all when None), loaded now."""
        ds = self._dataset(split)
        x = torch.stack([ds[i][0] for i in self._positions(split, index)])
        return x if self.bundle.normalization is None else self.bundle.normalization.apply(x)

    def labels(self, split: str, index: slice | Tensor | None = None) -> Tensor:
        """Labels of ``split``'s examples at ``index``: from the dataset's ``targets`` when it
        has them (torchvision's do), else by loading the examples."""
        ds, at = self._dataset(split), self._positions(split, index)
        targets = getattr(ds, "targets", None)
        if targets is not None and len(targets) == len(ds):
            return torch.as_tensor(targets, dtype=torch.long)[at]
        return torch.tensor([int(ds[i][1]) for i in at], dtype=torch.long)

    train_x = property(lambda self: self.inputs("train"))
    val_x = property(lambda self: self.inputs("val"))
    test_x = property(lambda self: self.inputs("test"))
    train_y = property(lambda self: self.labels("train"))
    val_y = property(lambda self: self.labels("val"))
    test_y = property(lambda self: self.labels("test"))

    def sample_batch(self, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A seeded batch of training data (the tensor path's draw), loaded now."""
        idx = torch.randperm(self.examples("train"), generator=torch.Generator().manual_seed(seed))[:size]
        return self.inputs("train", idx), self.labels("train", idx)

    def with_train(self, keep: Tensor) -> "StreamingData":
        import copy

        out = copy.copy(self)
        out.rows = {**self.rows, "train": self.rows["train"][keep]}
        out._loaders = {}
        return out

    def place(self, device: Any) -> bool:
        """Streaming data stays on the CPU; each batch moves to the device as it is used."""
        return False
