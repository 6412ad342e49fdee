"""Running a registered criterion: its result is checked and turned into the new mask.

The lottery's rounds, its controls and callbacks that prune during training all prune
through here, so every criterion works with every allocation and is held to the same
contract (``register_criteria`` in :mod:`lth_core.plugin_api.hookspecs`).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from lth_core.errors import PluginError
from lth_core.plugin_api.registry import Registry, call_plugin
from lth_core.tickets.mask import Mask
from lth_core.tickets.pruning import select, validate_scores


def _call(registry: Registry, criterion: str, model: nn.Module, mask: Mask, context: Any, where: str) -> tuple[Any, str]:
    entry = registry.get("criteria", criterion)
    source = f"criterion {criterion!r} (plugin {entry.plugin!r}){where}"
    return call_plugin(source, entry.obj, model, mask, context), source


def prune_with(registry: Registry, criterion: str, model: nn.Module, mask: Mask, context: Any, where: str = "") -> Mask:
    """``mask`` pruned by ``criterion`` to ``context.allocation``: its scores' top-k per unit,
    or the mask it chose itself, checked to tighten ``mask`` to exactly those counts."""
    result, source = _call(registry, criterion, model, mask, context, where)
    return select(result, mask, context.allocation, source)


def scores_of(registry: Registry, criterion: str, model: nn.Module, mask: Mask, context: Any, where: str = "") -> Mapping[str, Tensor]:
    """``criterion``'s scores for ``mask`` (controls rank all weights afresh to match a
    ticket's per-layer density, so a criterion must give scores there, not a mask)."""
    result, source = _call(registry, criterion, model, mask, context, where)
    if isinstance(result, Mask):
        raise PluginError(f"{source} returned a Mask where a control needs scores to match the ticket's density per layer")
    validate_scores(result, mask, source)
    return result
