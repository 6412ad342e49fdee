"""``lth plugins`` and ``lth recipes``: what is installed and what is bundled.

Registered through ``register_commands`` like a plugin's commands.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from lth_core import hookimpl


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    register("plugins", plugins, help="list installed plugins and what they register",
             configure=lambda p: p.add_argument("--json", action="store_true", help="print JSON"))
    register("recipes", recipes, help="list bundled recipes",
             configure=lambda p: p.add_argument("--paths", action="store_true", help="show where each file is"))


def plugins(args: argparse.Namespace) -> int:
    """Every installed plugin (bundled or not) with the names it registers per kind; a
    plugin that fails to import is listed as broken (with the ways out), not a failure."""
    from lth_core.plugin_api.registry import describe_plugins, listing_plugin_manager

    broken: list[dict] = []
    described = describe_plugins(listing_plugin_manager(broken), broken)
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for p in described:
        print(f"{p['name']} ({p['distribution']} {p['version']})" + (f": BROKEN, {p['broken']}" if "broken" in p else ""))
        for kind, names in p["registers"].items():
            print(f"  {kind}: {', '.join(names)}")
    return 0


def recipes(args: argparse.Namespace) -> int:
    """Each bundled recipe with its description's first line."""
    from lth_core.config import bundled_recipes, read_yaml

    found = sorted(bundled_recipes().items())
    width = max((len(name) for name, _ in found), default=0) + 2  # one column of names, descriptions aligned after it
    for name, path in found:
        raw = read_yaml(path) or {}
        desc = raw.get("description", "") if isinstance(raw, dict) else ""
        print(f"{name:<{width}}{desc.strip().splitlines()[0] if desc else ''}".rstrip())
        if args.paths:
            print(f"{'':<{width}}{path}")
    return 0
