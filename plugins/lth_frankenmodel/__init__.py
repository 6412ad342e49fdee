"""Frankenmodel: teach a ticket new classes with the capacity its pruning freed (PackNet).

A lottery ticket keeps a few percent of its network's weights; the rest are zero. This
plugin registers the ``lth extend`` command, which freezes every weight the ticket kept,
grows the output layer by units for new classes and trains only the freed weights (from
their θ0 values) and the new units on the new classes (Mallya & Lazebnik 2018, PackNet).
Each prunable weight records which task owns it (``ownership.safetensors``: 0 free, 1 the
ticket, 2 the first extension, ...); task ``t`` is evaluated with only the weights of tasks
``1..t``, so the ticket's logits on its own classes stay identical bit for bit. With
``extend.prune`` the new task gives back part of its weights for a further extension::

    lth run lenet300_fashion_mnist_classes04 --out runs/a        # a ticket for classes 0-4
    lth extend runs/a/round_8 --recipe frankenmodel_fashion_mnist --out runs/ab
    lth extend runs/ab --recipe R2 --out runs/abc                # again, from the extension
    lth report runs/ab --out report/ab

The recipe is an ordinary recipe (same model and data set as the ticket; its optimizer
and trainer train each variant) with an ``extend:`` mapping, a recipe section this plugin
registers (:class:`lth_frankenmodel.settings.ExtendSettings`): ``classes`` (required, new
labels), ``rehearsal`` (old-class examples per class mixed in, default 0), ``prune``
(default 0) and ``baselines`` (default true). ``lth run`` refuses such a recipe, naming
``lth extend``. ``DIR/extend.json`` holds every number: see :mod:`lth_frankenmodel.extend`;
``lth report DIR`` shows it through this plugin's report section ``extension``
(:mod:`lth_frankenmodel.report`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lth_core import hookimpl, load_recipe, quiet_lightning


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ticket", metavar="TICKET", help="a ticket folder (RUN/round_K) or an earlier `lth extend` folder")
    parser.add_argument("--recipe", required=True, help="recipe with an extend: section (a YAML file or a bundled recipe name)")
    parser.add_argument("--out", required=True, help="folder for the extended network and extend.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. extend.rehearsal=20")


def run(args: argparse.Namespace) -> int:
    from lth_frankenmodel.settings import read_settings

    recipe = load_recipe(args.recipe, args.set)
    read_settings(recipe)  # one line before torch loads if the recipe has no (valid) extend: section
    quiet_lightning()
    from lth_frankenmodel.extend import extend

    extend(Path(args.ticket), recipe, Path(args.out), say=lambda s: print(s, file=sys.stderr, flush=True))
    print(Path(args.out) / "extend.json")
    return 0


@hookimpl
def register_recipe_sections(register):
    from lth_frankenmodel.settings import ExtendSettings

    register("extend", ExtendSettings, command="extend", usage="lth extend TICKET --recipe RECIPE --out DIR")


@hookimpl
def register_commands(register):
    register("extend", run, help="teach a ticket new classes with the weights its pruning freed (PackNet)", configure=configure)


@hookimpl
def register_report_sections(register):
    from lth_frankenmodel.report import extension_sections, is_extension

    register("extension", is_extension, extension_sections)
