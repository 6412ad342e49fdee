"""``lth export``: a ticket as a compact ``torch.export`` model that runs without lth.

Registered through ``register_commands`` like a plugin's command. The work (torch) is in
:mod:`lth_core.commands.exporting`, imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from lth_core import hookimpl


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    register("export", run, help="a ticket as a compact torch.export model that runs without lth; writes FILE and FILE.json",
             configure=configure)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ticket", metavar="TICKET", help="a ticket folder, e.g. RUN/round_10")
    parser.add_argument("--out", required=True, metavar="FILE", help="the exported program, e.g. model.pt2 (an existing FILE or FILE.json is refused)")
    parser.add_argument("--force", action="store_true", help="replace an existing FILE and FILE.json")
    parser.add_argument("--recipe", help="recipe for the model and data (default: the ticket's run folder's)")
    parser.add_argument("--sparse-below", type=float, default=0.3, metavar="DENSITY",
                        help="store fully connected layers at or below this weight density as nonzeros only (default 0.3; 0 = all dense)")


def run(args: argparse.Namespace) -> int:
    from lth_core.quiet import quiet_lightning
    from lth_core.commands.exporting import export_ticket, format_export

    quiet_lightning()
    record = export_ticket(args.ticket, args.out, recipe=args.recipe, sparse_below=args.sparse_below, force=args.force)
    print(format_export(record), file=sys.stderr)
    print(args.out)
    return 0
