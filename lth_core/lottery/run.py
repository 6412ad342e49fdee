"""What one lottery needs, built once from a recipe: data, θ0, plugins, engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lth_core.config import Recipe
from lth_core.data.loaders import DataModule
from lth_core.data.streaming import DatasetBundle, StreamingData
from lth_core.engines.base import Engine
from lth_core.errors import LthError, PluginError
from lth_core.plugin_api import contracts
from lth_core.plugin_api.datasets import load_bundle
from lth_core.plugin_api.registry import Registry, call_plugin
from lth_core.seeds import seeded_generator
from lth_core.tickets.mask import choose_prunable


@dataclass
class Start:
    """Where a training run starts: weights, step (late rewinding) and optimiser settings."""

    weights: dict[str, Tensor]
    step: int = 0
    optimizer: dict = field(default_factory=dict)


@dataclass
class Run:
    """Everything one lottery needs, built once from a recipe.

    ``engine`` carries out its training runs (:mod:`lth_core.engines.base`): one process by
    default, data parallel or stacked beside other trials when the recipe asks for it.
    """

    recipe: Recipe
    out_dir: Path
    registry: Registry
    pm: Any
    data: DataModule
    model: nn.Module
    initial: dict[str, Tensor]
    logger: Any = None
    say: Callable[[str], None] = print
    rows: list[dict] = field(default_factory=list)
    controls: dict[str, list[dict]] = field(default_factory=dict)
    engine: Engine = field(default_factory=Engine)
    #: Builds a fresh model under a seed when the model is the user's own (``module=``).
    builder: Callable[[int], nn.Module] | None = None
    #: The lottery's clock and progress display (None: nothing shown, as in tests calling ``run_lottery``).
    progress: Any = None
    #: Recipe hashes whose finished tickets this lottery reuses: its own and, when more
    #: rounds or trials grew the folder, the ones it grew from (:mod:`lth_core.lottery.growth`).
    accepted: set[str] = field(default_factory=set)

    def new_model(self, seed: int) -> nn.Module:
        """A fresh, checked model of the recipe, initialised under ``seed``."""
        if self.builder is not None:
            return self.builder(seed)
        return build_model(self.recipe, self.registry, self.data, seed)


def build_model(recipe: Recipe, registry: Registry, data: DataModule, seed: int) -> nn.Module:
    """A fresh model of the recipe, checked: an ``nn.Module`` with prunable weights, finite
    after its initialisation, mapping a probe batch of the data to ``(batch, num_classes)``."""
    spec = recipe["model"]
    entry = registry.get("models", spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    pl.seed_everything(seed, verbose=False)
    source = f"model {spec['name']!r} (plugin {entry.plugin!r})"
    model = call_plugin(source, entry.obj, input_shape=data.input_shape, num_classes=data.num_classes, **options)
    contracts.check_model(model, source)
    choose_prunable(model, recipe["lottery"].get("prunable"))
    contracts.check_finite_weights(model, source)
    if recipe.data.get("init"):
        initialise(model, recipe["init"], registry, seed)
    contracts.probe(model, source, data)
    return model


def initialise(model: nn.Module, spec: dict, registry: Registry, seed: int) -> None:
    """Apply the recipe's registered initialisation; check what it returns before loading it."""
    entry = registry.get("initializers", spec["name"])
    source = f"initializer {spec['name']!r} (plugin {entry.plugin!r})"
    options = {k: v for k, v in spec.items() if k != "name"}
    values = call_plugin(source, entry.obj, model, seeded_generator(seed, spec["name"]), **options)
    params = dict(model.named_parameters())
    if not isinstance(values, dict):
        raise PluginError(f"{source} returned {type(values).__name__}, expected a dict of parameter name -> tensor")
    with torch.no_grad():
        for name, value in values.items():
            if name not in params:
                raise PluginError(f"{source} returned {name!r}, which is not a parameter of this model")
            problem = contracts.tensor_problem(value, params[name])
            if problem:
                raise PluginError(f"{source} returned {name} {problem}")
            params[name].copy_(value)
    contracts.check_finite_weights(model, source)  # it may also have written into the model itself


def load_data(recipe: Recipe, registry: Registry) -> DataModule:
    """The recipe's data set, checked (:meth:`DataBundle.check`) before anything trains on
    it, and shared with the other runs of this process that use it (:func:`load_bundle`)."""
    spec = recipe["data"]
    bundle = load_bundle(spec, registry)
    if isinstance(bundle, DatasetBundle):  # torch Datasets: streamed through DataLoader workers
        return StreamingData(bundle, spec["batch_size"], spec["eval_batch_size"], spec["val_size"], recipe["seed"], spec["subset"],
                             spec.get("order_seed"), spec.get("augment"), spec.get("workers", 2))
    return DataModule(bundle, spec["batch_size"], spec["eval_batch_size"], spec["val_size"], recipe["seed"], spec["subset"], spec.get("order_seed"),
                      spec.get("augment"))


#: What lth's own classifier measures at every evaluation (``lottery.monitor``/``test_metric``).
NATIVE_MONITORS, NATIVE_TESTS = ("val_loss", "val_acc"), ("test_acc",)


def check_native_measures(recipe: Recipe) -> None:
    """``lottery.monitor`` and ``test_metric`` name what lth's classifier records (a module
    of the user's own logs what it likes, checked when its run starts)."""
    lot = recipe["lottery"]
    for key, value, valid in (("monitor", lot["monitor"], NATIVE_MONITORS), ("test_metric", lot["test_metric"], NATIVE_TESTS)):
        if value not in valid:
            raise LthError(f"{recipe.source}: lottery.{key} is {value!r}; lth's classifier records {', '.join(valid)} "
                           "(a module of your own, lth_core.run(module=...), may log others)")
