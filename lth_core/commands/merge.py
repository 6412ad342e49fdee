"""``lth merge`` and the report section for its folders.

Registered through ``register_commands`` and ``register_report_sections`` like a plugin's.
The work (torch) is in :mod:`lth_core.commands.merging`, imported when the command runs;
the section (:mod:`lth_core.reporting.merge_report`) is torch-free, like ``lth report``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from lth_core import hookimpl
from lth_core.errors import LthError


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    register("merge", run, help="combine two or more tickets with a merge strategy; writes DIR/merge.json", configure=configure)


@hookimpl
def register_report_sections(register: Callable[..., None]) -> None:
    from lth_core.reporting.merge_report import is_merge_dir, merge_sections

    register("merge", is_merge_dir, merge_sections)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tickets", nargs="+", metavar="TICKET", help="ticket folders, e.g. RUN/round_3")
    parser.add_argument("--strategy", required=True, help="a registered merge strategy (see `lth plugins`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new folder for merge.json and the merged ticket")
    parser.add_argument("--recipe", help="recipe for the model, data and retraining (default: the first ticket's run folder's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="a strategy option, e.g. max_iter=50")
    parser.add_argument("--points", type=int, default=11, help="points on the linear path (>= 11)")


def _options(pairs: list[str]) -> dict:
    """``--option max_iter=50`` -> {"max_iter": 50}; values are read as YAML."""
    from lth_core.config import parse_override

    options = {}
    for text in pairs:
        path, value = parse_override(text)
        if len(path) != 1:
            raise LthError(f"--option {text!r} must look like name=value")
        options[path[0]] = value
    return options


def run(args: argparse.Namespace) -> int:
    from lth_core.quiet import quiet_lightning
    from lth_core.commands.merging import merge_tickets

    quiet_lightning()
    merge_tickets(args.tickets, args.strategy, args.out, recipe=args.recipe, overrides=args.set,
                  options=_options(args.option), points=args.points,
                  say=lambda s: print(s, file=sys.stderr, flush=True))
    print(Path(args.out) / "merge.json")
    return 0
