"""One training run of the lottery: the paper's step, from start weights to a saved ticket.

A run folder (``round_<k>/`` or ``round_<k>/control_<name>/``) that already holds a
finished ticket of this recipe is reused instead of trained again. How the fit itself
is carried out (one process, data parallel, stacked beside other trials) is the run's
engine's (:mod:`lth_core.engines.base`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from lth_core.engines import checkpoints
from lth_core.engines.base import Fit
from lth_core.engines.collectives import is_writer
from lth_core.engines.trainer import make_trainer
from lth_core.errors import LthError, NonFiniteLoss, PluginError, one_line
from lth_core.files import atomic_write_text, make_dir
from lth_core.lottery import tracking
from lth_core.lottery.callbacks import culprit, plugin_callbacks
from lth_core.lottery.progress import ProgressBar
from lth_core.lottery.run import Run, Start
from lth_core.lottery.summary import summarise
from lth_core.plugin_api import contracts
from lth_core.plugin_api.contexts import RoundContext
from lth_core.plugin_api.provenance import plugins_used
from lth_core.plugin_api.registry import call_hook
from lth_core.seeds import salt
from lth_core.tickets.mask import Mask, apply_mask
from lth_core.tickets.ticket import Ticket, save_ticket
from lth_core.version import __version__


def train(run: Run, round_: int, name: str, mask: Mask, start: Start, folder: Path,
          extra_callbacks: tuple = ()) -> tuple[Ticket, dict, dict]:
    """One training run from ``start`` under ``mask``; returns its ticket, row and state.

    The ticket's mask is the mask at the *end* of training (a callback may prune during
    training). ``state`` is what the round's callbacks collected for the next criterion.
    ``extra_callbacks`` join the recipe's and the plugins' (``lth extend`` freezes weights so).
    """
    reused = _reuse(run, round_, name, folder)
    if reused is not None:
        if run.progress is not None:
            run.progress.run_finished()
        return reused
    mask, start = run.engine.agree(run, mask, start)
    fit = _prepare(run, _begin(run, round_, name, mask, start, folder), start, extra_callbacks)
    began = time.monotonic()
    try:
        run.engine.fit(fit)
    except checkpoints.StaleCheckpoint as exc:
        run.say(f"warning: {exc}; round {round_} [{name}] trains from its start")
        if is_writer():  # data parallel: every process raised it; rank 0 keeps the folder
            checkpoints.discard(folder)
        return train(run, round_, name, mask, start, folder, extra_callbacks)
    except Exception as exc:
        problem = _explained(run, fit, exc)
        if problem is None:
            raise
        raise problem from (None if isinstance(problem, NonFiniteLoss) else exc)
    run.model.cpu()
    run.engine.verify(fit)
    if run.progress is not None:
        run.progress.run_finished(max(0, fit.module.step - fit.first_step), time.monotonic() - began)
    return _finish(run, fit, start)


def _reuse(run: Run, round_: int, name: str, folder: Path) -> tuple[Ticket, dict, dict] | None:
    """The finished ticket of this recipe in ``folder`` (its weights loaded into the model), or None."""
    ticket = run.engine.reuse(run, folder)
    if ticket is None or ticket.meta.get("recipe_hash") not in (run.accepted or {run.recipe.hash()}):
        return None
    run.model.load_state_dict(trained_weights(ticket, folder))
    run.say(f"round {round_} [{name}]: reusing finished ticket in {folder}")
    if is_writer():
        checkpoints.discard(folder)  # killed after the ticket was written, before this
    return ticket, ticket.meta["metrics"], checkpoints.load_round_state(folder, run.say)


def trained_weights(ticket: Ticket, folder: Path) -> dict:
    """A finished round's trained weights; a ticket saved without them cannot stand in for a round."""
    if ticket.final is None:
        raise LthError(f"ticket {folder} holds no trained weights (no final.safetensors); delete {Path(folder) / 'ticket.json'} "
                       "and rerun the same `lth run` to train that round again")
    return ticket.final


def derived_seed(recipe: Any, round_: int, name: str) -> int:
    """The seed of run ``name`` of round ``round_`` (training's RNG, a rewind's fresh weights)."""
    return (recipe["seed"] * 1_000_003 + round_ * 7919 + salt(name)) % (2**31 - 1)


def _begin(run: Run, round_: int, name: str, mask: Mask, start: Start, folder: Path) -> RoundContext:
    """The model at its start weights under ``mask``; the run's context, announced to plugins."""
    run.model.load_state_dict(start.weights)
    apply_mask(run.model, mask)
    ctx = RoundContext(recipe=run.recipe, round=round_, name=name, mask=mask, model=run.model, out_dir=folder,
                       registry=run.registry, data=run.data)
    make_dir(folder)
    call_hook(run.pm, "on_round_start", context=ctx)
    pl.seed_everything(derived_seed(run.recipe, round_, name), verbose=False)
    return ctx


def _prepare(run: Run, ctx: RoundContext, start: Start, extra_callbacks: tuple) -> Fit:
    """The module, callbacks and Trainer of this run, resumed at its checkpoint if it has one."""
    optimizer = start.optimizer or run.recipe["optimizer"]
    identity = checkpoints.identity(run.recipe.hash(), ctx.round, ctx.name, ctx.mask, start.weights, start.step, optimizer)
    saved = run.engine.resume_point(run, ctx.out_dir, identity)
    first = saved.step if saved else start.step
    ctx.module = run.engine.module(run, ctx, optimizer, first)
    origins: dict[int, str] = {}
    callbacks = plugin_callbacks(run, ctx, origins) + list(extra_callbacks) + run.engine.callbacks(ctx.module, origins)
    _hand_mask_to_owner(ctx, callbacks, origins)
    chunk = run.engine.steps_per_call(run, ctx.module, callbacks)
    if run.progress is not None and is_writer():  # after steps_per_call: it acts between calls only
        callbacks.append(_progress_bar(run, ctx, first))
    trainer = make_trainer(run.recipe, run.logger, run.out_dir, first, callbacks, chunk)
    return Fit(run, ctx, ctx.module, trainer, identity, start.step, saved, origins, extra_callbacks, chunk)


def _progress_bar(run: Run, ctx: RoundContext, first: int) -> ProgressBar:
    """The run's progress line: ``round k/N [name]`` (and the trial, when there are several)."""
    rounds = 1 if run.recipe["ticket"] else run.recipe["lottery"]["rounds"]
    trial = run.out_dir.name if run.out_dir.name.startswith("trial_") else None
    if trial and run.progress.together > 1:  # trials trained together show one line, trial 0's
        trial = f"trials 0-{run.progress.together - 1}"
    label = (f"{trial} " if trial else "") + f"round {ctx.round}/{rounds} [{ctx.name}]"
    steps = run.recipe["trainer"].get("max_steps", -1)
    return ProgressBar(run.progress, label, ctx.module, first, steps if steps and steps > 0 else 0)


def _hand_mask_to_owner(ctx: RoundContext, callbacks: list, origins: dict[int, str]) -> None:
    """The callback that owns the run's mask (``owns_mask = True``), if any, may grow it
    within the round's start mask; two owners would fight over it, so that is refused."""
    owners = [cb for cb in callbacks if getattr(cb, "owns_mask", False)]
    if len(owners) > 1:
        names = "; ".join(f"{origins.get(id(cb), 'a callback')} ({type(cb).__name__})" for cb in owners)
        raise PluginError(f"round {ctx.round} [{ctx.name}] has {len(owners)} callbacks that own the mask ({names}); "
                          "one callback at a time may grow and shrink it: keep one of them in the recipe")
    if owners:
        ctx.module.give_mask_to(origins.get(id(owners[0]), type(owners[0]).__name__), ctx.mask)


def _explained(run: Run, fit: Fit, exc: Exception) -> LthError | None:
    """What to tell the user about a failed fit (``None``: a bug in lth, keep the traceback).

    A diverged loss keeps the run's curve in ``failure.json``; an exception raised in a
    plugin's callback names the plugin; a mask a callback assigned without ``set_mask``
    names the callbacks that could have.
    """
    ctx = fit.context
    if isinstance(exc, NonFiniteLoss):
        run.model.cpu()
        failure = {"round": ctx.round, "run": ctx.name, "error": str(exc), "history": fit.module.history}
        if is_writer():
            atomic_write_text(Path(ctx.out_dir) / "failure.json", json.dumps(failure, indent=2))
        return NonFiniteLoss(
            f"round {ctx.round} [{ctx.name}] diverged: {exc}; nothing of it was saved as a ticket ({Path(ctx.out_dir) / 'failure.json'} "
            f"has its curve), earlier rounds in {run.out_dir} are kept; lower optimizer.lr or add warmup_steps"
        )
    source = culprit(exc, fit.origins)
    if source is None:  # the core broke: on a mask a callback assigned without set_mask?
        problem = contracts.mask_problem(ctx.mask, fit.module, weights=False)
        return None if problem is None else contracts.broken_mask(fit.origins, ctx.round, ctx.name, problem)
    what = str(exc) if isinstance(exc, LthError) else f"{type(exc).__name__}: {exc}"
    return PluginError(one_line(f"{source} failed in round {ctx.round} [{ctx.name}]: {what}"))


def _finish(run: Run, fit: Fit, start: Start) -> tuple[Ticket, dict, dict]:
    """Measure the trained run and save its ticket (the mask in force when training ended)."""
    ctx, module = fit.context, fit.module
    final_mask = contracts.check_final_mask(ctx.mask, module, fit.origins, ctx.round, ctx.name)
    lot = run.recipe["lottery"]
    row = summarise(module.history, ctx.round, final_mask, module.step, lot.get("monitor", "val_loss"),
                    lot.get("monitor_mode", "min"), lot.get("test_metric", "test_acc"), final_only=bool(module.mask_owner))
    row.update({k: v for k, v in ctx.metrics.items() if k not in row})
    meta = {"round": ctx.round, "run": ctx.name, "recipe_hash": run.recipe.hash(), "seed": run.recipe["seed"],
            "model": run.recipe["model"], "data": run.recipe["data"]["name"], "start_step": start.step,
            "optimizer": module.optimizer_cfg, "metrics": row, "lth_version": __version__,
            "plugins": plugins_used(run.recipe, run.registry, run.pm, fit.origins)}
    # Clone: on the CPU ``.cpu()`` aliases the live parameters, which the next round overwrites.
    trained = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    ticket = Ticket(final_mask, start.weights, trained, meta)
    if is_writer():  # data parallel: every process trained this ticket; one writes it
        _write_finished(Path(ctx.out_dir), ticket, module.history, ctx.state)
    call_hook(run.pm, "on_round_end", context=ctx, ticket=ticket, metrics=row)
    tracking.log_round(run.logger, row, ctx.name)
    tracking.log_ticket(run.logger, Path(ctx.out_dir), run.recipe, row, ctx.name)
    return ticket, row, ctx.state


def _write_finished(folder: Path, ticket: Ticket, history: list[dict], state: dict) -> None:
    """A finished run's files; ``ticket.json`` last, so a kill keeps all or no ticket."""
    atomic_write_text(folder / "curves.json", json.dumps(history, indent=1))
    checkpoints.save_round_state(folder, state)  # for the next round's criterion, also when this ticket is reused
    save_ticket(ticket, folder)
    checkpoints.discard(folder)  # the ticket supersedes the run's checkpoint
    (folder / "failure.json").unlink(missing_ok=True)  # an earlier attempt diverged; this one did not
