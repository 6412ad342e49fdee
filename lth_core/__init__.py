"""lth: lottery-ticket experiments on PyTorch Lightning, extended by plugins.

This module is the plugin SDK: every name a plugin may use is importable from
``lth_core`` itself (``from lth_core import Mask, hookimpl``), as ``pytest.fixture`` is
from ``pytest``. The bundled plugins use nothing else, as a third party must; the rest of
the package is private and may change in any release. The hooks a plugin implements are
documented in :mod:`lth_core.plugin_api.hookspecs`; ``docs/sdk.md`` lists every name
below with its signature.

Names load on first use, so ``import lth_core`` stays cheap (torch and Lightning are
imported by the names that need them, not by the commands that do not).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lth_core.plugin_api.hookspecs import hookimpl
from lth_core.version import __version__

#: Every SDK name -> (module that defines it, its name there).
SDK: dict[str, tuple[str, str]] = {}
#: The reference's sections (``docs/sdk.md``): title -> the names it documents, in order.
SECTIONS: dict[str, list[str]] = {}


def _export(section: str, module: str, *names: str) -> None:
    for name in names:
        local, _, there = name.partition("=")
        SDK[local] = (module, there or local)
        SECTIONS.setdefault(section, []).append(local)


_export("What hooks receive and return", "lth_core.plugin_api.contexts",
        "PruneContext", "RewindContext", "RoundContext", "MergeContext", "MergeResult")
_export("Plugins and the registry", "lth_core.plugin_api.registry",
        "Registry", "Entry", "get_plugin_manager", "get_registry", "call_plugin")
_export("Plugins and the registry", "lth_core.plugin_api.uses", "recipe_uses")
_export("Errors", "lth_core.errors", "LthError", "PluginError", "NonFiniteLoss", "choices", "one_line")
_export("Masks and pruning", "lth_core.tickets.mask", "Mask", "prunable_parameters", "apply_mask")
_export("Masks and pruning", "lth_core.tickets.pruning", "Allocation", "prune_by_scores", "keep_top", "match_density")
_export("Masks and pruning", "lth_core.tickets.distributions", "allocation_densities", "erk_densities", "layer_counts")
_export("Tickets", "lth_core.tickets.ticket", "Ticket", "save_ticket", "load_ticket", "is_ticket")
_export("Data", "lth_core.data.bundle", "DataBundle", "Normalization")
_export("Data", "lth_core.data.loaders", "DataModule")
_export("Data", "lth_core.data.streaming", "DatasetBundle")
_export("Running lth from Python", "lth_core.lottery.api", "run", "Summary")
_export("Recipes", "lth_core.config.recipe", "Recipe", "load_recipe")
_export("Recipes", "lth_core.config.yaml_io", "read_yaml")
_export("Recipes", "lth_core.plugin_api.options", "check_against_plugins", "section")
_export("Recipes", "lth_core.config.markers", "Expect", "Number")
_export("Recipes", "lth_core.config.explain", "option_error")
_export("Files", "lth_core.files", "atomic_path", "atomic_write_text", "atomic_write_tensors", "make_dir", "OutputError", "read_json", "sha256_file")
_export("Files", "lth_core.engines.collectives", "is_writer")
_export("Data parallel", "lth_core.engines.collectives", "mean_over_processes")
_export("Seeds", "lth_core.seeds", "derive_seed", "seeded_generator")
_export("Training runs (for commands that train, and callbacks that watch them)", "lth_core.engines.module", "LotteryModule")
_export("Training runs (for commands that train, and callbacks that watch them)", "lth_core.lottery.run",
        "Run", "Start", "build_model", "load_data")
_export("Training runs (for commands that train, and callbacks that watch them)", "lth_core.lottery.train", "train_run=train")
_export("Training runs (for commands that train, and callbacks that watch them)", "lth_core.quiet", "quiet_lightning")

__all__ = ["hookimpl", "__version__", *SDK]


def __getattr__(name: str) -> Any:
    """Load an SDK name from the module that defines it, on first use (PEP 562)."""
    if name not in SDK:
        raise AttributeError(f"module 'lth_core' has no attribute {name!r}")
    module, there = SDK[name]
    value = getattr(importlib.import_module(module), there)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SDK))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from lth_core.config.recipe import Recipe, load_recipe  # noqa: F401
    from lth_core.config.explain import option_error  # noqa: F401
    from lth_core.config.markers import Expect, Number  # noqa: F401
    from lth_core.config.yaml_io import read_yaml  # noqa: F401
    from lth_core.data.bundle import DataBundle, Normalization  # noqa: F401
    from lth_core.data.loaders import DataModule  # noqa: F401
    from lth_core.data.streaming import DatasetBundle  # noqa: F401
    from lth_core.engines.collectives import is_writer  # noqa: F401
    from lth_core.engines.module import LotteryModule  # noqa: F401
    from lth_core.errors import LthError, NonFiniteLoss, PluginError, choices, one_line  # noqa: F401
    from lth_core.files import OutputError, atomic_path, atomic_write_tensors, atomic_write_text, make_dir, read_json, sha256_file  # noqa: F401
    from lth_core.lottery.api import Summary, run  # noqa: F401
    from lth_core.lottery.run import Run, Start, build_model, load_data  # noqa: F401
    from lth_core.lottery.train import train as train_run  # noqa: F401
    from lth_core.plugin_api.contexts import MergeContext, MergeResult, PruneContext, RewindContext, RoundContext  # noqa: F401
    from lth_core.plugin_api.registry import Entry, Registry, call_plugin, get_plugin_manager, get_registry  # noqa: F401
    from lth_core.plugin_api.options import check_against_plugins, section  # noqa: F401
    from lth_core.plugin_api.uses import recipe_uses  # noqa: F401
    from lth_core.quiet import quiet_lightning  # noqa: F401
    from lth_core.seeds import derive_seed, seeded_generator  # noqa: F401
    from lth_core.tickets.mask import Mask, apply_mask, prunable_parameters  # noqa: F401
    from lth_core.tickets.pruning import Allocation, keep_top, match_density, prune_by_scores  # noqa: F401
    from lth_core.tickets.ticket import Ticket, is_ticket, load_ticket, save_ticket  # noqa: F401
