"""``lth install`` and ``lth uninstall``: pip, run inside lth's own interpreter.

``lth uninstall`` removes lth plugins only: an installed distribution without an entry point
in the ``lth`` group (torch, numpy, ...) or lth itself is refused before pip runs, so a
slip of the keyboard cannot take lth's own dependencies away. Registered through
``register_commands`` like a plugin's commands.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import runpy
import sys
from typing import Callable

from lth_core import hookimpl
from lth_core.errors import LthError


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    register("install", install, help="pip install plugins into lth's environment", configure=configure_install)
    register("uninstall", uninstall, help="pip uninstall plugins from lth's environment", configure=configure_uninstall)


def configure_install(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("packages", nargs="+")
    parser.add_argument("-U", "--upgrade", action="store_true")
    parser.add_argument("-e", "--editable", action="store_true")


def configure_uninstall(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("packages", nargs="+")
    parser.add_argument("-y", "--yes", action="store_true")


def _pip(*pip_args: str) -> int:
    """Run pip in this interpreter, so a plugin lands where lth runs (as llm does)."""
    argv = sys.argv
    sys.argv = ["pip", *pip_args]
    try:
        runpy.run_module("pip", run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def install(args: argparse.Namespace) -> int:
    extra = ["-e"] if args.editable else []
    return _pip("install", *(["--upgrade"] if args.upgrade else []), *extra, *args.packages)


def uninstall(args: argparse.Namespace) -> int:
    for package in args.packages:
        refuse_non_plugin(package)
    return _pip("uninstall", *(["-y"] if args.yes else []), *args.packages)


def refuse_non_plugin(package: str) -> None:
    """Refuse an installed distribution that is lth itself or registers no ``lth`` entry
    point; one that is not installed is left to pip (which says so)."""
    name = re.match(r"[A-Za-z0-9._-]*", package.strip()).group(0)
    try:
        dist = md.distribution(name)
    except (md.PackageNotFoundError, ValueError):
        return
    if re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() == "lth":
        raise LthError(f"lth uninstall removes lth plugins, and {package} is lth itself; use pip uninstall lth to remove lth")
    if not any(ep.group == "lth" for ep in dist.entry_points):
        raise LthError(f"lth uninstall removes lth plugins, and {dist.metadata['Name']} {dist.version} is not one (it has no entry "
                       "point in the lth group; lth and other software may need it): use pip uninstall if you really mean it")
