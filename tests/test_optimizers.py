"""The recipe's optimisers: torch's own fused kernels, without the per-step CUDA probe on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lth_core.engines.module import build_optimizer
from lth_datasets import digits
from lth_models import mlp

CFG = {"lr": 3e-3, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": False}


def _train(make_opt, steps: int = 20) -> dict[str, torch.Tensor]:
    """A few steps of an MLP on real digits with the optimiser ``make_opt`` builds."""
    bundle = digits()
    x, y = bundle.train_x[:320], bundle.train_y[:320]
    torch.manual_seed(0)
    model = mlp(bundle.input_shape, bundle.num_classes, hidden=[32])
    opt = make_opt(model.parameters())
    for i in range(steps):
        sel = slice(32 * (i % 10), 32 * (i % 10 + 1))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[sel]), y[sel]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,torch_cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_cpu_adam_skips_the_cuda_probe_and_matches_torchs_fused_adam(name, torch_cls, monkeypatch) -> None:
    """Each Adam step asks torch whether a CUDA graph is being captured, which probes CUDA
    (under Lightning, through NVML, loaded again at every step on a CUDA build without a
    GPU). For CPU tensors lth's optimiser does not ask, and its steps are torch's fused
    Adam's, bit for bit."""
    cfg = {**CFG, "name": name}
    expected = _train(lambda p: torch_cls(p, lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True))

    def probe(*args, **kwargs):
        raise AssertionError("the optimiser probed for an accelerator during a CPU step")

    monkeypatch.setattr(torch.accelerator, "current_accelerator", probe)
    got = _train(lambda p: build_optimizer(p, cfg))
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    with pytest.raises(AssertionError, match="probed"):  # torch's own optimiser does probe
        _train(lambda p: torch_cls(p, lr=cfg["lr"], fused=True), steps=1)


def test_sgd_is_torchs_fused_sgd() -> None:
    cfg = {**CFG, "name": "sgd"}
    expected = _train(lambda p: torch.optim.SGD(p, lr=cfg["lr"], momentum=0.9, weight_decay=1e-4, fused=True))
    got = _train(lambda p: build_optimizer(p, cfg))
    assert all(torch.equal(got[k], expected[k]) for k in got)
