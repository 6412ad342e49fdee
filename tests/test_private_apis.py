"""The private torch and Lightning names the core relies on, all in
``lth_core/private_apis.py``: each still exists and still does what lth uses it for.

A new torch or Lightning release that renames or changes one fails here, naming it,
before it can break a lottery quietly (``pyproject.toml`` caps pytorch-lightning at the
versions this suite passes on).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from lth_core import private_apis


def test_foreach_mul_multiplies_every_pair_in_place():
    a, b = torch.ones(3), torch.full((2, 2), 2.0)
    private_apis.foreach_mul_([a, b], [torch.tensor([0.0, 1.0, 2.0]), torch.zeros(2, 2)])
    assert a.tolist() == [0.0, 1.0, 2.0] and b.abs().sum() == 0


class _Steps(pl.LightningModule):
    """Manual optimisation taking ``per_call`` optimiser steps per training call."""

    def __init__(self, per_call: int):
        super().__init__()
        self.automatic_optimization = False
        self.net, self.per_call, self.seen = nn.Linear(2, 1), per_call, []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        self.seen.append(private_apis.attached_trainer(self) is self.trainer)
        for _ in range(self.per_call):
            opt.zero_grad()
            self.net(batch[0]).sum().backward()
            with private_apis.counted_step(opt):
                opt.optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_counted_step_advances_lightnings_step_count_and_max_steps():
    """Steps taken on the torch optimiser inside ``counted_step`` are Lightning's steps:
    ``global_step`` counts them and ``max_steps`` stops the fit on them."""
    module = _Steps(per_call=3)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 2)), batch_size=2)
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    assert private_apis.attached_trainer(module) is None
    trainer.fit(module, data)
    assert trainer.global_step == 12 and len(module.seen) == 4 and all(module.seen)


def test_the_graph_capture_check_exists_and_is_skipped():
    """torch's optimisers still carry the per-step CUDA graph-capture probe under one of the
    names lth replaces (else the workaround silently stops working)."""
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-3, fused=True)
    names = [n for n in private_apis.GRAPH_CAPTURE_CHECKS if hasattr(opt, n)]
    assert names, f"torch {torch.__version__} optimisers have none of {private_apis.GRAPH_CAPTURE_CHECKS}"
    private_apis.skip_graph_capture_check(opt)
    assert all(getattr(opt, n) is private_apis._no_check for n in names)


def test_the_ddp_launcher_class_is_the_one_fabric_uses_for_ddp():
    from lightning_fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    assert isinstance(fabric.strategy.launcher, private_apis.subprocess_script_launcher())


def test_stop_dataloader_workers_ends_a_persistent_iterators_workers_at_once():
    """A loader with persistent workers, stopped half way through an epoch (what a run ending
    at max_steps leaves): its worker processes end now, and a new iteration starts new ones."""
    import multiprocessing

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=1,
                                       persistent_workers=True)
    before = set(multiprocessing.active_children())
    first = next(iter(data))
    assert len(set(multiprocessing.active_children()) - before) == 1
    private_apis.stop_dataloader_workers(data)
    assert not set(multiprocessing.active_children()) - before and data._iterator is None
    assert torch.equal(next(iter(data))[0], first[0])
    private_apis.stop_dataloader_workers(data)
