"""``lth run --resume DIR``: continue a run folder with the recipe it recorded.

A run folder holds ``recipe.yaml`` (the validated recipe) and ``run.json`` (its hash),
written by :func:`lth_core.lottery.rounds.prepare_out_dir` before the first round. Resuming is
then exactly rerunning that recipe into that folder: finished tickets are reused and a
killed round continues from its last checkpoint (:mod:`lth_core.engines.checkpoints`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lth_core.errors import LthError
from lth_core.files import read_json


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
