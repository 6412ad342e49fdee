"""Report sections: ``lth report`` on folders that are not lottery runs.

A section (hook ``register_report_sections``) claims the folders of its kind and renders
them. lth's own sections (``merge``, from :mod:`lth_core.commands.merge`) are asked first,
with no plugin loaded: plugins import torch, and ``lth report`` on runs and merges stays
torch-free. Only a folder none of them claims loads the plugins to ask theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lth_core.errors import LthError, PluginError, choices
from lth_core.plugin_api.registry import Entry, Registry, call_plugin, core_plugin_manager, get_registry, is_core


def claimed_sections(folders: list[Path]) -> list[tuple[Entry, list[Path]]]:
    """Each section with the folders it claims (in the user's order), sections in their
    registration order; a folder nobody claims is a one-line error naming it."""
    if not folders:
        return []
    missing = [f for f in folders if not f.is_dir()]
    if missing:  # nothing to read: say so without loading plugins
        raise LthError(f"{missing[0]} is not a finished run: no summary.json (no such folder)")
    registry = get_registry(core_plugin_manager())
    owners = _owners(registry, folders)
    if None in owners:
        registry = get_registry()  # a kind lth does not know: the plugins' sections may
        owners = _owners(registry, folders)
    if None in owners:
        raise LthError(_unclaimed(folders[owners.index(None)], registry))
    return [(entry, [f for f, owner in zip(folders, owners) if owner == name])
            for name, entry in registry.kinds["report_sections"].items() if name in owners]


def render_section(entry: Entry, folders: list[Path], out: Path) -> list[str]:
    """The section's ``report.md`` lines for ``folders`` (its figures go into ``out``)."""
    _, render = _functions(entry)
    lines = _call(entry, render, folders, out)
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise PluginError(f"{_source(entry)}: render returned {type(lines).__name__}, not a list of report.md lines (str)")
    return lines


def _owners(registry: Registry, folders: list[Path]) -> list[str | None]:
    """The name of the first section that claims each folder, or ``None``."""
    sections = registry.kinds["report_sections"].values()
    return [next((e.name for e in sections if _claims(e, folder)), None) for folder in folders]


def _claims(entry: Entry, folder: Path) -> bool:
    claims, _ = _functions(entry)
    answer = _call(entry, claims, folder)
    if not isinstance(answer, bool):
        raise PluginError(f"{_source(entry)}: claims returned {type(answer).__name__}, not True or False")
    return answer


def _functions(entry: Entry) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(claims, render)`` as registered with ``register(name, claims, render)``."""
    if not callable(entry.obj) or len(entry.args) != 1 or not callable(entry.args[0]):
        raise PluginError(f"plugin {entry.plugin!r} registered the report section {entry.name!r} without "
                          "its two functions: register(name, claims, render)")
    return entry.obj, entry.args[0]


def _call(entry: Entry, fn: Callable[..., Any], *args: Any) -> Any:
    """A plugin's code through :func:`call_plugin` (its bugs are one line naming it); lth's own
    keeps its traceback."""
    return fn(*args) if is_core(entry.plugin) else call_plugin(_source(entry), fn, *args)


def _source(entry: Entry) -> str:
    return f"report section {entry.name!r} (plugin {entry.plugin!r})"


def _unclaimed(folder: Path, registry: Registry) -> str:
    """What ``lth report`` reads, for a folder it cannot: finished runs and the sections' kinds."""
    return (f"{folder} is not a finished run: no summary.json (run `lth run RECIPE --out {folder}` first), "
            f"and no report section ({choices(registry.kinds['report_sections'])}) claims it")
