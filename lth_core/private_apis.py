"""Every private torch and Lightning name the core relies on, in one place.

Each is used because no public API does the same job at the same cost; each is named
here once, and ``tests/test_private_apis.py`` fails loudly, naming it, when a new torch or
Lightning release renames or changes it (``pyproject.toml`` caps pytorch-lightning at the
versions the suite passes on). Nothing outside this module may use a private name.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor


def foreach_mul_(tensors: list[Tensor], factors: list[Tensor]) -> None:
    """``t *= f`` for every pair in one fused kernel (``torch._foreach_mul_``, what torch's own
    optimisers use): one launch per step for every masked layer instead of one per layer."""
    torch._foreach_mul_(tensors, factors)


@contextmanager
def counted_step(lightning_optimizer: Any) -> Iterator[None]:
    """Count the optimiser step taken inside the block as Lightning's own loop counts it
    (``global_step``, the ``max_steps`` check, the profiler's ``optimizer_step``).

    Several steps per Lightning call (``LotteryModule._train_steps``) step the torch
    optimiser directly; Lightning's ``LightningOptimizer.step`` brackets a step with its
    ``_on_before_step`` and ``_on_after_step`` callbacks, which hold the loop's counters.
    """
    lightning_optimizer._on_before_step()
    yield
    lightning_optimizer._on_after_step()


#: The per-step CUDA graph-capture probes of torch's optimisers (name by torch version).
GRAPH_CAPTURE_CHECKS = ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check")


def skip_graph_capture_check(opt: torch.optim.Optimizer) -> None:
    """Drop the per-step CUDA graph-capture check of an optimiser whose tensors are on the CPU.

    Adam and AdamW ask at every step whether a CUDA graph is being captured, which first
    asks whether CUDA is available. Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so
    on PyPI's CUDA build of torch without a GPU each step loads the NVML library again and
    fails: 0.1 ms a step unloaded, 0.3-0.5 ms on a busy machine (measured with cProfile
    inside a LeNet-300-100 round). A graph captures GPU work only, so for CPU tensors the
    check has nothing to find.
    """
    for name in GRAPH_CAPTURE_CHECKS:
        if hasattr(opt, name):
            setattr(opt, name, _no_check)


def _no_check() -> None:
    return None


def attached_trainer(module: Any) -> Any | None:
    """The Trainer a LightningModule is attached to, or None: the public ``module.trainer``
    raises when there is none, and this is asked at every logged training step."""
    return module._trainer


def subprocess_script_launcher() -> type:
    """Lightning Fabric's launcher that re-runs the command for the other local ranks (the
    one ``strategy: ddp`` uses); any other launcher spawns processes that end with a fit."""
    from lightning_fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    return _SubprocessScriptLauncher


def stop_dataloader_workers(loader: Any) -> None:
    """Stop a ``DataLoader``'s worker processes now: its persistent iterator's
    ``_shutdown_workers``, what Lightning calls on the loaders it iterates itself. Left to
    the garbage collector, an iterator in a reference cycle can be finalised after its
    queues, its workers never hear they should stop, and each costs the 5 s join timeout
    (15 s at the end of a 3-round lottery streaming an image folder with one worker)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        iterator._shutdown_workers()
        loader._iterator = None
