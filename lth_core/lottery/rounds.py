"""The lottery: train, prune, rewind, repeat; with controls beside every round.

Round 0 trains the dense network. Each later round scores the weights with the recipe's
criterion, prunes by the allocation (per layer or global), rewinds the survivors with the
rewind policy and trains again (:mod:`lth_core.lottery.steps`). Named callbacks may prune
during training; a ticket's mask is the one in force when its training ends.

Every training run is one fit (:mod:`lth_core.lottery.train`). Every finished run is a
ticket folder (``round_<k>/`` or ``round_<k>/control_<name>/``) whose ``ticket.json`` is
written last; a rerun with the same recipe into the same folder reuses finished tickets
and continues, a killed run at its last checkpoint (:mod:`lth_core.engines.checkpoints`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import yaml
from torch import Tensor, nn

from lth_core.config import Recipe
from lth_core.plugin_api.options import check_against_plugins
from lth_core.config.parallel import declared_world
from lth_core.engines import data_parallel
from lth_core.engines.base import Engine
from lth_core.engines.foreign import Foreign
from lth_core.engines.collectives import is_writer, speaker
from lth_core.errors import LthError
from lth_core.files import atomic_write_text, make_dir, read_json
from lth_core.lottery import growth, tracking
from lth_core.lottery.run import Run, Start, build_model, check_native_measures, load_data
from lth_core.lottery.user_code import ModuleData, UserCode
from lth_core.lottery.steps import Level, check_rounds, prune_step, run_controls
from lth_core.lottery.summary import format_table, progress_line
from lth_core.lottery.train import train
from lth_core.plugin_api.provenance import check_made_by, loaded, plugins_used
from lth_core.reporting.report import write_report
from lth_core.plugin_api.registry import call_hook, get_plugin_manager, get_registry
from lth_core.tickets.mask import Mask, choose_prunable
from lth_core.tickets.pruning import Allocation
from lth_core.tickets.ticket import Ticket, load_ticket
from lth_core.version import __version__


def run_lottery(recipe: Recipe, out_dir: str | Path, say: Callable[[str], None] = print, pm=None, group: str | None = None,
                engine: Engine | None = None, code: UserCode | None = None, progress: Any = None,
                report: bool = False) -> dict:
    """Run a whole lottery and return (and write) ``summary.json``.

    With ``ticket: PATH`` in the recipe it does not search: round 0 trains the dense
    network from that ticket's start weights on this recipe's data, round 1 trains the
    transferred ticket itself (mask and start weights), with the controls beside it.
    Controls also run beside round 0 when a callback pruned during its training.
    ``engine`` carries out the training runs (default: data parallel when the recipe's
    trainer asks for several processes, else one process); ``code`` is the user's own
    module and datamodule, trained instead of the recipe's registered model and data.
    ``report`` writes ``out_dir/report`` (figures and ``report.md``) at the end; ``progress``
    (:mod:`lth_core.lottery.progress`) shows each run's step and the ETAs.
    """
    run, source = _setup(recipe, Path(out_dir), say, pm, group, engine, code)
    run.progress = progress
    total = 1 if source else recipe["lottery"]["rounds"]
    started = time.time()
    try:
        round0 = prev = _dense_round(run, total)
        for k in range(1, total + 1):
            if source:
                mask, start, origin = source.mask, Start(source.init, int(source.meta.get("start_step", 0)), recipe["optimizer"]), round0
                run.say(f"round 1/1: the transferred ticket from {recipe['ticket']} ({mask.density():.2%} of weights)")
            else:
                mask, start, origin = prune_step(run, k, prev, round0, Allocation.of_recipe(recipe, prev.mask))
                run.say(f"round {k}/{total}: pruned to {mask.density():.2%} of weights")
            prev = _ticket_run(run, k, total, mask, start)
            run_controls(run, k, total, prev.mask, start, origin)
    finally:
        run.data.close()  # streamed data: its worker processes stop here, not whenever the collector gets to them
    return _conclude(run, source, started, report)


def _setup(recipe: Recipe, out_dir: Path, say: Callable[[str], None], pm: Any, group: str | None,
           engine: Engine | None, code: UserCode | None = None) -> tuple[Run, Ticket | None]:
    """Plugins, data, θ0 and the run folder; every mistake a recipe can hold fails here,
    before the folder exists."""
    pm = pm or get_plugin_manager()
    registry = get_registry(pm)
    check_against_plugins(recipe, registry)
    data, model, builder, engine = _model_and_data(recipe, registry, engine, code)
    source = _transfer_source(recipe, model)
    check_rounds(recipe, Mask.ones_like(model))  # a wrong layer name, or rounds past the model's end, fail before any folder exists
    prepare_out_dir(recipe, out_dir, pm, say)  # before connect: a folder of another recipe stops one process
    world = data_parallel.connect(recipe)  # data parallel: start or join the other processes
    engine = engine or (data_parallel.DataParallel() if world > 1 else Engine())
    initial = source.init if source else {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    run = Run(recipe, out_dir, registry, pm, data, model, initial, say=speaker(say), engine=engine, builder=builder)
    run.accepted = growth.accepted_hashes(out_dir, recipe)  # this recipe's, and those the folder grew from
    run.logger = tracking.make_logger(recipe, out_dir, run.say, group=group) if is_writer() else None
    if code is not None:
        run.say("a module of your own: a killed run resumes at its last checkpoint (weights, optimisers, schedulers, "
                "history), then trains on what your loaders give next, not the very batches of an uninterrupted run")
    return run, source


def _model_and_data(recipe: Recipe, registry: Any, engine: Engine | None, code: UserCode | None) -> tuple:
    """The run's data and θ0 model, the builder of fresh models (the user's, else None: the
    recipe's registered model) and the engine (the user's module has its own)."""
    if code is None:
        check_native_measures(recipe)
        data = load_data(recipe, registry)
        return data, build_model(recipe, registry, data, recipe["seed"]), None, engine
    lot = recipe["lottery"]
    if (declared_world(recipe["trainer"]) or 1) > 1:
        raise LthError("a module of your own trains in one process here: set trainer.devices: 1 (data parallel runs "
                       "of lth_core.run(module=...) are not supported)")
    def build(seed: int) -> Any:
        return choose_prunable(code.build(seed), lot.get("prunable"))

    model = build(recipe["seed"])
    code.check(model, lot["monitor"], lot["test_metric"])
    return ModuleData(code.datamodule), model, build, Foreign(code.datamodule, lot["monitor"], lot["monitor_mode"], lot["test_metric"])


def _dense_round(run: Run, total: int) -> Level:
    """Round 0: the dense network (and the controls, when a callback pruned while it trained)."""
    dense = Mask.ones_like(run.model)
    run.say(f"round 0/{total}: dense network, {dense.total()} prunable weights")
    start0 = Start(run.initial, 0, run.recipe["optimizer"])
    round0 = _ticket_run(run, 0, total, dense, start0)
    if round0.mask.density() < 1.0:
        run_controls(run, 0, total, round0.mask, start0, Level(dense, round0.folder, round0.state, round0.weights))
    return round0


def _ticket_run(run: Run, k: int, total: int, mask: Mask, start: Start) -> Level:
    """Train round ``k``'s ticket; what it leaves behind for the rounds after it."""
    folder = run.out_dir / f"round_{k}"
    ticket, row, state = train(run, k, "ticket", mask, start, folder)
    run.rows.append(row)
    run.say(progress_line(row, "ticket", total))
    return Level(ticket.mask, folder, state, _unless_written(ticket))


def _unless_written(ticket: Ticket) -> dict[str, Tensor] | None:
    """A ticket's trained weights where this process did not write its folder (data
    parallel processes other than 0, which may not share rank 0's disk); else ``None``:
    they stay on disk, not in memory, while later rounds train."""
    return None if is_writer() else ticket.final


def _conclude(run: Run, source: Ticket | None, started: float, report: bool = False) -> dict:
    """``summary.json``, the report (when asked), the plugins' end-of-run hook, the W&B
    run's end (which logs the report's figures), the table."""
    recipe = run.recipe
    summary = {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash(),
        "rounds": run.rows,
        "controls": run.controls,
        "wall_time_s": round(time.time() - started, 2),
        "lth_version": __version__,
    }
    if source:
        summary["transferred_from"] = {"path": str(recipe["ticket"]), **{k: source.meta.get(k) for k in ("round", "data", "recipe_hash", "seed", "weights_remaining")}}
    if is_writer():
        atomic_write_text(run.out_dir / "summary.json", json.dumps(summary, indent=2))
        if report:
            write_report([run.out_dir], run.out_dir / "report")
    call_hook(run.pm, "on_run_end", summary=summary, out_dir=run.out_dir)
    tracking.finish(run.logger, summary, run.out_dir)
    run.say(format_table(summary))
    return summary


def prepare_out_dir(recipe: Recipe, out_dir: Path, pm: Any = None, say: Callable[[str], None] = print) -> None:
    """Refuse to mix two different recipes, or rounds of other plugin versions, in one
    folder; record what produced the run (the plugins it uses: :mod:`lth_core.plugin_api.provenance`)."""
    if not is_writer():  # data parallel: rank 0 keeps the run folder
        return
    pm = pm or get_plugin_manager()
    used = plugins_used(recipe, get_registry(pm), pm)
    make_dir(out_dir)
    run_json = out_dir / "run.json"
    if run_json.is_file():
        try:
            previous = read_json(run_json).get("recipe_hash")
        except LthError as exc:  # which recipe's rounds the folder holds is unknown: do not write over them
            raise LthError(f"{exc}; it says which recipe the folder's rounds belong to: choose another --out, "
                           "or delete it to run into this folder anyway") from None
        if previous and previous != recipe.hash():
            grown_from = growth.grows(out_dir, recipe, previous)
            if grown_from is None:
                raise growth.refusal(out_dir, recipe, previous)
            recorded = _recorded(out_dir)
            say(f"growing {out_dir}: {growth.differences(recorded, recipe.to_dict())}; its finished rounds and trials are reused")
            if recorded.get("trials", 1) == 1 and recipe["trials"] > 1:
                growth.nest_single_trial(out_dir, say)
        else:
            grown_from = read_json(run_json).get("grown_from", [])
    else:
        grown_from = []
    check_made_by(out_dir, loaded(pm), say)
    atomic_write_text(out_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    atomic_write_text(
        run_json,
        json.dumps(
            {"recipe_hash": recipe.hash(), **({"grown_from": grown_from} if grown_from else {}),
             "recipe_source": recipe.source, "lth_version": __version__,
             "command": " ".join(sys.argv), "torch": torch.__version__, "pytorch_lightning": pl.__version__, "plugins": used},
            indent=2,
        ),
    )


def _recorded(out_dir: Path) -> dict:
    """The recipe a run folder recorded (``recipe.yaml``), as a dict."""
    return yaml.safe_load((out_dir / "recipe.yaml").read_text(encoding="utf-8"))


def _transfer_source(recipe: Recipe, model: nn.Module) -> Ticket | None:
    """The ticket named by ``ticket:`` (found elsewhere), checked against this model."""
    if not recipe["ticket"]:
        return None
    return load_ticket(recipe["ticket"], model)
