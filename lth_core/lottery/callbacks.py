"""The Lightning callbacks plugins add to a training run, and which plugin a failure is from."""

from __future__ import annotations

from typing import Any

from lth_core.errors import PluginError
from lth_core.plugin_api import contracts
from lth_core.plugin_api.contexts import RoundContext
from lth_core.plugin_api.registry import call_hook, call_plugin
from lth_core.plugin_api.uses import names_used


#: Kinds whose registered things may declare what they need collected while a run trains.
COLLECTORS = (("criteria", "criterion"), ("rewind_policies", "rewind policy"))


def plugin_callbacks(run: Any, ctx: RoundContext, origins: dict[int, str]) -> list:
    """The recipe's named callbacks, the collectors of the criteria and rewind policies the
    recipe uses (``register(..., collects=factory)``), then what plugins add through
    ``round_callbacks``.

    ``origins`` receives, per callback object, the plugin it came from: an error raised
    inside a callback during training is then reported naming that plugin.
    """
    callbacks: list = []

    def add(source: str, factory: Any, *args: Any, **kwargs: Any) -> None:
        cb = call_plugin(source, factory, *args, **kwargs)
        if cb is not None:
            callbacks.append(contracts.check_callback(cb, source))
            origins[id(cb)] = source

    for spec in run.recipe["callbacks"]:
        entry = run.registry.get("callbacks", spec["name"])
        add(f"callback {spec['name']!r} (plugin {entry.plugin!r})", entry.obj, ctx, **{k: v for k, v in spec.items() if k != "name"})
    for kind, noun in COLLECTORS:
        for name in names_used(run.recipe, run.registry, kind):
            entry = run.registry.get(kind, name)
            if entry.extra.get("collects") is not None:
                add(f"{noun} {name!r} (plugin {entry.plugin!r})", entry.extra["collects"], ctx)
    for source, extra in call_hook(run.pm, "round_callbacks", context=ctx):
        if not isinstance(extra, (list, tuple)):
            raise PluginError(f"{source} returned {type(extra).__name__}, expected a list of pytorch_lightning.Callback or None")
        for cb in extra:
            callbacks.append(contracts.check_callback(cb, source))
            origins[id(cb)] = source
    return callbacks


def culprit(exc: BaseException, origins: dict[int, str]) -> str | None:
    """The plugin whose callback raised ``exc``: the innermost frame of one of its methods."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in origins:
            found = origins[id(owner)]
        tb = tb.tb_next
    return found
