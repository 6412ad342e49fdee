"""``lth report``: figures and ``report.md`` from run folders (and what report sections claim).

Registered through ``register_commands`` like a plugin's command. Torch-free: the work is
in :mod:`lth_core.reporting.report`, which loads plugins only for a folder that is neither
a run nor one of lth's own kinds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from lth_core import hookimpl
from lth_core.errors import LthError


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    register("report", run, help="figures and report.md from run folders", configure=configure)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR")
    parser.add_argument("--out", help="folder for the PNG figures and report.md (default with one DIR: DIR/report)")
    parser.add_argument("--rounds", help="rounds for the training-curve figure, e.g. 0,3,7 (default: closest to the paper's levels)")
    parser.add_argument("--wandb", action="store_true", help="also log the figures and tables to a W&B run")
    parser.add_argument("--project", default="lth", help="W&B project for --wandb")


def run(args: argparse.Namespace) -> int:
    from lth_core.reporting.report import write_report

    rounds = None
    if args.rounds:
        try:
            rounds = [int(r) for r in args.rounds.split(",")]
        except ValueError:
            raise LthError(f"--rounds {args.rounds!r} must be comma-separated round numbers, e.g. 0,3,7") from None
    if args.out is None and len(args.dirs) > 1:
        raise LthError(f"lth report of {len(args.dirs)} folders needs --out FOLDER for the comparison "
                       f"(one folder's report goes to DIR/report by default)")
    args.out = args.out or str(Path(args.dirs[0]) / "report")
    report = write_report(args.dirs, args.out, rounds)
    if args.wandb:
        from lth_core.lottery.tracking import log_report_run

        log_report_run(args.dirs, args.out, project=args.project)
    print(report)
    return 0
