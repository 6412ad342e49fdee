"""Finding plugins and collecting what they register.

Bundled and third-party plugins load the same way: from the ``lth`` entry-point group.
``LTH_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the entry points of the ``lth`` distribution
itself (the bundled plugins), like pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD. lth's own
commands are plugins too (:data:`CORE_PLUGINS`), registered before any entry point.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from lth_core.plugin_api import hookspecs
from lth_core.errors import LthError, PluginError, choices, did_you_mean, one_line

BUNDLED_DISTRIBUTION = "lth"
AUTOLOAD_ENV = "LTH_DISABLE_PLUGIN_AUTOLOAD"

#: lth's own features as plugins (pytest's ``default_plugins``): registered by module name
#: into every plugin manager before the entry points, so this layer never imports the
#: command layer. Each module is cheap to import: torch loads inside its commands.
CORE_PLUGINS = (
    "lth_core.commands.run",
    "lth_core.commands.report",
    "lth_core.commands.info",
    "lth_core.commands.install",
    "lth_core.commands.merge",
    "lth_core.commands.export",
)

#: registration hook -> (kind shown to users, singular noun for messages)
KINDS = {
    "register_criteria": ("criteria", "criterion"),
    "register_rewind_policies": ("rewind_policies", "rewind policy"),
    "register_controls": ("controls", "control"),
    "register_merge_strategies": ("merge_strategies", "merge strategy"),
    "register_models": ("models", "model"),
    "register_datasets": ("datasets", "data set"),
    "register_callbacks": ("callbacks", "callback"),
    "register_commands": ("commands", "command"),
    "register_initializers": ("initializers", "initializer"),
    "register_report_sections": ("report_sections", "report section"),
    "register_recipe_sections": ("recipe_sections", "recipe section"),
}


@dataclass
class Entry:
    """One registered thing: its name, the object, and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str
    extra: dict = field(default_factory=dict)
    args: tuple = ()  # positional values after ``obj`` (a report section's ``render``)


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.kinds: dict[str, dict[str, Entry]] = {k: {} for k, _ in KINDS.values()}
        self._collect()

    def _collect(self) -> None:
        for hook_name, (kind, noun) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                self._register(hook_name, plugin_name, impl.function, self._registrar(kind, noun, plugin_name))

    def _register(self, hook_name: str, plugin: str, fn: Callable, register: Callable) -> None:
        """Call one registration hook. An LthError (the registrar's refusal of a name, or the
        plugin's own) reads as written; any other exception of a plugin's is one line naming
        it; lth's own plugins keep their tracebacks."""
        try:
            fn(register=register)
        except LthError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in the plugin's registration
            if is_core(plugin):
                raise
            raise raised(f"{hook_name} of plugin {plugin!r}", exc) from exc

    def _registrar(self, kind: str, noun: str, plugin: str) -> Callable:
        table = self.kinds[kind]

        def register(name: str, obj: Any = None, *args: Any, **extra: Any) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin!r} registered a {noun} with an invalid name {name!r}")
            if name in table:
                raise PluginError(_clash(noun, name, table[name].plugin, plugin))
            table[name] = Entry(name, obj, plugin, extra, args)

        return register

    def get(self, kind: str, name: str) -> Entry:
        """Look up a registered name, or fail listing the valid choices."""
        noun = {k: n for k, n in KINDS.values()}[kind]
        table = self.kinds[kind]
        if name not in table:
            raise PluginError(f"unknown {noun} {name!r}{did_you_mean(name, table)}; installed: {choices(table)}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind`` (``criteria``, ``models``, ...), sorted."""
        return sorted(self.kinds[kind])


def is_core(plugin: str) -> bool:
    """A plugin name of lth itself (:data:`CORE_PLUGINS`): its code's bugs keep their traceback."""
    return plugin in CORE_PLUGINS


def _clash(noun: str, name: str, first: str, second: str) -> str:
    """Why a name cannot be registered twice: the plugin to rename, or the two to choose from."""
    if is_core(first) or is_core(second):
        other = second if is_core(first) else first
        return f"plugin {other!r} registers the {noun} {name!r}, which is built into lth; rename it"
    return f"{noun} {name!r} is registered by two plugins: {first!r} and {second!r}; uninstall one of them"


def _named(exc: LthError, source: str) -> LthError:
    """``exc`` with ``source`` in front (once), on one line, as a :class:`PluginError`.

    A subclass that says more (``NonFiniteLoss``) keeps its class, unless it has a
    constructor of its own (``ReplicaDiverged(replica, message)``), which a message alone
    cannot rebuild.
    """
    message = one_line(exc)
    if source not in message:
        message = f"{source}: {message}"
    keep = type(exc) is not LthError and type(exc).__init__ is LthError.__init__
    return type(exc)(message) if keep else PluginError(message)


def call_plugin(source: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run plugin code so that whatever goes wrong names ``source`` in one line.

    An :class:`LthError` it raises (a plugin's own explanation) gets ``source`` in front,
    unless its message already names it; anything else becomes a :class:`PluginError`.
    """
    try:
        return fn(*args, **kwargs)
    except LthError as exc:
        raise _named(exc, source) from exc
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raised, say whose it was
        raise raised(source, exc) from exc


def raised(source: str, exc: Exception) -> PluginError:
    """A plugin's exception that is not an LthError (a bug in it), as one line naming ``source``."""
    return PluginError(one_line(f"{source} raised {type(exc).__name__}: {exc}"))


def call_hook(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call event hook ``hook`` of every plugin, in pluggy's order, through :func:`call_plugin`.

    Returns ``(source, result)`` per plugin, ``source`` naming the plugin (for messages
    about what it returned). A hook with a wrapper implementation is left to pluggy, which
    alone knows how to run wrappers; its errors then name no plugin.
    """
    caller = getattr(pm.hook, hook)
    impls = list(reversed(caller.get_hookimpls()))  # pluggy calls the last registered first
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return [(f"{hook} hooks", r) for r in caller(**kwargs)]
    out = []
    for impl in impls:
        source = f"{hook} of plugin {pm.get_name(impl.plugin)!r}"
        result = call_plugin(source, impl.function, **{k: kwargs[k] for k in impl.argnames if k in kwargs})
        if result is not None:
            out.append((source, result))
    return out


def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group="lth"))


def _is_bundled(ep: md.EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.metadata["Name"] == BUNDLED_DISTRIBUTION


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def make_plugin_manager(autoload: bool | None = None, entry_points: bool = True,
                        broken: list[dict] | None = None) -> pluggy.PluginManager:
    """Create the plugin manager: lth's own plugins, then every plugin of the ``lth`` entry points.

    A plugin that fails to import, or two distributions claiming the same plugin name,
    raise :class:`PluginError` naming them and the ways out. ``entry_points=False`` loads
    lth's own alone. With a ``broken`` list, a plugin that fails to import is appended to
    it (``{"name", "distribution", "version", "broken"}``) and the others load: what ``lth
    plugins`` lists.
    """
    pm = pluggy.PluginManager("lth")
    pm.add_hookspecs(hookspecs)
    for module in CORE_PLUGINS:
        pm.register(importlib.import_module(module), name=module)
    if entry_points:
        _load_entry_points(pm, autoload, broken)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    return pm


def ways_out(ep: md.EntryPoint) -> str:
    """What a user can do about a plugin that fails to load."""
    dist = _dist_name(ep)
    if _is_bundled(ep):
        return "it is part of lth: reinstall lth (pip install --force-reinstall lth)"
    return (f"to run without it, set {AUTOLOAD_ENV}=1 (lth's bundled plugins only) or remove it: lth uninstall {dist}; "
            "lth --traceback ... shows where it failed")


def _load_entry_points(pm: pluggy.PluginManager, autoload: bool | None, broken: list[dict] | None = None) -> None:
    """Register the ``lth`` entry points' plugins (only the bundled ones without autoload)."""
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    seen: dict[str, md.EntryPoint] = {}
    for ep in _entry_points():
        if not autoload and not _is_bundled(ep):
            continue
        if ep.name in seen:
            if seen[ep.name].value == ep.value and _dist_name(seen[ep.name]) == _dist_name(ep):
                continue  # the same distribution seen twice on sys.path
            raise PluginError(
                f"two plugins are named {ep.name!r}: {seen[ep.name].value} (from {_dist_name(seen[ep.name])}) "
                f"and {ep.value} (from {_dist_name(ep)}); uninstall one of them"
            )
        seen[ep.name] = ep
        try:
            pm.load_setuptools_entrypoints("lth", name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            problem = one_line(f"{type(exc).__name__}: {exc}")
            if broken is None:
                raise PluginError(f"plugin {ep.name!r} ({ep.value}, from {_dist_name(ep)}) failed to load: {problem}; {ways_out(ep)}") from exc
            dist = getattr(ep, "dist", None)
            broken.append({"name": ep.name, "distribution": _dist_name(ep), "version": dist.metadata["Version"] if dist else None,
                           "broken": f"failed to load: {problem}; {ways_out(ep)}"})


_PM: pluggy.PluginManager | None = None
_CORE_PM: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _PM
    if _PM is None:
        _PM = make_plugin_manager()
    return _PM


def listing_plugin_manager(broken: list[dict]) -> pluggy.PluginManager:
    """The plugin manager ``lth plugins`` lists: the process-wide one when it is loaded
    (every plugin loaded, and any registered since), else one that collects the plugins
    failing to load into ``broken`` instead of stopping."""
    return _PM if _PM is not None else make_plugin_manager(broken=broken)


def core_plugin_manager() -> pluggy.PluginManager:
    """lth's own plugins alone: enough for its commands and the merge report, without
    importing any entry-point plugin (they import torch; ``lth report`` does not)."""
    global _CORE_PM
    if _CORE_PM is None:
        _CORE_PM = make_plugin_manager(entry_points=False)
    return _CORE_PM


def get_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """A fresh view of what the plugins register (cheap; re-read so tests can add plugins)."""
    return Registry(pm or get_plugin_manager())


def describe_plugins(pm: pluggy.PluginManager | None = None, broken: list[dict] | None = None) -> list[dict]:
    """Every loaded plugin with its version and the names it registers per kind (lth's own
    plugins are lth itself, not installed plugins: ``lth --help`` lists their commands),
    then the ``broken`` ones that failed to load (:func:`make_plugin_manager`), by name."""
    pm = pm or get_plugin_manager()
    registry = get_registry(pm)
    versions = {
        pm.get_name(plugin): dist.metadata["Version"] for plugin, dist in pm.list_plugin_distinfo()
    }
    dists = {pm.get_name(plugin): dist.metadata["Name"] for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda np: np[0]):
        if is_core(name):
            continue
        registers = {
            kind: sorted(e.name for e in table.values() if e.plugin == name)
            for kind, table in registry.kinds.items()
        }
        out.append(
            {
                "name": name,
                "version": versions.get(name),
                "distribution": dists.get(name),
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
                "registers": {k: v for k, v in registers.items() if v},
            }
        )
    return out + [{**b, "hooks": [], "registers": {}} for b in sorted(broken or [], key=lambda b: b["name"])]
