"""A recipe's data set through its plugin: checked, and held once per process while in use.

The data-set factory a recipe names (``data.name``, with the section's options) returns a
:class:`~lth_core.data.bundle.DataBundle` (tensors) or a
:class:`~lth_core.data.streaming.DatasetBundle` (torch ``Dataset``s, streamed); it is checked here before anything trains on
it, and ``data.classes`` is applied. Every run of a process that asks for the same data
set with the same options while an earlier bundle is still in use gets that bundle: the
trials trained together (``vectorize_trials``), every round and control of a lottery and
the trials of one ``lth run`` share one copy of the data instead of one each. Data-set
factories are expected to return the same data for the same options (they load a data
set); a bundle no run uses any more is freed, and the next request loads it again.

:func:`preload` is what ``lth run`` calls before importing Lightning: standardising the
byte data sets needs a transient float32 copy of the training images (0.19 GB for
Fashion-MNIST), which then comes and goes before Lightning's 0.3 GB arrive instead of on
top of them, which is what keeps the process's peak memory down.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from lth_core.config import Recipe, options_of
from lth_core.errors import LthError, PluginError
from lth_core.plugin_api.registry import Registry, call_plugin

_HELD: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_LOCK = threading.Lock()  # stacked trials load their data from their own threads


def load_bundle(spec: dict, registry: Registry) -> Any:
    """The data set a recipe's ``data:`` section names, checked, with its ``classes``
    selected; the bundle a run still uses when one asked for the same data set before."""
    from lth_core.data.bundle import DataBundle, select_classes
    from lth_core.data.streaming import DatasetBundle

    entry = registry.get("datasets", spec["name"])
    options = options_of("data", spec)
    key = json.dumps([spec["name"], entry.plugin, id(entry.obj), options, spec.get("classes")], sort_keys=True, default=repr)
    with _LOCK:
        bundle = _HELD.get(key)
        if bundle is not None:
            return bundle
        source = f"data set {spec['name']!r} (plugin {entry.plugin!r})"
        bundle = call_plugin(source, entry.obj, **options)
        if not isinstance(bundle, (DataBundle, DatasetBundle)):
            raise PluginError(f"{source} returned {type(bundle).__name__}, expected an lth_core.DataBundle or DatasetBundle")
        bundle.check(source)
        if isinstance(bundle, DatasetBundle):
            if spec.get("classes") is not None:
                raise LthError(f"data.classes: data set {spec['name']!r} streams from a Dataset, and only data held in "
                               "memory (a DataBundle) can keep some of its classes; remove data.classes")
        else:
            bundle = select_classes(bundle, spec.get("classes"))
        _HELD[key] = bundle
        return bundle


def preload(recipe: Recipe, registry: Registry) -> Any:
    """Load the recipe's data set now (see the module's docstring) and return it: the
    caller keeps it while the recipe runs, so every run of the recipe shares it. A sweep,
    whose points may name other data, loads nothing here (None)."""
    if recipe["sweep"]:
        return None
    return load_bundle(recipe["data"], registry)
