"""The Lightning callback that keeps other tasks' weights frozen while a new task trains."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


def _masking(factor: Tensor):
    """A gradient hook multiplying the accumulated gradient by ``factor`` (it must return None)."""

    def hook(param: Tensor) -> None:
        with torch.no_grad():
            param.grad.mul_(factor)

    return hook


class FreezeOwned(pl.Callback):
    """Only the entries marked trainable change; every other entry stays bitwise as it started.

    Gradients of frozen entries are zeroed as backward accumulates them (so Adam's moments
    for them stay zero), and after every optimiser step the frozen entries are copied back
    from a snapshot taken when training starts: weight decay (Adam's L2, AdamW's decoupled
    decay, SGD's) moves a weight even with a zero gradient, so masking gradients alone
    would not keep an old task's weights exact. Normalisation layers run in eval mode, so
    their running statistics (which old tasks use) do not drift either.
    """

    def __init__(self, trainable: dict[str, Tensor]):
        self.trainable = trainable
        self._bound: list[tuple[nn.Parameter, Tensor, Tensor]] = []
        self._handles: list = []
        self._norms: list[nn.Module] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        params = dict(model.named_parameters())
        for name, keep in self.trainable.items():
            p = params[name]
            keep = keep.to(p.device)
            self._bound.append((p, keep, p.detach().clone()))
            factor = keep.to(p.dtype)
            self._handles.append(p.register_post_accumulate_grad_hook(_masking(factor)))
        for opt in trainer.optimizers:
            self._handles.append(opt.register_step_post_hook(lambda *_: self.restore()))
        self._norms = [m for m in model.modules() if getattr(m, "running_mean", None) is not None]  # tracks statistics

    def state_dict(self) -> dict:
        """Nothing: the frozen entries' snapshot is retaken from the run's start weights by
        ``on_train_start``, which a resumed run sees before it jumps to its checkpoint."""
        return {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for m in self._norms:  # Lightning puts the model back in train mode after each validation
            m.eval()

    def restore(self) -> None:
        """Copy the snapshot back into every frozen entry."""
        with torch.no_grad():
            for p, keep, frozen in self._bound:
                p.copy_(torch.where(keep, p, frozen))

    def on_train_end(self, trainer, pl_module) -> None:
        self._release()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._release()

    def _release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._bound.clear()
