"""The LightningModule that trains one round: a classifier with a mask held at zero."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics import MeanMetric

from lth_core.errors import NonFiniteLoss
from lth_core.engines.enforcer import MaskedRun, MaskEnforcer
from lth_core.private_apis import attached_trainer, counted_step, skip_graph_capture_check
from lth_core.tickets.mask import Mask

EVAL_SPLITS = ("val", "test")


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    """The recipe's optimiser, with torch's fused kernel where the device has one.

    torch leaves CPU optimisers on the per-tensor loop, which cost 35 ms per LeNet-300-100
    Adam step on this 2-core CPU. The multi-tensor (``foreach``) path cut that to 2.4 ms,
    but its vectorised ``sqrt`` is about 20x slower on zeros, and a lottery keeps Adam's
    second moment of every pruned weight at exactly zero: at 80% pruned, foreach Adam took
    3.2 ms a step against 0.53 ms fused (same results to 1 ulp, measured side by side).
    Devices without fused kernels fall back to ``foreach``.
    """
    params = list(params)
    name, common = cfg["name"], {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
    device = params[0].device.type if params else "cpu"
    fast = {"fused": True} if device in ("cpu", "cuda") else {"foreach": True}
    if name == "sgd":
        make = lambda **k: torch.optim.SGD(params, momentum=cfg["momentum"], nesterov=cfg["nesterov"], **common, **k)  # noqa: E731
    elif name == "adam":
        make = lambda **k: torch.optim.Adam(params, **common, **k)  # noqa: E731
    elif name == "adamw":
        make = lambda **k: torch.optim.AdamW(params, **common, **k)  # noqa: E731
    else:
        raise ValueError(f"unknown optimizer {name!r}")  # recipes.validate refuses it first
    try:
        opt = make(**fast)
    except (RuntimeError, ValueError):  # e.g. a dtype the fused kernel does not take
        opt = make(foreach=True)
    if device == "cpu":
        skip_graph_capture_check(opt)
    return opt


def lr_factor(cfg: dict):
    """Learning-rate multiplier per step: linear warmup, then x``gamma`` at each milestone.

    ``None`` when the rate is constant. Warmup is what makes IMP work for VGG-19 at the
    standard learning rate (Frankle & Carbin, Section 5).
    """
    warmup, milestones, gamma = cfg.get("warmup_steps", 0), cfg.get("milestones", []), cfg.get("gamma", 0.1)
    if not warmup and not milestones:
        return None

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return f * gamma ** sum(step >= m for m in milestones)

    return factor


class LotteryModule(pl.LightningModule, MaskedRun):
    """Trains ``model`` with cross-entropy under ``mask``; measures val and test at each eval.

    It is the ``pl_module`` every training callback receives (``context.module`` of the
    run's :class:`lth_core.RoundContext`). What a plugin may use of it:

    - ``model``: the network being trained (``nn.Module``);
    - ``mask``: the :class:`lth_core.Mask` in force (read it; never assign it);
    - :meth:`set_mask`: change the mask during training (checked, applied at once; only
      tighter unless a callback owns the mask, ``mask_owner``);
    - :meth:`capture_dense_grads` / :meth:`dense_grads`: the next backward's gradients
      before masking (what a pruned weight would get: RigL regrows by it);
    - ``step``: the lottery's step (Lightning's ``global_step`` plus where training resumed);
    - ``history``: one row per evaluation point,
      ``{"step", "weights_remaining", "val_loss", "val_acc", "test_loss", "test_acc"}``;
    - ``log_prefix``: ``round_<k>/<run>/``, for metrics logged per run;
    - ``density_fn``: set by a callback that evaluates a mask of its own (supermasks) to
      report that network's density; ``None`` means ``mask``'s.
    """

    def __init__(self, model: nn.Module, mask: Mask, optimizer: dict, num_classes: int, log_prefix: str = "", step_offset: int = 0):
        super().__init__()
        self.train_in_chunks(1)
        self.step_offset = step_offset  # training resumed at step k (late rewinding)
        self.log_prefix = f"{log_prefix}/" if log_prefix else ""
        self.model = model
        self.mask = mask
        self.optimizer_cfg = optimizer
        self.enforcer: MaskEnforcer | None = None
        #: Reports the density of the network being evaluated. A callback that trains a mask
        #: of its own (supermasks) sets it; by default it is ``self.mask``'s density.
        self.density_fn = None
        self.history: list[dict] = []
        self.acc = nn.ModuleList([MulticlassAccuracy(num_classes, average="micro") for _ in EVAL_SPLITS])
        self.loss_mean = nn.ModuleList([MeanMetric() for _ in EVAL_SPLITS])

    def train_in_chunks(self, steps_per_call: int, batch_size: int = 0) -> None:
        """``steps_per_call > 1``: each training batch holds that many steps of ``batch_size``
        examples (:class:`lth_core.data.loaders.StepChunks`), trained in one call by :meth:`_train_steps`."""
        self.steps_per_call, self.batch_size = steps_per_call, batch_size
        self.automatic_optimization = steps_per_call == 1

    def forward(self, x):
        return self.model(x)

    def configure_optimizers(self):
        # The model is on its device by now: bind the mask to these exact tensors.
        opt = build_optimizer(self.model.parameters(), self.optimizer_cfg)
        self.enforcer = MaskEnforcer(self.model, self.mask)
        self.enforcer.enforce()
        if self.automatic_optimization:
            self.enforcer.attach(opt)
        factor = lr_factor(self.optimizer_cfg)
        if factor is None:
            return opt
        offset = self.step_offset
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step + offset))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @property
    def step(self) -> int:
        """The lottery's step: Lightning's global step plus where training resumed."""
        return int(self.global_step) + self.step_offset

    def attached(self):
        """The Trainer fitting this module now, or None."""
        return attached_trainer(self)

    def on_fit_end(self) -> None:
        if self.enforcer is not None:
            self.enforcer.detach()

    def on_exception(self, exception: BaseException) -> None:
        """Remove the mask's hooks when training fails, as when it ends."""
        # The gradient hooks live on the model's parameters: never leave them behind.
        self.on_fit_end()

    def training_step(self, batch, batch_idx):
        if not self.automatic_optimization:
            return self._train_steps(batch)
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        if loss.device.type == "cpu" and not torch.isfinite(loss):  # free on the CPU; on a GPU, validation catches it
            raise NonFiniteLoss(f"the training loss is {float(loss.detach())} at step {self.step}")
        if self._log_now():
            self._log_train_loss(loss, self.step + 1)  # logged once the step is taken
        return loss

    def _train_steps(self, batch) -> None:
        """Several optimiser steps in one Lightning call: the same arithmetic, less Python.

        Lightning's automatic optimisation costs about 1.3 ms of hooks per step, a third of
        a LeNet-300-100 step on this CPU. Here each step is forward, backward, mask the
        gradients, step, schedule: exactly what the automatic loop does with the hooks of
        :meth:`MaskEnforcer.attach` (the results are bit-identical, tested), and Lightning's
        machinery runs once per ``steps_per_call`` steps. The lottery uses this path only
        when no callback needs a hook inside the step (see ``lottery.steps_per_call``).
        """
        lightning_opt = self.optimizers()
        opt = lightning_opt.optimizer
        sched = self.lr_schedulers()
        first, losses = self.step, []
        for x, y in self._steps(batch):
            step_losses = self._step_losses(x, y)
            opt.zero_grad(set_to_none=True)
            step_losses.sum().backward()
            self.enforcer.mask_grads()
            with counted_step(lightning_opt):  # Lightning's own step counter: global_step, max_steps
                opt.step()
            if sched is not None:
                sched.step()
            losses.append(step_losses.detach())
        losses = torch.stack(losses)  # (steps, networks)
        self._check_losses(losses, first)
        self._log_train_loss(losses.mean(), self.step)

    def _steps(self, batch):
        """The steps of a multi-step batch: ``(x, y)`` of ``batch_size`` examples each."""
        return zip(*(t.split(self.batch_size) for t in batch))

    def _step_losses(self, x, y):
        """The loss of each network trained here (one), as a 1-D tensor."""
        return F.cross_entropy(self.model(x), y).reshape(1)

    def _check_losses(self, losses, first: int) -> None:
        """Stop at a non-finite loss, naming the first step that had one."""
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            raise NonFiniteLoss(f"the training loss is {float(losses[bad].max())} at step {first + bad}")

    def _log_train_loss(self, loss, step: int) -> None:
        self.log(f"{self.log_prefix}train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("step", float(step), on_step=True, on_epoch=False)  # the loggers' x-axis: the lottery's step

    def _log_now(self) -> bool:
        """Log the training loss only on steps the logger writes: Lightning's ``self.log``
        costs about 1 ms a step on this CPU, a sixth of a LeNet-300-100 step."""
        trainer = attached_trainer(self)
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        return (self.global_step + 1) % max(1, every) == 0 or bool(getattr(trainer, "progress_bar_callback", None))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Our batches are always an ``(x, y)`` pair of tensors: move them directly instead of
        walking them with Lightning's generic collection mapper."""
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, reduction="mean")
        self.loss_mean[dataloader_idx].update(loss, weight=y.shape[0])
        self.acc[dataloader_idx].update(logits, y)

    def on_validation_epoch_end(self) -> None:
        density = self.density_fn() if self.density_fn else self.mask.density()  # masks may tighten mid-run
        row = {"step": self.step, "weights_remaining": density}
        for i, split in enumerate(EVAL_SPLITS):
            row[f"{split}_loss"] = float(self.loss_mean[i].compute())
            row[f"{split}_acc"] = float(self.acc[i].compute())
            self.loss_mean[i].reset()
            self.acc[i].reset()
        if not math.isfinite(row["val_loss"]):
            raise NonFiniteLoss(f"the validation loss is {row['val_loss']} at step {self.step}")
        if self.history and self.history[-1]["step"] == row["step"]:
            self.history[-1] = row  # a repeated evaluation at the same step (final check)
        else:
            self.history.append(row)
        self.log_dict({f"{self.log_prefix}{k}": v for k, v in row.items() if k != "step"}, add_dataloader_idx=False)
        self.log("step", float(self.step))
