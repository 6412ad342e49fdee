"""The lottery: train, prune, rewind, repeat; with controls beside every round.

Round 0 trains the dense network. Each later round scores the weights with the recipe's
criterion, prunes by the allocation (per layer or global), rewinds the survivors with the
rewind policy and trains again. ``mode: one_shot`` instead prunes round 0's trained network
straight to each round's density; ``mode: at_init`` does the same from θ0 before any
training. Controls (random reinitialisation, random pruning, ...) train a variant of each
sparse round's ticket and never feed the next round. Named callbacks may prune during
training; a ticket's mask is the one in force when its training ends.

Every training run is one ``Trainer.fit``. Every finished run is a ticket folder
(``round_<k>/`` or ``round_<k>/control_<name>/``) whose ``ticket.json`` is written last; a
rerun with the same recipe into the same folder reuses finished tickets and continues, a
killed run at its last checkpoint (:mod:`lth_core.engines.checkpoints`).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import yaml
from torch import Tensor, nn

from lth_core import __version__
from lth_core.engines import checkpoints
from lth_core.plugin_api import contracts
from lth_core.engines import data_parallel as distributed
from lth_core.lottery import tracking
from lth_core.plugin_api.contexts import PruneContext, RewindContext, RoundContext
from lth_core.data.loaders import DataBundle, DataModule, StepChunks, select_classes
from lth_core.errors import LthError, NonFiniteLoss, PluginError, one_line
from lth_core.tickets.masks import Mask, apply_mask, match_density, prune_by_scores, validate_scores
from lth_core.engines.module import LotteryModule
from lth_core.plugin_api.registry import Registry, call_hook, call_plugin, get_plugin_manager, get_registry
from lth_core.config import Recipe
from lth_core.plugin_api.options import check_against_plugins
from lth_core.files import atomic_write_text, read_json
from lth_core.tickets.ticket import Ticket, is_ticket, load_ticket, save_ticket

LAST_LAYER_ALIAS = "last"


@dataclass
class Run:
    """Everything one lottery needs, built once from a recipe."""

    recipe: Recipe
    out_dir: Path
    registry: Registry
    pm: Any
    data: DataModule
    model: nn.Module
    initial: dict[str, Tensor]
    logger: Any = None
    say: Callable[[str], None] = print
    rows: list[dict] = field(default_factory=list)
    controls: dict[str, list[dict]] = field(default_factory=dict)
    #: Replaces ``trainer.fit`` as ``fit(run, module, trainer, start_step, keep)``: trials
    #: trained stacked hand their runs over through it (:mod:`lth_core.engines.lockstep`), each
    #: starting at ``start_step`` (a checkpoint's when resumed), and ``keep``
    #: (:class:`lth_core.engines.checkpoints.ReplicaKeep`) says where its checkpoints go.
    fit: Callable[..., None] | None = None

    def new_model(self, seed: int) -> nn.Module:
        return build_model(self.recipe, self.registry, self.data, seed)


def build_model(recipe: Recipe, registry: Registry, data: DataModule, seed: int) -> nn.Module:
    """A fresh model of the recipe, checked: an ``nn.Module`` with prunable weights, finite
    after its initialisation, mapping a probe batch of the data to ``(batch, num_classes)``."""
    spec = recipe["model"]
    entry = registry.get("models", spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    pl.seed_everything(seed, verbose=False)
    source = f"model {spec['name']!r} (plugin {entry.plugin!r})"
    model = call_plugin(source, entry.obj, input_shape=data.input_shape, num_classes=data.num_classes, **options)
    contracts.check_model(model, source)
    contracts.check_finite_weights(model, source)
    if recipe.data.get("init"):
        initialise(model, recipe["init"], registry, seed)
    contracts.probe(model, source, data)
    return model


def initialise(model: nn.Module, spec: dict, registry: Registry, seed: int) -> None:
    """Apply the recipe's registered initialisation; check what it returns before loading it."""
    entry = registry.get("initializers", spec["name"])
    source = f"initializer {spec['name']!r} (plugin {entry.plugin!r})"
    options = {k: v for k, v in spec.items() if k != "name"}
    values = call_plugin(source, entry.obj, model, _generator(seed, _salt(spec["name"])), **options)
    params = dict(model.named_parameters())
    if not isinstance(values, dict):
        raise PluginError(f"{source} returned {type(values).__name__}, expected a dict of parameter name -> tensor")
    with torch.no_grad():
        for name, value in values.items():
            if name not in params:
                raise PluginError(f"{source} returned {name!r}, which is not a parameter of this model")
            problem = contracts.tensor_problem(value, params[name])
            if problem:
                raise PluginError(f"{source} returned {name} {problem}")
            params[name].copy_(value)
    contracts.check_finite_weights(model, source)  # it may also have written into the model itself


def load_data(recipe: Recipe, registry: Registry) -> DataModule:
    """The recipe's data set, checked (:meth:`DataBundle.check`) before anything trains on it."""
    from lth_core.config import options_of

    spec = recipe["data"]
    entry = registry.get("datasets", spec["name"])
    options = options_of("data", spec)
    source = f"data set {spec['name']!r} (plugin {entry.plugin!r})"
    bundle = call_plugin(source, entry.obj, **options)
    if not isinstance(bundle, DataBundle):
        raise PluginError(f"{source} returned {type(bundle).__name__}, expected an lth_core.data.loaders.DataBundle")
    bundle.check(source)
    bundle = select_classes(bundle, spec.get("classes"))
    return DataModule(bundle, spec["batch_size"], spec["eval_batch_size"], spec["val_size"], recipe["seed"], spec["subset"], spec.get("order_seed"))


def _resolve_layer_key(key: str, names: list[str]) -> list[str]:
    """Parameter names a ``layer_rates`` key means: exact name, module, ``last`` or a glob."""
    if key in names:
        return [key]
    if f"{key}.weight" in names:
        return [f"{key}.weight"]
    if key == LAST_LAYER_ALIAS:
        return [names[-1]]
    matched = [n for n in names if fnmatch.fnmatchcase(n, key) or fnmatch.fnmatchcase(n.rsplit(".", 1)[0], key)]
    if not matched:
        raise LthError(f"lottery.layer_rates.{key}: no such prunable layer; valid: {', '.join(names)}, {LAST_LAYER_ALIAS}, or a glob such as conv*")
    return matched


def layer_rates(recipe: Recipe, mask: Mask) -> tuple[dict[str, float], list[str]]:
    """Per-parameter pruning rates, and the layers pooled by global pruning.

    ``lottery.layer_rates`` keys are parameter names (``fc3.weight``), module names
    (``fc3``), ``last`` (the last prunable layer, e.g. the paper's output layer at half
    rate) or glob patterns over module names (``conv*``: the paper's Conv-2/4/6 prune
    convolutions at their own rate). Later keys win. Layers with an override keep their
    own rate under global pruning too.
    """
    lot = recipe["lottery"]
    names = list(mask)
    rates = {n: lot["rate"] for n in names}
    overridden = set()
    for key, rate in lot["layer_rates"].items():
        for target in _resolve_layer_key(str(key), names):
            rates[target] = float(rate)
            overridden.add(target)
    pooled = [n for n in names if n not in overridden] if lot["scope"] == "global" else []
    return rates, pooled


def compound(rates: dict[str, float], k: int) -> dict[str, float]:
    """The one-shot rate that reaches, in one step, what ``k`` iterative rounds reach."""
    return {n: 1.0 - (1.0 - r) ** k for n, r in rates.items()}


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _derived_seed(recipe: Recipe, round_: int, salt: int) -> int:
    return (recipe["seed"] * 1_000_003 + round_ * 7919 + salt) % (2**31 - 1)


def _salt(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003


@dataclass
class Start:
    """Where a training run starts: weights, step (late rewinding) and optimiser settings."""

    weights: dict[str, Tensor]
    step: int = 0
    optimizer: dict = field(default_factory=dict)


def score(run: Run, criterion: str, model: nn.Module, mask: Mask, round_: int, state: dict,
          rates: dict | None = None, pooled: list | None = None) -> dict[str, Tensor]:
    entry = run.registry.get("criteria", criterion)
    lot = run.recipe["lottery"]
    ctx = PruneContext(
        initial={n: run.initial[n] for n in mask},
        generator=_generator(run.recipe["seed"], round_, _salt(criterion)),
        round=round_,
        data=run.data,
        state=state,
        options=dict(lot["criterion_options"]),
        rates=dict(rates or {}),
        scope=lot["scope"],
        pooled=list(pooled or []),
    )
    source = f"criterion {criterion!r} (plugin {entry.plugin!r})"
    scores = call_plugin(source, entry.obj, model, mask, ctx)
    validate_scores(scores, mask, source)
    return scores


def rewind(run: Run, policy: str, model: nn.Module, mask: Mask, round_: int) -> Start:
    """Call a rewind policy; it returns weights and may move the start step or optimiser."""
    entry = run.registry.get("rewind_policies", policy)
    seed = _derived_seed(run.recipe, round_, _salt(policy))
    ctx = RewindContext(
        initial=run.initial,
        generator=_generator(seed),
        seed=seed,
        round=round_,
        new_model=lambda: run.new_model(seed),
        options=dict(run.recipe["lottery"]["rewind_options"]),
        run_dir=run.out_dir,
        optimizer=copy.deepcopy(run.recipe["optimizer"]),
        max_steps=run.recipe["trainer"].get("max_steps", -1),
        steps_per_epoch=len(run.data.train_loader(0)),
    )
    source = f"rewind policy {policy!r} (plugin {entry.plugin!r})"
    state = contracts.check_state(call_plugin(source, entry.obj, model, mask, ctx), model.state_dict(), source)
    max_steps = ctx.max_steps
    if not isinstance(ctx.start_step, int) or ctx.start_step < 0 or (max_steps > 0 and ctx.start_step >= max_steps):
        raise PluginError(f"{source} set start_step={ctx.start_step!r}; it must be a step in [0, trainer.max_steps={max_steps})")
    return Start(_share_initial(state, run.initial), ctx.start_step, ctx.optimizer)


def _share_initial(state: dict[str, Tensor], initial: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state``, sharing θ0's tensors where a value equals θ0 exactly.

    Rewinding to θ0 then costs no second copy of the weights (θ0 is never written to).
    """
    out = {}
    for n, t in state.items():
        t, ref = t.detach().to("cpu"), initial.get(n)
        same = ref is not None and ref.shape == t.shape and ref.dtype == t.dtype and torch.equal(ref, t)
        out[n] = ref if same else t.clone()
    return out


def summarise(history: list[dict], round_: int, mask: Mask, steps: int) -> dict:
    """The paper's measurements from a run's evaluation history.

    Early stopping only looks at evaluations made under the run's final mask: when a
    callback pruned during training, an earlier, denser network is not this ticket.
    """
    if not history:
        raise LthError("a round finished with no evaluation: set trainer.max_steps >= 1")
    density = mask.density()
    finite = [h for h in history if math.isfinite(h["val_loss"]) and h.get("weights_remaining", density) == density]
    best = min(finite, key=lambda h: h["val_loss"]) if finite else history[-1]
    last = history[-1]
    return {
        "round": round_,
        "weights_remaining": mask.density(),
        "early_stop_step": int(best["step"]),
        "val_loss_min": float(best["val_loss"]),
        "val_acc": float(best["val_acc"]),
        "test_acc": float(best["test_acc"]),
        "test_acc_final": float(last["test_acc"]),
        "steps": int(steps),
    }


def _callbacks(run: Run, ctx: RoundContext, origins: dict[int, str]) -> list:
    """The recipe's named callbacks, then whatever plugins add through ``round_callbacks``.

    ``origins`` receives, per callback object, the plugin it came from: an error raised
    inside a callback during training is then reported naming that plugin.
    """
    callbacks = []
    for spec in run.recipe["callbacks"]:
        entry = run.registry.get("callbacks", spec["name"])
        options = {k: v for k, v in spec.items() if k != "name"}
        source = f"callback {spec['name']!r} (plugin {entry.plugin!r})"
        cb = call_plugin(source, entry.obj, ctx, **options)
        if cb is not None:
            callbacks.append(contracts.check_callback(cb, source))
            origins[id(cb)] = source
    for source, extra in call_hook(run.pm, "round_callbacks", context=ctx):
        if not isinstance(extra, (list, tuple)):
            raise PluginError(f"{source} returned {type(extra).__name__}, expected a list of pytorch_lightning.Callback or None")
        for cb in extra:
            callbacks.append(contracts.check_callback(cb, source))
            origins[id(cb)] = source
    return callbacks


def _culprit(exc: BaseException, origins: dict[int, str]) -> str | None:
    """The plugin whose callback raised ``exc``: the innermost frame of one of its methods."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in origins:
            found = origins[id(owner)]
        tb = tb.tb_next
    return found


#: Trainer settings under which several steps per Lightning call train exactly as one does.
MULTI_STEP_TRAINER = {"accelerator", "devices", "num_nodes", "strategy", "precision", "max_epochs", "max_steps",
                      "val_check_interval", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                      "deterministic", "benchmark"}


def steps_per_call(recipe: Recipe, callbacks: list) -> int:
    """How many optimiser steps one Lightning training call takes in this run.

    The recipe's ``steps_per_call`` (default 50) when nothing needs Lightning inside a step:
    no callback unless it says ``multi_step_safe = True`` (it only acts between calls), one
    device, 32-bit precision, no gradient clipping or accumulation. Otherwise 1: Lightning's
    automatic loop. It is cut to a divisor of ``val_check_interval`` so evaluations fall
    on the same steps either way.
    """
    t = recipe["trainer"]
    plain = (
        set(t) <= MULTI_STEP_TRAINER
        and str(t.get("strategy", "auto")) in ("auto", "single_device")
        and t.get("devices", 1) == 1 and t.get("num_nodes", 1) == 1
        and str(t.get("precision", "32-true")) in ("32", "32-true")
        and t.get("max_steps", -1) > 0
        and all(getattr(cb, "multi_step_safe", False) for cb in callbacks)
    )
    if not plain:
        return 1
    every = int(t.get("val_check_interval") or 1)
    return max(d for d in range(1, min(recipe["steps_per_call"], every) + 1) if every % d == 0)


def _trainer(run: Run, start_step: int, callbacks: list, chunk: int = 1) -> pl.Trainer:
    kwargs = dict(run.recipe["trainer"])
    if start_step and kwargs.get("max_steps", -1) > 0:
        kwargs["max_steps"] -= start_step  # resume the schedule at step k, end where it ends
    kwargs.setdefault("enable_progress_bar", sys.stderr.isatty())
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("log_every_n_steps", run.recipe["tracking"]["log_every_n_steps"])
    if chunk > 1:  # Lightning counts calls: evaluate and log on the same steps as one step per call
        kwargs["val_check_interval"] //= chunk
        kwargs["log_every_n_steps"] = max(1, kwargs["log_every_n_steps"] // chunk)
    return pl.Trainer(
        **kwargs,
        logger=run.logger if run.logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        default_root_dir=str(run.out_dir),
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
    )


def _train_loader(run: Run, start_step: int, chunk: int = 1):
    """The training batches, starting at step ``start_step`` of the fixed data order
    (``chunk`` steps per item when several steps train per call)."""
    loader = run.data.train_loader(run.data.order_seed)
    if chunk > 1:
        return StepChunks(loader, start_step, run.recipe["trainer"]["max_steps"], chunk)
    loader.epoch, loader.skip_batches = divmod(start_step, len(loader))
    return distributed.shard(loader)


def train(run: Run, round_: int, name: str, mask: Mask, start: Start, folder: Path,
          extra_callbacks: tuple = ()) -> tuple[Ticket, dict, dict]:
    """One training run from ``start`` under ``mask``; returns its ticket, row and state.

    The ticket's mask is the mask at the *end* of training (a callback may prune during
    training). ``state`` is what the round's callbacks collected for the next criterion.
    A folder that already holds a finished ticket of this recipe is loaded instead.
    ``extra_callbacks`` join the recipe's and the plugins' (``lth extend`` freezes weights so).
    """
    recipe_hash = run.recipe.hash()
    if distributed.from_rank_zero(is_ticket(folder)):  # data parallel: rank 0's run folder decides
        ticket = distributed.ticket_from_rank_zero(load_ticket, folder, run.model)
        if ticket.meta.get("recipe_hash") == recipe_hash:
            run.model.load_state_dict(trained_weights(ticket, folder))
            run.say(f"round {round_} [{name}]: reusing finished ticket in {folder}")
            if distributed.is_writer():
                checkpoints.discard(folder)  # killed after the ticket was written, before this
            return ticket, ticket.meta["metrics"], checkpoints.load_round_state(folder, run.say)
    distributed.require_connected(run.recipe["trainer"])
    mask, start = distributed.agree(mask, start)  # data parallel: rank 0's mask and start everywhere
    run.model.load_state_dict(start.weights)
    apply_mask(run.model, mask)
    ctx = RoundContext(recipe=run.recipe, round=round_, name=name, mask=mask, model=run.model, out_dir=folder, registry=run.registry, data=run.data)
    folder.mkdir(parents=True, exist_ok=True)
    call_hook(run.pm, "on_round_start", context=ctx)
    pl.seed_everything(_derived_seed(run.recipe, round_, _salt(name)), verbose=False)
    optimizer = start.optimizer or run.recipe["optimizer"]
    expected = checkpoints.identity(recipe_hash, round_, name, mask, start.weights, start.step, optimizer)
    stacked = run.fit is not None  # vectorize_trials: trained beside the other trials' runs
    # A killed run continues at its last checkpoint; data parallel: rank 0 reads it, every process gets it.
    saved = distributed.checkpoint_from_rank_zero(checkpoints.load, folder, expected, run.say)
    step0 = saved.step if saved else start.step
    module = LotteryModule(run.model, mask, optimizer, run.data.num_classes, log_prefix=f"round_{round_}/{name}", step_offset=step0)
    ctx.module = module
    origins: dict[int, str] = {}
    witnesses = distributed.witnesses()
    callbacks = _callbacks(run, ctx, origins) + list(extra_callbacks) + witnesses
    chunk = steps_per_call(run.recipe, callbacks)
    module.train_in_chunks(chunk, run.data.batch_size)
    trainer = _trainer(run, step0, callbacks, chunk)
    if not stacked:
        _attach_checkpoints(run, trainer, ctx, expected, start.step, saved, origins, extra_callbacks)
    try:
        if not stacked:
            trainer.fit(module, train_dataloaders=_train_loader(run, step0, chunk), val_dataloaders=distributed.shard(run.data.eval_loaders()))
        else:
            run.fit(run, module, trainer, step0, _replica_keep(run, ctx, expected, start.step, saved))
    except checkpoints.StaleCheckpoint as exc:
        run.say(f"warning: {exc}; round {round_} [{name}] trains from its start")
        if distributed.is_writer():  # data parallel: every process raised it; rank 0 keeps the folder
            checkpoints.discard(folder)
        return train(run, round_, name, mask, start, folder, extra_callbacks)
    except NonFiniteLoss as exc:
        run.model.cpu()
        failure = {"round": round_, "run": name, "error": str(exc), "history": module.history}
        if distributed.is_writer():
            atomic_write_text(folder / "failure.json", json.dumps(failure, indent=2))
        raise NonFiniteLoss(
            f"round {round_} [{name}] diverged: {exc}; nothing of it was saved as a ticket ({folder / 'failure.json'} "
            f"has its curve), earlier rounds in {run.out_dir} are kept; lower optimizer.lr or add warmup_steps"
        ) from None
    except Exception as exc:  # a plugin's callback broke: say which, in one line
        culprit = _culprit(exc, origins)
        if culprit is None:  # the core broke: on a mask a callback assigned without set_mask?
            problem = contracts.mask_problem(mask, module, weights=False)
            if problem is None:
                raise
            raise contracts.broken_mask(origins, round_, name, problem) from exc
        what = str(exc) if isinstance(exc, LthError) else f"{type(exc).__name__}: {exc}"
        raise PluginError(one_line(f"{culprit} failed in round {round_} [{name}]: {what}")) from exc
    if not module.history or module.history[-1]["step"] != module.step:
        trainer.validate(module, dataloaders=distributed.shard(run.data.eval_loaders()), verbose=False)
    run.model.cpu()
    distributed.verify(witnesses, module.history, run.out_dir, folder, round_, name)
    final_mask = contracts.check_final_mask(mask, module, origins, round_, name)
    row = summarise(module.history, round_, final_mask, module.step)
    row.update({k: v for k, v in ctx.metrics.items() if k not in row})
    meta = {
        "round": round_,
        "run": name,
        "recipe_hash": recipe_hash,
        "seed": run.recipe["seed"],
        "model": run.recipe["model"],
        "data": run.recipe["data"]["name"],
        "start_step": start.step,
        "optimizer": optimizer,
        "metrics": row,
        "lth_version": __version__,
    }
    # Clone: on the CPU ``.cpu()`` aliases the live parameters, which the next round overwrites.
    trained = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    ticket = Ticket(final_mask, start.weights, trained, meta)
    if distributed.is_writer():  # data parallel: every process trained this ticket; one writes it
        _write_finished(folder, ticket, module.history, ctx.state)
    call_hook(run.pm, "on_round_end", context=ctx, ticket=ticket, metrics=row)
    tracking.log_round(run.logger, row, name)
    tracking.log_ticket(run.logger, folder, run.recipe, row, name)
    return ticket, row, ctx.state


def _checkpoint_every(run: Run) -> tuple[int, str]:
    """Steps between this run's checkpoints (0: none) and, when none, why."""
    return checkpoints.every_n_steps(run.recipe, len(run.data.train_loader(0)))


def _attach_checkpoints(run: Run, trainer: pl.Trainer, ctx: RoundContext, expected: dict, start_step: int,
                        saved, origins: dict, extra_callbacks: tuple) -> None:
    """Checkpoints inside this training run (and the restore of ``saved``), as the recipe asks."""
    every = _checkpoint_every(run)  # data parallel too: rank 0 writes
    checkpoints.attach(trainer, checkpoints.RoundCheckpoint(ctx, expected, start_step, every, saved, origins, extra_callbacks, run.say))


def _replica_keep(run: Run, ctx: RoundContext, expected: dict, start_step: int, saved) -> checkpoints.ReplicaKeep:
    """A run about to train stacked: resumed from ``saved`` if there is one (in this trial's
    thread), and what its replicate needs to write this run's checkpoints."""
    optimizer_state = None
    if saved is not None:
        optimizer_state = checkpoints.restore_for_stacking(saved, ctx.module, ctx)
        run.say(f"round {ctx.round} [{ctx.name}]: resumed at step {saved.step} from {saved.path}")
    every, reason = _checkpoint_every(run)
    return checkpoints.ReplicaKeep(ctx.out_dir, expected, start_step, every, reason, dict(ctx.mask.items()), ctx.metrics,
                                   checkpoints.rng_state(), run.say, optimizer_state)


def _write_finished(folder: Path, ticket: Ticket, history: list[dict], state: dict) -> None:
    """A finished run's files; ``ticket.json`` last, so a kill keeps all or no ticket."""
    atomic_write_text(folder / "curves.json", json.dumps(history, indent=1))
    checkpoints.save_round_state(folder, state)  # for the next round's criterion, also when this ticket is reused
    save_ticket(ticket, folder)
    checkpoints.discard(folder)  # the ticket supersedes the run's checkpoint
    (folder / "failure.json").unlink(missing_ok=True)  # an earlier attempt diverged; this one did not


def _control_specs(run: Run) -> list[dict]:
    specs = []
    for c in run.recipe["controls"]:
        if set(c) == {"name"}:
            entry = run.registry.get("controls", c["name"])
            specs.append({"name": c["name"], "criterion": entry.extra.get("criterion"), "rewind": entry.extra.get("rewind")})
        else:
            specs.append({"name": c["name"], "criterion": c.get("criterion"), "rewind": c.get("rewind")})
    return specs


def prepare_out_dir(recipe: Recipe, out_dir: Path) -> None:
    """Refuse to mix two different recipes in one folder; record what produced the run."""
    if not distributed.is_writer():  # data parallel: rank 0 keeps the run folder
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    run_json = out_dir / "run.json"
    if run_json.is_file():
        try:
            previous = read_json(run_json).get("recipe_hash")
        except LthError as exc:  # which recipe's rounds the folder holds is unknown: do not write over them
            raise LthError(f"{exc}; it says which recipe the folder's rounds belong to: choose another --out, "
                           "or delete it to run into this folder anyway") from None
        if previous and previous != recipe.hash():
            raise LthError(
                f"{out_dir} holds a run of a different recipe (hash {previous}, this one {recipe.hash()}); "
                "choose another --out or delete that folder"
            )
    atomic_write_text(out_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    atomic_write_text(
        run_json,
        json.dumps(
            {"recipe_hash": recipe.hash(), "recipe_source": recipe.source, "lth_version": __version__,
             "command": " ".join(sys.argv), "torch": torch.__version__, "pytorch_lightning": pl.__version__},
            indent=2,
        ),
    )


def _transfer_source(recipe: Recipe, model: nn.Module) -> Ticket | None:
    """The ticket named by ``ticket:`` (found elsewhere), checked against this model."""
    if not recipe["ticket"]:
        return None
    return load_ticket(recipe["ticket"], model)


@dataclass
class Level:
    """What a finished round leaves behind: its mask, trained weights and callback state.

    The trained weights stay in the round's ticket folder (``folder``) and are read when a
    later step needs them, so a round in training holds no earlier round's weights in
    memory: only the model, its gradients and optimiser state, θ0 and the masks (issue 8).
    ``weights`` holds weights that are not in any folder (θ0 for ``mode: at_init``).
    """

    mask: Mask
    folder: Path | None = None
    state: dict = field(default_factory=dict)
    weights: dict[str, Tensor] | None = None

    def load_into(self, model: nn.Module) -> None:
        """Put this level's trained weights into ``model``."""
        model.load_state_dict(self.weights if self.weights is not None else trained_weights(load_ticket(self.folder, model), self.folder))


def trained_weights(ticket: Ticket, folder: Path) -> dict[str, Tensor]:
    """A finished round's trained weights; a ticket saved without them cannot stand in for a round."""
    if ticket.final is None:
        raise LthError(f"ticket {folder} holds no trained weights (no final.safetensors); delete {Path(folder) / 'ticket.json'} "
                       "and rerun the same `lth run` to train that round again")
    return ticket.final


def _unless_written(ticket: Ticket) -> dict[str, Tensor] | None:
    """A ticket's trained weights where this process did not write its folder (data
    parallel processes other than 0, which may not share rank 0's disk); else ``None``."""
    return None if distributed.is_writer() else ticket.final


def _prune_step(run: Run, k: int, prev: Level, round0: Level, rates: dict, pooled: list) -> tuple[Mask, Start, Level]:
    """Round ``k``'s mask and start, plus the level they were derived from.

    iterative: prune round k-1's ticket by ``rates``. one_shot: prune round 0's trained
    network straight to what k iterative rounds reach. at_init: the same, but scored on
    the initial weights θ0 before any training (SNIP, SynFlow and friends).
    """
    lot = run.recipe["lottery"]
    if lot["mode"] == "iterative":
        source, step_rates = prev, rates
    elif lot["mode"] == "one_shot":
        source, step_rates = round0, compound(rates, k)
    else:  # at_init
        source, step_rates = Level(Mask.ones_like(run.model), weights=run.initial), compound(rates, k)
    source.load_into(run.model)
    scores = score(run, lot["criterion"], run.model, source.mask, k, source.state, step_rates, pooled)
    new_mask = prune_by_scores(scores, source.mask, step_rates, lot["scope"], pooled)
    start = rewind(run, lot["rewind"], run.model, new_mask, k)
    return new_mask, start, source


def _run_controls(run: Run, k: int, total: int, ticket_mask: Mask, start: Start, source: Level) -> None:
    """Train every control beside round ``k``'s ticket; they never feed the next round."""
    for c in _control_specs(run):
        c_mask, c_start = ticket_mask, start
        if c["criterion"]:
            source.load_into(run.model)
            c_mask = match_density(score(run, c["criterion"], run.model, source.mask, k, source.state), ticket_mask)
        if c["rewind"]:
            source.load_into(run.model)  # what the main rewind saw
            c_start = rewind(run, c["rewind"], run.model, c_mask, k)
        _, c_row, _ = train(run, k, c["name"], c_mask, c_start, run.out_dir / f"round_{k}" / f"control_{c['name']}")
        run.controls.setdefault(c["name"], []).append(c_row)
        _progress(run, c_row, c["name"], total)


def run_lottery(recipe: Recipe, out_dir: str | Path, say: Callable[[str], None] = print, pm=None, group: str | None = None,
                fit: Callable[..., None] | None = None) -> dict:
    """Run a whole lottery and return (and write) ``summary.json``.

    With ``ticket: PATH`` in the recipe it does not search: round 0 trains the dense
    network from that ticket's start weights on this recipe's data, round 1 trains the
    transferred ticket itself (mask and start weights), with the controls beside it.
    Controls also run beside round 0 when a callback pruned during its training.
    ``fit`` replaces every ``trainer.fit`` (see :attr:`Run.fit`).
    """
    out_dir = Path(out_dir)
    pm = pm or get_plugin_manager()
    registry = get_registry(pm)
    check_against_plugins(recipe, registry)
    data = load_data(recipe, registry)
    model = build_model(recipe, registry, data, recipe["seed"])
    source = _transfer_source(recipe, model)
    dense = Mask.ones_like(model)
    rates, pooled = layer_rates(recipe, dense)  # a wrong layer name fails before any folder exists
    prepare_out_dir(recipe, out_dir)  # before connect: a folder of another recipe stops one process
    distributed.connect(recipe)  # data parallel: start or join the other processes
    say = distributed.speaker(say)
    initial = source.init if source else {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    run = Run(recipe, out_dir, registry, pm, data, model, initial, say=say, fit=fit)
    run.logger = tracking.make_logger(recipe, out_dir, say, group=group) if distributed.is_writer() else None
    total = 1 if source else recipe["lottery"]["rounds"]
    started = time.time()

    say(f"round 0/{total}: dense network, {dense.total()} prunable weights")
    start0 = Start(initial, 0, recipe["optimizer"])
    ticket, row, state = train(run, 0, "ticket", dense, start0, out_dir / "round_0")
    run.rows.append(row)
    _progress(run, row, "ticket", total)
    round0 = prev = Level(ticket.mask, out_dir / "round_0", state, _unless_written(ticket))
    del ticket  # its weights are on disk: keep no copy in memory while later rounds train
    if round0.mask.density() < 1.0:
        _run_controls(run, 0, total, round0.mask, start0, Level(dense, out_dir / "round_0", state, round0.weights))
    for k in range(1, total + 1):
        if source:
            mask, start, origin = source.mask, Start(source.init, int(source.meta.get("start_step", 0)), recipe["optimizer"]), round0
            say(f"round 1/1: the transferred ticket from {recipe['ticket']} ({mask.density():.2%} of weights)")
        else:
            mask, start, origin = _prune_step(run, k, prev, round0, rates, pooled)
            say(f"round {k}/{total}: pruned to {mask.density():.2%} of weights")
        ticket, row, state = train(run, k, "ticket", mask, start, out_dir / f"round_{k}")
        run.rows.append(row)
        _progress(run, row, "ticket", total)
        prev = Level(ticket.mask, out_dir / f"round_{k}", state, _unless_written(ticket))
        del ticket
        _run_controls(run, k, total, prev.mask, start, origin)
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
    if distributed.is_writer():
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    call_hook(pm, "on_run_end", summary=summary, out_dir=out_dir)
    tracking.finish(run.logger, summary, out_dir)
    say(format_table(summary))
    return summary


def _progress(run: Run, row: dict, name: str, total: int) -> None:
    run.say(
        f"round {row['round']}/{total} [{name}] weights remaining {row['weights_remaining']:.2%}  "
        f"test acc {row['test_acc']:.4f} (early stop @ step {row['early_stop_step']}), "
        f"final {row['test_acc_final']:.4f}"
    )


def format_table(summary: dict) -> str:
    """All rounds, the ticket and every control side by side, as plain text."""
    names = ["ticket"] + list(summary["controls"])
    by_round: dict[int, dict[str, dict]] = {}
    for r in summary["rounds"]:
        by_round.setdefault(r["round"], {})["ticket"] = r
    for name, rows in summary["controls"].items():
        for r in rows:
            by_round.setdefault(r["round"], {})[name] = r
    header = f"{'round':>5} {'remaining':>9} " + " ".join(f"{n + ' acc':>22} {'stop':>6}" for n in names)
    lines = [header, "-" * len(header)]
    for k in sorted(by_round):
        cells = by_round[k]
        wr = cells["ticket"]["weights_remaining"]
        parts = []
        for n in names:
            r = cells.get(n)
            parts.append(f"{r['test_acc']:>22.4f} {r['early_stop_step']:>6d}" if r else f"{'-':>22} {'-':>6}")
        lines.append(f"{k:>5} {wr:>9.2%} " + " ".join(parts))
    return "\n".join(lines)
