"""Which registered names a recipe uses, wherever it names them.

A plugin asks "does this recipe use my criterion (rewind policy, callback, ...)?" through
:func:`recipe_uses` instead of reading the recipe's layout: the lottery's own criterion and
rewind policy, each control's (given in the recipe or registered with the control), and
every callback option that a callback declared as naming one (``register(name, factory,
refers={"criterion": "criteria"})``; an option left out counts at its default).
"""

from __future__ import annotations

import inspect
from typing import Any

#: kind -> the ``lottery:`` key naming the lottery's own one, and a control's key for it.
_LOTTERY_KEYS = {"criteria": ("criterion", "criterion"), "rewind_policies": ("rewind", "rewind")}
_SECTION_NAMES = {"models": "model", "datasets": "data"}


def names_used(recipe: Any, registry: Any, kind: str) -> list[str]:
    """Every name of ``kind`` the recipe uses, in the order it uses them (no repeats)."""
    found: list[str] = []
    if kind in _LOTTERY_KEYS:
        lottery_key, control_key = _LOTTERY_KEYS[kind]
        found.append(recipe["lottery"][lottery_key])
        found += [_control_choice(c, registry, control_key) for c in recipe["controls"]]
    elif kind in _SECTION_NAMES:
        found.append(recipe[_SECTION_NAMES[kind]]["name"])
    elif kind == "initializers" and recipe["init"]:
        found.append(recipe["init"]["name"])
    elif kind == "callbacks":
        found += [c["name"] for c in recipe["callbacks"]]
    found += _callback_references(recipe, registry, kind)
    return [n for i, n in enumerate(found) if n and n not in found[:i]]


def recipe_uses(recipe: Any, registry: Any, kind: str, name: str) -> bool:
    """Does ``recipe`` use the registered ``name`` of ``kind`` anywhere?"""
    return recipe is not None and name in names_used(recipe, registry, kind)


def _control_choice(control: dict, registry: Any, key: str) -> str | None:
    """A control's criterion or rewind policy: given in the recipe, or registered with it."""
    if set(control) != {"name"}:
        return control.get(key)
    entry = registry.kinds["controls"].get(control["name"]) if registry is not None else None
    return entry.extra.get(key) if entry is not None else None


def _callback_references(recipe: Any, registry: Any, kind: str) -> list[str]:
    """Names of ``kind`` given as options of the recipe's callbacks that declared them."""
    if registry is None:
        return []
    found = []
    for spec in recipe["callbacks"]:
        entry = registry.kinds["callbacks"].get(spec["name"])
        if entry is None:
            continue
        for option, refers_to in (entry.extra.get("refers") or {}).items():
            if refers_to == kind:
                found.append(spec.get(option, _default(entry.obj, option)))
    return [n for n in found if isinstance(n, str)]


def _default(factory: Any, option: str) -> Any:
    """The default of a factory's keyword parameter (None when it has none)."""
    param = inspect.signature(factory).parameters.get(option)
    return None if param is None or param.default is inspect.Parameter.empty else param.default
