"""Data held in memory as tensors and batched by indexing: no per-sample Python.

Data-set plugins return a :class:`DataBundle` (the official train and test split, already
normalised). :class:`DataModule` holds a seeded validation split out of the training set
and serves batches with :class:`TensorLoader`, whose order depends only on
``(seed, epoch)`` so a run is repeatable and can resume at any step.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from lth_core.data.bundle import DataBundle
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
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0
        self.skip_batches = 0  # set to resume in the middle of an epoch
        self.rank, self.world = 0, 1  # this process's share of each batch (data parallel)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        n = self.x.shape[0]
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self.order(self.epoch)
        self.epoch += 1
        start, self.skip_batches = self.skip_batches, 0
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                sel = torch.tensor_split(sel, self.world)[self.rank]
                if not len(sel):  # a last evaluation batch smaller than the world
                    continue
            yield self.x[sel], self.y[sel]


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
            if epoch != self._epoch:
                self._epoch, self._order = epoch, self.loader.order(epoch)
            take = min(last - s, per_epoch - pos)
            parts.append(self._order[pos * b:(pos + take) * b])
            s += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def indices(self) -> Iterator[Tensor]:
        """The example indices of each item, in order (what :meth:`__iter__` gathers)."""
        for first in range(self.start, self.end, self.chunk):
            yield self._indices(first, min(first + self.chunk, self.end))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for sel in self.indices():
            yield self.loader.x[sel], self.loader.y[sel]


class DataModule:
    """The run's data: train / validation / test tensors and their loaders.

    ``seed`` fixes the validation split; ``order_seed`` (default: ``seed``) the order of
    training batches, so two runs can share θ0 and split yet see the data differently.
    """

    def __init__(self, bundle: DataBundle, batch_size: int, eval_batch_size: int, val_size: float | int, seed: int, subset: int | None = None,
                 order_seed: int | None = None):
        n = bundle.train_x.shape[0]
        n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
        if not 0 < n_val < n:
            raise LthError(f"data.val_size={val_size} leaves no training or no validation data ({n} training examples)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        if subset is not None:
            train_idx = train_idx[:subset]
        self.bundle = bundle
        self.train_x, self.train_y = bundle.train_x[train_idx], bundle.train_y[train_idx]
        self.val_x, self.val_y = bundle.train_x[val_idx], bundle.train_y[val_idx]
        self.test_x, self.test_y = bundle.test_x, bundle.test_y
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        # ``data.order_seed``: another data order for the same θ0 and the same validation split.
        self.order_seed = seed if order_seed is None else order_seed
        if batch_size > self.train_x.shape[0]:
            raise LthError(f"data.batch_size={batch_size} is larger than the training split ({self.train_x.shape[0]} examples)")

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.bundle.input_shape

    def train_loader(self, seed: int) -> TensorLoader:
        """The training batches in the order ``seed`` fixes (shuffled per epoch, full batches only)."""
        return TensorLoader(self.train_x, self.train_y, self.batch_size, shuffle=True, seed=seed, drop_last=True)

    def eval_loaders(self) -> list[TensorLoader]:
        """Validation first, then test: each evaluation point measures both."""
        return [
            TensorLoader(self.val_x, self.val_y, self.eval_batch_size),
            TensorLoader(self.test_x, self.test_y, self.eval_batch_size),
        ]

    def sample_batch(self, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A seeded batch of training data (for data-driven criteria such as SNIP)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.train_x.shape[0], generator=g)[:size]
        return self.train_x[idx], self.train_y[idx]
