"""The Lightning side of one training run: its ``Trainer``, its batches, steps per call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lth_core.data.loaders import DataModule, StepChunks

#: Trainer settings under which several steps per Lightning call train exactly as one does.
MULTI_STEP_TRAINER = {"accelerator", "devices", "num_nodes", "strategy", "precision", "max_epochs", "max_steps",
                      "val_check_interval", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                      "deterministic", "benchmark"}


def steps_per_call(recipe: Any, callbacks: list) -> int:
    """How many optimiser steps one Lightning training call takes in this run.

    The recipe's ``steps_per_call`` (default 50) when nothing needs Lightning inside a step:
    no callback unless it says ``multi_step_safe = True`` (it only acts between calls), one
    device, 32-bit precision, no gradient clipping or accumulation. Otherwise 1: Lightning's
    automatic loop. It is cut to a divisor of ``val_check_interval`` so evaluations fall
    on the same steps either way.
    """
    t = recipe["trainer"]
    plain = (
        set(t) <= MULTI_STEP_TRAINER
        and str(t.get("strategy", "auto")) in ("auto", "single_device")
        and t.get("devices", 1) == 1 and t.get("num_nodes", 1) == 1
        and str(t.get("precision", "32-true")) in ("32", "32-true")
        and t.get("max_steps", -1) > 0
        and all(getattr(cb, "multi_step_safe", False) for cb in callbacks)
    )
    if not plain:
        return 1
    every = int(t.get("val_check_interval") or 1)
    return max(d for d in range(1, min(recipe["steps_per_call"], every) + 1) if every % d == 0)


def make_trainer(recipe: Any, logger: Any, out_dir: Path, start_step: int, callbacks: list, chunk: int = 1) -> pl.Trainer:
    """The recipe's ``Trainer`` for a run starting at ``start_step`` with ``chunk`` steps per call."""
    kwargs = dict(recipe["trainer"])
    if start_step and kwargs.get("max_steps", -1) > 0:
        kwargs["max_steps"] -= start_step  # resume the schedule at step k, end where it ends
    kwargs.setdefault("enable_progress_bar", False)  # lth's own line (lottery/progress.py) shows step, loss and ETA
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("log_every_n_steps", recipe["tracking"]["log_every_n_steps"])
    if chunk > 1:  # Lightning counts calls: evaluate and log on the same steps as one step per call
        kwargs["val_check_interval"] //= chunk
        kwargs["log_every_n_steps"] = max(1, kwargs["log_every_n_steps"] // chunk)
    return pl.Trainer(
        **kwargs,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        default_root_dir=str(out_dir),
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
    )


def train_loader(data: DataModule, start_step: int, max_steps: int, chunk: int = 1):
    """The training batches, starting at step ``start_step`` of the run's fixed data order
    (``chunk`` steps per item when several steps train per call)."""
    loader = data.train_loader(data.order_seed)
    if chunk > 1:
        return StepChunks(loader, start_step, max_steps, chunk)
    loader.epoch, loader.skip_batches = divmod(start_step, len(loader))
    return loader
