"""The user's own ``LightningModule`` factory and ``LightningDataModule`` as a lottery's
model and data (``lth_core.run(recipe, module=factory, datamodule=dm)``).

The recipe still says what the lottery does (rounds, rates, controls, trainer settings);
its ``model:`` and ``data:`` name the user's classes instead of registered plugins. What
cannot work with a module is a one-line error before anything trains (no prunable
weights, no test loader, a monitored or test metric the module does not log: both are
checked on one batch); what cannot be promised (the same batches after a resume, when the
user's loaders shuffle) is said once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lth_core.errors import LthError
from lth_core.plugin_api.hookspecs import hookimpl
from lth_core.tickets.mask import prunable_parameters

#: The names a run of the user's own code records as its model and data set.
MODEL, DATA = "lightning_module", "lightning_datamodule"


def qualname(obj: Any) -> str:
    """``package.module.Class`` of a class, a function or an instance's class."""
    kind = obj if isinstance(obj, type) or callable(obj) and not isinstance(obj, nn.Module) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', type(kind).__name__)}"


class RegistersUserCode:
    """Registers, for one call, the model and data-set names a run of user code records,
    so the recipe's ``model:`` and ``data:`` check like any (the run builds nothing from them)."""

    @hookimpl
    def register_models(self, register: Callable) -> None:
        register(MODEL, _built_by_lth_core_run)

    @hookimpl
    def register_datasets(self, register: Callable) -> None:
        register(DATA, _built_by_lth_core_run)


def _built_by_lth_core_run(*args: Any, **options: Any) -> None:
    raise LthError(f"{MODEL!r} and {DATA!r} name a user's own module and datamodule: run them with "
                   "lth_core.run(recipe, module=..., datamodule=...)")


def user_recipe(raw: dict, factory: Any, datamodule: Any) -> dict:
    """``raw`` with ``model:`` and ``data:`` naming the user's classes (kept in the recipe,
    hence in its hash: a run folder of another module is another run)."""
    raw = dict(raw)
    raw.setdefault("name", qualname(factory).rpartition(".")[2])  # runs/<Module>-HASH, the report's label
    for key, name, obj in (("model", MODEL, factory), ("data", DATA, datamodule)):
        given = raw.get(key)
        if given not in (None, name, {"name": name}) and not (isinstance(given, dict) and given.get("name") == name):
            raise LthError(f"recipe {key}: {given!r} names a registered {key}, and module=/datamodule= give your own; "
                           f"leave {key}: out of the recipe")
        raw[key] = {**(given if isinstance(given, dict) else {}), "name": name, "class": qualname(obj)}
    return raw


class ModuleData:
    """What the lottery reads of the user's datamodule outside training: the number of
    training batches (steps per epoch) and, for criteria that score on data, batches."""

    def __init__(self, datamodule: pl.LightningDataModule):
        self.datamodule = datamodule
        datamodule.prepare_data()
        datamodule.setup("fit")
        self.num_classes = self.input_shape = None

    def close(self) -> None:
        """Nothing to stop: Lightning shuts down the workers of the loaders it iterates."""

    def train_loader(self, seed: int = 0) -> Any:
        """The datamodule's training loader (its length: steps per epoch)."""
        return self.datamodule.train_dataloader()

    def sample_batch(self, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``size`` training examples, from the loader's first batches (its order, not ``seed``)."""
        xs, ys, n = [], [], 0
        for batch in self.train_loader():
            if not (isinstance(batch, (list, tuple)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
                raise LthError("this criterion scores on (inputs, labels) batches, and the datamodule's batches are not such pairs")
            xs.append(batch[0])
            ys.append(batch[1])
            n += batch[0].shape[0]
            if n >= size:
                break
        return torch.cat(xs)[:size], torch.cat(ys)[:size]


@dataclass
class UserCode:
    """The user's factory of fresh modules and their datamodule."""

    factory: Callable[[], pl.LightningModule]
    datamodule: pl.LightningDataModule

    def build(self, seed: int) -> pl.LightningModule:
        """A fresh module under ``seed``: its random initialisation is the run's θ0 (or, under
        another seed, the random-reinitialisation control's)."""
        pl.seed_everything(seed, verbose=False)
        module = self.factory()
        if not isinstance(module, pl.LightningModule):
            raise LthError(f"module= must build a pytorch_lightning.LightningModule, and {qualname(self.factory)} built {type(module).__name__}")
        if not prunable_parameters(module):
            raise LthError(f"{qualname(module)} has no prunable weights (the weight of an nn.Linear or nn.Conv layer)")
        return module

    def check(self, module: pl.LightningModule, monitor: str, test_metric: str) -> None:
        """One validation and one test batch: the metrics the lottery reads are logged."""
        if not isinstance(self.datamodule, pl.LightningDataModule):
            raise LthError(f"datamodule= must be a pytorch_lightning.LightningDataModule, got {type(self.datamodule).__name__}")
        for hook in ("val_dataloader", "test_dataloader"):
            if getattr(type(self.datamodule), hook) is getattr(pl.LightningDataModule, hook):
                raise LthError(f"{qualname(self.datamodule)} has no {hook}: the lottery picks the early-stopping step on "
                               "validation data and measures each ticket on test data")
        trainer = pl.Trainer(limit_val_batches=1, limit_test_batches=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
        with torch.random.fork_rng(devices=[]):
            for stage, metric, key in ((trainer.validate, monitor, "lottery.monitor"), (trainer.test, test_metric, "lottery.test_metric")):
                (logged,) = stage(module, datamodule=self.datamodule, verbose=False)
                if metric not in logged:
                    raise LthError(f"{key} is {metric!r}, which {qualname(module)} does not log "
                                   f"(it logs {', '.join(sorted(logged)) or 'nothing'}); log it or set {key}")
