"""``lth run``: train a recipe's lottery into a run folder; ``--resume DIR`` continues one.

A run folder holds ``recipe.yaml`` (the validated recipe) and ``run.json`` (its hash),
written by :func:`lth_core.lottery.rounds.prepare_out_dir` before the first round. Resuming is
then exactly rerunning that recipe into that folder: finished tickets are reused and a
killed round continues from its last checkpoint (:mod:`lth_core.engines.checkpoints`).
Registered through ``register_commands`` like a plugin's command; torch loads inside :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from lth_core import hookimpl
from lth_core.errors import LthError
from lth_core.files import read_json

#: The model name a run of a user's own module records (:mod:`lth_core.lottery.user_code`).
USER_MODULE = "lightning_module"


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    register("run", run, help="run a recipe (a YAML file or a bundled recipe name)", configure=configure)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--out", help="run folder (default: runs/NAME-HASH); rerunning into it resumes")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR (a killed run resumes at its last checkpoint) with DIR/recipe.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. lottery.rate=0.1")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="print no progress (no bar, no per-run lines, no table): warnings, errors and the summary's path only")
    parser.add_argument("--accept-plugin-changes", action="store_true",
                        help="reuse finished rounds made by other versions of the run's plugins (refused otherwise; each ticket.json says which made it)")


def run(args: argparse.Namespace) -> int:
    """Load and check the recipe (mistakes fail before torch loads), then run its lottery
    through the Python API (:func:`lth_core.run` is this command)."""
    if args.resume is not None:
        resume_args(args)  # the run folder's own recipe.yaml, into that folder
    elif args.recipe is None:
        raise LthError("lth run needs a RECIPE (a YAML file or a bundled recipe name), or --resume DIR")
    recipe, pm = _checked(args)
    from lth_core.lottery.api import default_out, execute
    from lth_core.engines.collectives import is_writer
    out = Path(args.out) if args.out else default_out(recipe)
    if is_writer() and not args.quiet:  # data parallel: the other processes run the same command quietly
        print(f"lth: recipe {recipe.source} (hash {recipe.hash()}) -> {out}", file=sys.stderr)
    execute(recipe, pm, out, say=lambda s: print(s, file=sys.stderr, flush=True), accept_plugin_changes=args.accept_plugin_changes,
            quiet=args.quiet)
    if is_writer():
        if not args.quiet:
            print("\n".join(where_results(out, recipe, args)), file=sys.stderr)
        print(out / ("sweep.json" if recipe["sweep"] else "summary.json"))
    return 0


def where_results(out: Path, recipe, args: argparse.Namespace) -> list[str]:
    """The end of ``lth run``: where its summary, figures and W&B run are, and what to run next."""
    from lth_core.lottery.tracking import recorded_run

    if recipe["sweep"]:
        lines = [f"results in {out}: sweep.md (one line per point), each point's folder with its summary.json and report/"]
        return lines + [f"next: lth report {out}/POINT {out}/OTHER_POINT --out {out}/compare   (compare two points)"]
    figures = sorted(p.name for p in (out / "report").glob("*.png"))
    lines = [f"results in {out}:", "  summary.json      every run's measurements (the table above)"]
    if figures:
        lines.append(f"  report/report.md  tables and figures: {', '.join(figures)}")
    tracked = recorded_run(out) if recipe["trials"] == 1 else None
    if tracked:
        lines.append(f"  {tracked}")
    source = args.recipe if args.resume is None else str(out / "recipe.yaml")
    sets = "".join(f" --set {s}" for s in args.set if not s.startswith("lottery.rounds="))
    last = out / ("trial_0" if recipe["trials"] > 1 else "") / f"round_{1 if recipe['ticket'] else recipe['lottery']['rounds']}"
    more = recipe["lottery"]["rounds"] + 2
    lines += ["next:",
              f"  compare with another run:  lth report {out} OTHER_RUN --out compare",
              f"  more rounds, reusing these (or more trials):  lth run {source} --out {out}{sets} --set lottery.rounds={more}",
              f"  the last ticket as a compact torch program:  lth export {last} --out ticket.pt2"]
    return lines


def _checked(args: argparse.Namespace):
    """The recipe with its ``--set`` s, checked with the plugins (mistakes fail before torch
    loads); a mistake in a value a ``--set`` wrote names the ``--set``, not the file."""
    from lth_core.config import load_recipe, resolve_recipe_path
    from lth_core.config.overrides import blame_override
    from lth_core.lottery.api import prepared

    try:
        recipe = load_recipe(args.recipe, args.set)
        if recipe["model"]["name"] == USER_MODULE:
            raise LthError(f"{recipe.source} is a lottery of your own LightningModule ({recipe['model'].get('class', '?')}), "
                           "which `lth run` cannot build: run (or resume) it from Python with lth_core.run(recipe, out=DIR, "
                           "module=..., datamodule=...)")
        return prepared(recipe, command="run")  # plugin names and options too; a section of another command names it
    except LthError as exc:
        if not args.set or str(exc).startswith(f"recipe {args.recipe!r} not found"):
            raise
        raise type(exc)(blame_override(str(exc), str(resolve_recipe_path(args.recipe)), args.set)) from None


def run_folder_recipe(folder: Path) -> Path:
    """``folder/recipe.yaml`` when ``folder`` is a run folder; otherwise a one-line error."""
    if not folder.exists():
        raise LthError(f"--resume {folder}: no such folder")
    if not folder.is_dir():
        raise LthError(f"--resume {folder}: not a folder; give the --out folder of an earlier `lth run`")
    if (folder / "ticket.json").is_file():
        raise LthError(f"--resume {folder}: this is a ticket folder; give the run folder that holds it ({folder.parent})")
    recipe, record = folder / "recipe.yaml", folder / "run.json"
    if not recipe.is_file() or not record.is_file():
        missing = " and ".join(p.name for p in (recipe, record) if not p.is_file())
        raise LthError(f"--resume {folder}: not an lth run folder (no {missing}); give the --out folder of an earlier `lth run`")
    read_json(record)  # damage (not UTF-8, not JSON, not an object) is one line naming it
    _check_text(recipe)
    return recipe


def _check_text(path: Path) -> None:
    """Refuse a recipe.yaml that is not UTF-8 text here: the YAML reader would raise a
    UnicodeDecodeError traceback instead of naming the file."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LthError(f"{path} is corrupt: not UTF-8 text (byte {exc.start}); continue with `lth run RECIPE --out {path.parent}` and the run's original recipe") from None


def resume_args(args: argparse.Namespace) -> None:
    """Point ``lth run``'s arguments at the run folder's recipe and at the folder itself."""
    folder = Path(args.resume)
    if args.recipe is not None:
        raise LthError(f"--resume {folder} takes its recipe from {folder / 'recipe.yaml'}; give no RECIPE (or drop --resume and use --out)")
    if args.set:
        raise LthError("--resume continues the recorded recipe unchanged; --set would make it another run (use a new --out)")
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise LthError(f"--resume {folder} continues that folder; --out {args.out} names another (give one of them)")
    args.recipe, args.out = str(run_folder_recipe(folder)), str(folder)
