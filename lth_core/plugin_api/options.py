"""A recipe against the installed plugins: names, options and plugins' own recipe sections.

:func:`lth_core.config.validate` checks what lth itself reads; this module checks the rest,
the second stage of loading a recipe: every plugin name is registered, every plugin option
fits what the plugin declares, and every top-level key lth does not know is a recipe
section a plugin registered (``register_recipe_sections``), valid against its model.

A plugin's options are checked against a pydantic model: the one it registered
(``register(name, fn, options=MyOptions)``), a list of option names (criteria and rewind
policies: ``options=["batch_size"]``), or, for factories, one made from the factory's
keyword parameters and their annotations (:func:`signature_model`). Options are validated,
never rewritten: the recipe keeps them as written, and so does its hash.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from lth_core.config import TOP_LEVEL, Recipe, brief, options_of, parse, point_name, show_key
from lth_core.errors import LthError, PluginError, choices, did_you_mean
from lth_core.plugin_api.registry import Registry, get_registry, raised

SECTIONS_KIND = "recipe_sections"


def check_against_plugins(recipe: Recipe, registry: Registry, command: str | None = None) -> None:
    """Every plugin name in the recipe is registered; plugin options fit their factories,
    and ``lottery.criterion_options``/``rewind_options`` fit what the run's criteria and
    rewind policies read; every other top-level key is a registered section, valid, and
    (for ``command``, the command about to run) not another command's. Everything a run
    will look up, so a mistake fails before round 0."""
    check_sections(recipe, registry, command)
    r = recipe.data
    check_entry_options(registry.get("models", r["model"]["name"]), options_of("model", r["model"]), "model", skip=("input_shape", "num_classes"))
    check_entry_options(registry.get("datasets", r["data"]["name"]), options_of("data", r["data"]), "data")
    criteria = [registry.get("criteria", r["lottery"]["criterion"])]
    rewinds = [registry.get("rewind_policies", r["lottery"]["rewind"])]
    if r.get("init"):
        entry = registry.get("initializers", r["init"]["name"])
        check_entry_options(entry, options_of("init", r["init"]), f"init.{show_key(r['init']['name'])}", skip=("model", "generator"))
    for point, point_recipe in recipe.sweep_points():
        check_against_plugins(Recipe(point_recipe.data, f"{recipe.source} (sweep point {point_name(point)})"), registry, command)
    for c in r["callbacks"]:
        entry = registry.get("callbacks", c["name"])
        check_entry_options(entry, options_of("callbacks", c), f"callbacks.{show_key(c['name'])}", skip=("context",))
        if isinstance(c.get("criterion"), str) and c["criterion"] in registry.kinds["criteria"]:
            criteria.append(registry.get("criteria", c["criterion"]))  # gradual_pruning scores with it
    for c in r["controls"]:
        criterion, rewind = _control_plugins(c, registry)
        criteria += criterion
        rewinds += rewind
    _check_shared_options(r["lottery"]["criterion_options"], criteria, "criterion_options", ("criterion", "criteria"))
    _check_shared_options(r["lottery"]["rewind_options"], rewinds, "rewind_options", ("rewind policy", "rewind policies"))


# --- plugins' recipe sections ----------------------------------------------------------


def check_sections(recipe: Recipe, registry, command: str | None = None) -> None:
    """Each top-level key lth does not know is a registered section, and its content is
    valid against the section's model. ``command``: a section registered for another
    command (``extend:`` for ``lth extend``) is refused, naming the command to use."""
    sections = _sections(registry)
    for key, value in recipe.data.items():
        if key in TOP_LEVEL:
            continue
        if key not in sections:
            raise LthError(f"{recipe.source}: unknown key {key!r}{did_you_mean(key, [*TOP_LEVEL, *sections])}; valid: {choices([*TOP_LEVEL, *sections])}")
        if _empty(value):
            continue
        entry = sections[key]
        owner = entry.extra.get("command")
        if command is not None and owner is not None and owner != command:
            usage = entry.extra.get("usage") or f"lth {owner} ..."
            raise LthError(f"{recipe.source} has a {key}: section, read by `lth {owner}` (plugin {entry.plugin!r}), "
                           f"not by `lth {command}`: use `{usage}`")
        _validated(entry.obj, value, show_key(key), _owner(entry), recipe.source)


def section(recipe: Recipe, name: str, registry: Registry | None = None) -> BaseModel | None:
    """The recipe's section ``name`` read through the model its plugin registered: the
    validated model instance, defaults applied; None when the recipe has no such section
    (or an empty one). The recipe itself keeps the section as written (its hash too)."""
    registry = registry or get_registry()
    entry = _sections(registry).get(name)
    if entry is None:
        raise PluginError(f"no plugin registers the recipe section {name!r}; registered: {choices(_sections(registry))}")
    value = recipe.get(name)
    return None if _empty(value) else _validated(entry.obj, value, show_key(name), _owner(entry), recipe.source)


def _empty(value: Any) -> bool:
    """``extend:`` or ``extend: {}`` is no section (as if the key were absent)."""
    return value is None or value == {}


def _sections(registry) -> dict:
    """The registered sections, each a pydantic model class under a name lth does not use."""
    table = registry.kinds[SECTIONS_KIND]
    for entry in table.values():
        where = f"plugin {entry.plugin!r} registered the recipe section {entry.name!r}"
        if entry.name in TOP_LEVEL:
            raise PluginError(f"{where}, a key of lth's own recipe; choose another name")
        if not (isinstance(entry.obj, type) and issubclass(entry.obj, BaseModel)):
            raise PluginError(f"{where} with {brief(entry.obj)}; it must be a pydantic model class")
    return table


# --- plugin options ----------------------------------------------------------------------


def check_entry_options(entry, options: dict, where: str, skip: tuple = ()) -> None:
    """A factory's options (model, data set, initialiser, callback, merge strategy): against
    the model it registered with ``options=``, or else against its signature."""
    check_options(entry.obj, options, where, skip, declared_model(entry), _owner(entry))


def check_options(fn: Callable, options: dict, where: str, skip: tuple = (), model: type[BaseModel] | None = None,
                  owner: str = "a plugin's options model") -> None:
    """Check plugin options against ``model`` or ``fn``'s keyword parameters: names, required
    ones, and every annotated type (``list[int]``, ``float | None``, ``Literal[...]``)."""
    model = model or signature_model(fn, tuple(skip))
    if model.model_config.get("extra") != "allow":
        names = _option_names(model)
        for key in options:
            if key not in names:
                valid = choices(names) if names else "none (it takes no options)"
                raise LthError(f"unknown option {where}.{show_key(key)}{did_you_mean(key, names)}; valid: {valid}")
    _validated(model, options, where, owner)


def _validated(model: type[BaseModel], data: Any, where: str, owner: str, source: str | None = None) -> BaseModel:
    """:func:`lth_core.config.parse` of a plugin's model: a user's mistake is one line, and
    so is a bug in the model (a validator that raises, an undefined annotation), named."""
    try:
        return parse(model, data, where=where, source=source)
    except LthError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the plugin's model raised, say whose it was
        raise raised(f"the model of {owner}", exc) from exc


def _owner(entry) -> str:
    return f"{entry.name!r} (plugin {entry.plugin!r})"


def declared_model(entry) -> type[BaseModel] | None:
    """The options model a plugin registered (``options=Model``, or a list of names: any
    value), None when it declared none; a declaration of another kind is the plugin's bug."""
    declared = entry.extra.get("options")
    if declared is None:
        return None
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return declared
    if isinstance(declared, (str, bytes)) or not isinstance(declared, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in declared):
        raise PluginError(f"plugin {entry.plugin!r} registered {entry.name!r} with options={brief(declared)}; "
                          "it must be a list of option names or a pydantic model class")
    return _names_model(tuple(declared))


def plugin_options(entry) -> frozenset[str] | None:
    """The option names a criterion or rewind policy reads from ``context.options``: those
    it declared when it registered (``register(name, fn, options=["batch_size"])`` or
    ``options=Model``), or None when it declared nothing (then it may read any, and checks
    them when it runs)."""
    model = declared_model(entry)
    return None if model is None else frozenset(_option_names(model))


@functools.lru_cache(maxsize=None)
def _names_model(names: tuple[str, ...]) -> type[BaseModel]:
    """Options declared by name only: any value, none required."""
    return _model("declared_options", {n: (Any, None) for n in names}, extra="forbid")


def signature_model(fn: Callable, skip: tuple = ()) -> type[BaseModel]:
    """A pydantic model of ``fn``'s keyword parameters (those in ``skip`` are the core's):
    each annotation as the field's type (none, or one pydantic cannot check: anything),
    a parameter without default required. ``**kwargs`` lets other names through."""
    try:
        hash(fn)
    except TypeError:  # an unhashable callable object: no cache
        return _signature_model.__wrapped__(fn, skip)
    return _signature_model(fn, skip)  # once per factory


@functools.lru_cache(maxsize=None)
def _signature_model(fn: Callable, skip: tuple) -> type[BaseModel]:
    sig = inspect.signature(fn)
    hints = _hints(fn)
    fields = {
        name: (_checkable(hints.get(name, Any)), ... if p.default is p.empty else p.default)
        for name, p in sig.parameters.items()
        if name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return _model(f"{getattr(fn, '__name__', 'plugin')}_options", fields, extra="allow" if kwargs else "forbid")


def _model(name: str, fields: dict[str, tuple], extra: str) -> type[BaseModel]:
    """Fields under their own names as aliases (an option may be called ``json`` or ``_x``)."""
    config = ConfigDict(strict=True, extra=extra, arbitrary_types_allowed=True, protected_namespaces=())
    return create_model(name, __config__=config, **{
        f"option_{i}": (annotation, Field(default, alias=key)) for i, (key, (annotation, default)) in enumerate(fields.items())
    })


def _option_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _hints(fn: Callable) -> dict[str, Any]:
    """``fn``'s annotations as types (``from __future__ import annotations`` leaves strings);
    one that cannot be resolved is left out (unchecked)."""
    target = fn.__init__ if inspect.isclass(fn) else fn if inspect.isroutine(fn) else type(fn).__call__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - a name only imported for type checking, a typo in a plugin
        pass
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        try:
            text = p.annotation
            out[name] = eval(text, getattr(fn, "__globals__", {})) if isinstance(text, str) else text  # noqa: S307 - the plugin's own annotation
        except Exception:  # noqa: BLE001 - see above
            continue
    return {n: a for n, a in out.items() if a is not inspect.Parameter.empty}


def _checkable(annotation: Any) -> Any:
    """``annotation`` if pydantic can check a value against it (a tuple also taken as the
    YAML list it is written as), else ``Any``."""
    if (typing.get_origin(annotation) or annotation) is tuple:
        annotation = typing.Annotated[annotation, BeforeValidator(_list_as_tuple)]
    try:
        _model("probe", {"value": (annotation, None)}, extra="forbid")
    except Exception:  # noqa: BLE001 - pydantic refuses some annotations (protocols, unresolved names)
        return Any
    return annotation


def _list_as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _control_plugins(c: dict, registry) -> tuple[list, list]:
    """The registry entries of the criterion and rewind policy a control trains with.

    A control given by name alone is a registered one: its plugin chose them at
    registration (``register(name, criterion=..., rewind=...)``), and a name that is not
    installed would otherwise fail only after round 0 has trained.
    """
    if set(c) == {"name"}:
        entry = registry.get("controls", c["name"])
        criterion, rewind = entry.extra.get("criterion"), entry.extra.get("rewind")
        where = f"control {c['name']!r} (plugin {entry.plugin!r})"
        for kind, name in (("criterion", criterion), ("rewind", rewind)):
            if name is not None and not isinstance(name, str):
                raise PluginError(f"{where} registered {kind}={brief(name)}; it must be a registered {kind} name or None")
    else:
        criterion, rewind, where = c.get("criterion"), c.get("rewind"), f"control {c['name']!r}"
    found = []
    for kind, noun, name in (("criteria", "criterion", criterion), ("rewind_policies", "rewind policy", rewind)):
        if name and name not in registry.kinds[kind]:
            raise PluginError(f"{where} trains with {noun} {name!r}, which is not installed; installed: {choices(registry.kinds[kind])}")
        found.append([registry.get(kind, name)] if name else [])
    return found[0], found[1]


def _check_shared_options(options: dict, entries: list, key: str, nouns: tuple[str, str]) -> None:
    """``lottery.<key>`` reaches every criterion (or rewind policy) of the run: the lottery's,
    its controls' and a pruning callback's. A key none of them reads is a typo that would
    pass silently; a plugin that reads options without declaring them checks them itself.
    A plugin that declared an options model gets the keys it declares checked against it."""
    if not options:
        return
    unique = list({id(e): e for e in entries}.values())
    models = [declared_model(e) for e in unique]
    if any(m is None for m in models):
        return
    accepted = {n for m in models for n in _option_names(m)}
    for option in options:
        if option not in accepted:
            names = ", ".join(repr(e.name) for e in unique)
            noun = nouns[0] if len(unique) == 1 else nouns[1]
            valid = choices(accepted) if accepted else f"none ({'it reads' if len(unique) == 1 else 'they read'} no options)"
            raise LthError(f"unknown option lottery.{key}.{show_key(option)} for {noun} {names}{did_you_mean(option, accepted)}; valid: {valid}")
    for entry, model in zip(unique, models):
        names = _option_names(model)
        _validated(model, {k: v for k, v in options.items() if k in names}, f"lottery.{key}", _owner(entry))
