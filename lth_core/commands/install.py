"""``lth install`` and ``lth uninstall``: pip, run inside lth's own interpreter.

Registered through ``register_commands`` like a plugin's commands.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Callable

from lth_core import hookimpl


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
    return _pip("uninstall", *(["-y"] if args.yes else []), *args.packages)
