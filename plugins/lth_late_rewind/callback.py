"""The callback that saves θk during round 0 (imported when a recipe rewinds late)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from lth_core import RoundContext, atomic_write_tensors


class SaveRewindPoint(pl.Callback):
    """Saves the model's full state dict once, at lottery step ``k`` of round 0."""

    def __init__(self, k: int, path: Path, context: RoundContext) -> None:
        self.k, self.path, self.context, self.saved = k, path, context, False

    def _save(self, pl_module) -> None:
        run = self.context.module  # the lottery's view of the run
        if not self.saved and run.step == self.k:
            atomic_write_tensors(self.path, run.model.state_dict(), metadata={"step": str(self.k)})
            self.saved = True

    def state_dict(self) -> dict:
        return {"saved": self.saved}

    def load_state_dict(self, state_dict: dict) -> None:
        self.saved = state_dict["saved"]

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(pl_module)  # k = 0: θ0 as trained (mask already enforced)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._save(pl_module)  # after the optimiser step: module.step counts it
