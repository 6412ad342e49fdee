"""Which plugins made a run: recorded in ``run.json`` and every ``ticket.json``, checked on reruns.

A recipe hash says what was asked; the plugins say what computed it. A criterion whose code
changed between two runs into one folder would otherwise give a summary whose early rounds
come from one version and later rounds from another, under one hash. So every plugin a run
uses is recorded with its distribution and version, and a rerun that would reuse rounds
made by another version of one of them (or without one of them) is refused, naming it,
unless the user accepts the change (``lth run --accept-plugin-changes``,
``lth_core.run(..., accept_plugin_changes=True)``).

A ticket's plugins are those whose registered names the recipe uses (model, data set,
criterion, rewind policy, control, callback, initialiser, recipe section; the controls'
and callbacks' own criteria included) and those whose ``round_callbacks`` added a
callback to that training run. ``run.json`` lists the first kind (the others are known
only as runs train). lth's own plugins are lth itself (its version is recorded as
``lth_version``). A plugin registered from Python without a distribution records ``null``
for both. A rerun compares every ticket's record with the plugins loaded now; tickets
written before this record existed carry none and are reused as they are.
"""

from __future__ import annotations

import ast
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from lth_core.errors import LthError
from lth_core.files import read_json
from lth_core.plugin_api.registry import is_core
from lth_core.plugin_api.uses import names_used

#: ``ticket.json`` and ``run.json`` key of the record.
KEY = "plugins"
ACCEPT_FLAG = "--accept-plugin-changes"

_accepting = False


@contextmanager
def accepting_changes(accept: bool) -> Iterator[None]:
    """For the block, reuse rounds made by other plugin versions (with a warning) instead
    of refusing them: what ``--accept-plugin-changes`` asks for one command."""
    global _accepting
    saved, _accepting = _accepting, bool(accept)
    try:
        yield
    finally:
        _accepting = saved


def _names(recipe: Any, registry: Any) -> list[tuple[str, str]]:
    """(kind, name) of everything registered that the recipe uses."""
    found = [(kind, n) for kind in ("models", "datasets", "criteria", "rewind_policies", "callbacks", "initializers")
             for n in names_used(recipe, registry, kind)]
    found += [("controls", c["name"]) for c in recipe["controls"]]
    found += [("recipe_sections", key) for key, value in recipe.data.items() if value not in (None, {})]
    return found


def _contributors(origins: Mapping[int, str] | None) -> set[str]:
    """Plugins named in the sources of a run's callbacks (``round_callbacks of plugin 'x'``)."""
    found = set()
    for source in (origins or {}).values():
        for quoted in re.findall(r"plugin ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", source):
            found.add(ast.literal_eval(quoted))
    return found


def _records(pm: Any, names: set[str]) -> list[dict]:
    """``{"name", "distribution", "version"}`` of the plugins ``names``, by name (not lth's own)."""
    dists = {pm.get_name(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name in sorted(n for n in names if n and not is_core(n)):
        dist = dists.get(name)
        out.append({"name": name, "distribution": dist.metadata["Name"] if dist else None,
                    "version": dist.metadata["Version"] if dist else None})
    return out


def plugins_used(recipe: Any, registry: Any, pm: Any, origins: Mapping[int, str] | None = None) -> list[dict]:
    """The plugins whose registered names ``recipe`` uses, and those that added callbacks
    to a training run (``origins``: the run's callback id -> source, as the core keeps it)."""
    names = {registry.kinds[kind][name].plugin for kind, name in _names(recipe, registry) if name in registry.kinds[kind]}
    return _records(pm, names | _contributors(origins))


def loaded(pm: Any) -> list[dict]:
    """Every plugin loaded now (what a rerun compares a ticket's record with)."""
    return _records(pm, {name for name, _ in pm.list_name_plugin()})


def _version(record: dict) -> str:
    where = f" from {record['distribution']}" if record.get("distribution") else ""
    return f"{record.get('version') or 'no version'}{where}"


def differences(recorded: list, now_loaded: list[dict]) -> list[str]:
    """How the plugins that made a ticket differ from those loaded now (theirs only)."""
    now = {p["name"]: p for p in now_loaded}
    out = []
    for p in recorded if isinstance(recorded, list) else []:
        if not isinstance(p, dict) or "name" not in p:
            continue
        current = now.get(p["name"])
        if current is None:
            out.append(f"plugin {p['name']!r} ({_version(p)}) made it, and it is not loaded now")
        elif (current["distribution"], current["version"]) != (p.get("distribution"), p.get("version")):
            out.append(f"plugin {p['name']!r} made it as {_version(p)}, and this run uses {_version(current)}")
    return out


def _ticket_records(out_dir: Path) -> Iterator[Path]:
    """The ``ticket.json`` of every finished run in a run folder (rounds and controls)."""
    for round_dir in sorted(out_dir.glob("round_*")):
        yield from (p for p in [round_dir / "ticket.json", *sorted(round_dir.glob("control_*/ticket.json"))] if p.is_file())


def check_made_by(out_dir: Path, now_loaded: list[dict], say: Callable[[str], None]) -> None:
    """Refuse to continue a run folder whose finished tickets were made by other versions
    of their plugins (or by plugins not loaded now), naming the first; with
    :func:`accepting_changes`, say so and go on. A damaged ``ticket.json`` is left to the
    ticket loader, which names it and says how to train that round again."""
    for path in _ticket_records(out_dir):
        try:
            record = read_json(path)
        except LthError:
            continue
        if KEY not in record:
            continue  # made before lth recorded plugins: nothing to compare
        changed = differences(record[KEY], now_loaded)
        if not changed:
            continue
        what = f"{path.parent.relative_to(out_dir)} in {out_dir}: {changed[0]}" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
        if _accepting:
            say(f"warning: {what}; reusing it anyway ({ACCEPT_FLAG})")
            continue
        raise LthError(f"{what}; reusing finished rounds would mix two versions under one recipe hash: rerun with "
                       f"{ACCEPT_FLAG} (lth_core.run(..., accept_plugin_changes=True)) to reuse them anyway, "
                       "or choose another --out")
