"""A round in training keeps the model, its gradients, the optimiser state, θ0 and the masks;
nothing more of the size of the model (issue 8's memory bound)."""

from __future__ import annotations

import gc
import warnings

import pytorch_lightning as pl
import torch

from lth_core import hookimpl
from lth_core.lottery.rounds import run_lottery
from lth_core.config import validate


class Census(pl.Callback):
    """Counts, mid-training, the live float tensors shaped like the largest weight matrix."""

    multi_step_safe = True  # acts between Lightning calls only: the fast path stays on

    def __init__(self, context, found: dict):
        self.context, self.found = context, found

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx != 1:
            return
        shape = max((p.shape for p in module.model.parameters()), key=lambda s: s.numel())
        gc.collect()  # count what is reachable, not what is waiting for the collector
        with warnings.catch_warnings():  # isinstance() on torch.distributed's deprecated reduce_op warns
            warnings.simplefilter("ignore")
            tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr() for t in tensors if t.is_floating_point() and t.shape == shape}
        self.found[(self.context.round, self.context.name)] = len(storages)


class CensusPlugin:
    def __init__(self):
        self.found: dict = {}

    @hookimpl
    def round_callbacks(self, context):
        return [Census(context, self.found)]


def test_a_round_keeps_one_model_its_optimiser_theta0_and_mask(tiny_raw, tmp_path, pm):
    """Adam: weights, gradients, two moments, θ0 and the float mask make 6 copies of the
    largest layer. A random-reinit control starts from new weights, so its start is a 7th
    (θ0 must survive it for the next round). Earlier rounds' weights stay on disk."""
    plugin = CensusPlugin()
    pm.register(plugin, name="census")
    try:
        tiny_raw["model"]["hidden"] = [97, 31]  # a shape nothing else in the process has
        tiny_raw["lottery"]["rounds"] = 2
        tiny_raw["controls"] = ["random_reinit"]
        run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(plugin)
    assert {k: v for k, v in plugin.found.items() if k[1] == "ticket"} == {(k, "ticket"): 6 for k in range(3)}
    assert {k: v for k, v in plugin.found.items() if k[1] != "ticket"} == {(k, "random_reinit"): 7 for k in range(1, 3)}
