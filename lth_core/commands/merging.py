"""``lth merge``: combine two or more tickets with a registered merge strategy.

The driver loads the tickets, finds their recipe (``--recipe``, or the ``recipe.yaml`` of
the run folder the first ticket lives in), builds the model and data through the
registry, calls the strategy by name and measures everything on the same data: each
ticket, the merge, and for averaging strategies the linear path ``(1-λ)A + λB`` between
the tickets' own weights (``naive``) and, when the strategy aligned them first, between
the aligned weights (``aligned``). The loss barrier is the largest excess of the path's
test loss over the straight line between its ends.

``OUT/merge.json`` is written last and atomically; a merged network is also saved as a
ticket in ``OUT/ticket/``. An ensemble has no weights of its own, so ``merge.json`` names
its members (path and checksums) instead of inventing a ticket.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lth_core.version import __version__
from lth_core.plugin_api.contexts import MergeContext, MergeResult
from lth_core.data.loaders import DataModule
from lth_core.errors import LthError, PluginError
from lth_core.files import atomic_write_text, make_dir
from lth_core.tickets.mask import Mask, prunable_parameters
from lth_core.plugin_api.registry import call_plugin, get_plugin_manager, get_registry
from lth_core.config import Recipe, load_recipe
from lth_core.plugin_api.options import check_against_plugins, check_entry_options
from lth_core.tickets.ticket import Ticket, load_ticket, require_ticket, save_ticket

MERGE_FILE = "merge.json"
TICKET_DIR = "ticket"
MIN_POINTS = 11
SPLITS = ("val", "test")


def find_recipe(ticket_dir: Path) -> Path:
    """The ``recipe.yaml`` of the run folder holding a ticket (``RUN/round_k``, ``.../control_x``)."""
    for folder in [ticket_dir, *ticket_dir.parents][:4]:
        if (folder / "recipe.yaml").is_file():
            return folder / "recipe.yaml"
    raise LthError(f"no recipe.yaml in the run folder above {ticket_dir}; pass --recipe")


def check_out_dir(out: Path) -> None:
    """A merge never overwrites: the folder must be new or empty."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "an earlier merge" if (out / MERGE_FILE).is_file() else "other files"
        raise LthError(f"--out {out} already holds {what}; choose a new folder or delete it")


def load_tickets(paths: list[Path], model: nn.Module, spec: dict) -> list[Ticket]:
    """Every ticket, checked against the recipe's model ``spec`` (names and shapes) and trained."""
    tickets = []
    for p in paths:  # each already passed require_ticket
        try:
            t = load_ticket(p, model)
        except LthError as exc:
            raise LthError(f"{exc}; every ticket must be of the recipe's architecture {spec}") from exc
        if t.final is None:
            raise LthError(f"ticket {p} has no trained weights (final.safetensors); only trained tickets can be merged")
        tickets.append(t)
    return tickets


@torch.no_grad()
def logits_of(models: list[nn.Module], x: Tensor) -> Tensor:
    """The mean of the models' logits (one model: its logits)."""
    return torch.stack([m(x) for m in models]).mean(0)


@torch.no_grad()
def evaluate(models: list[nn.Module], data: DataModule) -> dict[str, float]:
    """Accuracy and mean cross-entropy on the validation and test splits."""
    for m in models:
        m.eval()
    out = {}
    for split, loader in zip(SPLITS, data.eval_loaders()):
        correct, loss, n = 0, 0.0, 0
        for x, y in loader:
            z = logits_of(models, x)
            correct += int((z.argmax(1) == y).sum())
            loss += float(F.cross_entropy(z, y, reduction="sum"))
            n += y.shape[0]
        out[f"{split}_acc"], out[f"{split}_loss"] = correct / n, loss / n
    return out


def _loaded(new_model: Callable[[], nn.Module], state: dict[str, Tensor]) -> nn.Module:
    model = new_model()
    model.load_state_dict(state)
    return model


def interpolate(a: dict[str, Tensor], b: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
    """``(1-λ)a + λb`` for floating tensors; counters and other integer buffers from ``a``."""
    return {k: (1 - lam) * v + lam * b[k] if v.is_floating_point() else v.clone() for k, v in a.items()}


def linear_path(a: dict[str, Tensor], b: dict[str, Tensor], new_model: Callable[[], nn.Module],
                data: DataModule, points: int) -> dict[str, Any]:
    """Metrics at ``points`` evenly spaced λ in [0, 1] and the barriers on the test split."""
    rows = []
    for i in range(points):
        lam = i / (points - 1)
        rows.append({"lambda": lam, **evaluate([_loaded(new_model, interpolate(a, b, lam))], data)})
    first, last = rows[0], rows[-1]

    def excess(metric: str, sign: float) -> float:
        line = lambda lam: (1 - lam) * first[metric] + lam * last[metric]  # noqa: E731
        return max(sign * (r[metric] - line(r["lambda"])) for r in rows)

    return {"points": rows, "loss_barrier": excess("test_loss", 1.0), "acc_barrier": excess("test_acc", -1.0)}


def mask_overlap(masks: list[Mask]) -> dict[str, float]:
    """How much the tickets' masks share, against what independent masks would share."""
    inter = masks[0]
    union = masks[0]
    for m in masks[1:]:
        inter, union = inter.intersection(m), union.union(m)
    # Per layer, independent masks of densities d1, d2, ... share a fraction d1 * d2 * ...
    chance = sum(
        masks[0][n].numel() * float(torch.tensor([m[n].double().mean() for m in masks]).prod()) for n in masks[0]
    ) / masks[0].total()
    return {
        "intersection": inter.density(),
        "union": union.density(),
        "jaccard": inter.kept() / max(union.kept(), 1),
        "intersection_if_independent": chance,
    }


def _check_result(result: Any, model: nn.Module, n: int, source: str) -> MergeResult:
    """The strategy returned a usable MergeResult: full state dicts, a mask that fits."""
    if not isinstance(result, MergeResult):
        raise PluginError(f"{source} must return a MergeResult, got {type(result).__name__}")
    own = model.state_dict()

    def full(state: Any, what: str) -> None:
        if not isinstance(state, dict) or set(state) != set(own) or any(
            not isinstance(t, Tensor) or t.shape != own[k].shape for k, t in state.items()
        ):
            raise PluginError(f"{source} returned {what} that is not a full state dict of this model")

    if (result.weights is None) == (result.members is None):
        raise PluginError(f"{source} must return either merged weights or ensemble members")
    if result.weights is not None:
        full(result.weights, "weights")
        if result.init is not None:
            full(result.init, "init")
        if not isinstance(result.mask, Mask) or set(result.mask) != set(prunable_parameters(model)):
            raise PluginError(f"{source} must return the merged weights' Mask over the prunable weights")
        outside = [n for n, keep in result.mask.items() if bool((result.weights[n][~keep] != 0).any())]
        if outside:
            raise PluginError(f"{source} returned non-zero weights outside its mask in {outside[:3]}")
    for i, m in enumerate(result.members or []):
        full(m, f"member {i}")
    if result.endpoints is not None:
        if len(result.endpoints) != n:
            raise PluginError(f"{source} returned {len(result.endpoints)} endpoints for {n} tickets")
        for i, e in enumerate(result.endpoints):
            full(e, f"endpoint {i}")
    return result


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def _member(path: Path, ticket: Ticket, metrics: dict) -> dict:
    meta = ticket.meta
    return {
        "path": str(path),
        "round": meta.get("round"),
        "run": meta.get("run"),
        "seed": meta.get("seed"),
        "recipe_hash": meta.get("recipe_hash"),
        "sha256": meta.get("sha256", {}),
        "weights_remaining": ticket.mask.density(),
        **metrics,
    }


def _paths(tickets: list[Ticket], result: MergeResult, labels: list[str], new_model, data, points: int) -> list[dict]:
    """The naive path from the first ticket to each other one, and the aligned path if it differs."""
    out = []
    for i in range(1, len(tickets)):
        pairs = [("naive", tickets[0].final, tickets[i].final)]
        if not (_same(result.endpoints[0], tickets[0].final) and _same(result.endpoints[i], tickets[i].final)):
            pairs.append(("aligned", result.endpoints[0], result.endpoints[i]))
        for kind, a, b in pairs:
            out.append({"kind": kind, "from": labels[0], "to": labels[i], **linear_path(a, b, new_model, data, points)})
    return out


@dataclass
class Setting:
    """What every merge of these tickets shares: recipe, data, model factory, tickets."""

    recipe: Recipe
    registry: Any
    pm: Any
    data: DataModule
    new_model: Callable[[], nn.Module]
    tickets: list[Ticket]


def _setting(paths: list[Path], recipe: str | None, overrides: list[str], pm) -> Setting:
    from lth_core.lottery.run import build_model, load_data

    registry = get_registry(pm)
    for p in paths:
        require_ticket(p)
    recipe_obj = load_recipe(recipe or find_recipe(paths[0]), overrides)
    check_against_plugins(recipe_obj, registry)
    data = load_data(recipe_obj, registry)
    new_model = lambda: build_model(recipe_obj, registry, data, recipe_obj["seed"])  # noqa: E731
    tickets = load_tickets(paths, new_model(), recipe_obj["model"])
    return Setting(recipe_obj, registry, pm, data, new_model, tickets)


def _retrainer(s: Setting, strategy: str, out: Path, say: Callable[[str], None]) -> tuple[Callable[..., Ticket], list[Ticket]]:
    """``context.retrain``: one lottery training run of a mask into ``out/ticket``."""
    from lth_core.lottery.run import Run, Start
    from lth_core.lottery.train import train

    done: list[Ticket] = []
    first = s.tickets[0]

    def retrain(mask: Mask, start: dict[str, Tensor] | None = None, start_step: int = 0) -> Ticket:
        run = Run(s.recipe, out, s.registry, s.pm, s.data, s.new_model(), first.init, say=say)
        begin = Start(first.init if start is None else start, start_step, s.recipe["optimizer"])
        say(f"retraining the {strategy} mask ({mask.density():.2%} of weights) from step {start_step}")
        ticket, _, _ = train(run, int(first.meta.get("round", 0)), f"merge_{strategy}", mask, begin, out / TICKET_DIR)
        done.append(ticket)
        return ticket

    return retrain, done


def _save_merged(s: Setting, result: MergeResult, strategy: str, paths: list[Path], metrics: dict, out: Path) -> None:
    """The merged network as a ticket; its ``init`` is what it would rewind to."""
    first = s.tickets[0]
    meta = {
        "run": f"merge_{strategy}", "round": first.meta.get("round"), "seed": s.recipe["seed"],
        "recipe_hash": s.recipe.hash(), "model": s.recipe["model"], "data": s.recipe["data"]["name"],
        "merge": {"strategy": strategy, "tickets": [str(p) for p in paths]}, "metrics": dict(metrics),
        "start_step": int(first.meta.get("start_step", 0)), "lth_version": __version__,
    }
    init = result.weights if result.init is None else result.init
    save_ticket(Ticket(result.mask, init, result.weights, meta), out / TICKET_DIR)


def _merged_metrics(s: Setting, result: MergeResult) -> dict:
    if result.members is not None:  # an ensemble costs all its members' weights
        kept = sum(t.mask.kept() for t in s.tickets)
        return {**evaluate([_loaded(s.new_model, m) for m in result.members], s.data),
                "weights_remaining": kept / s.tickets[0].mask.total(), "ticket": None}
    return {**evaluate([_loaded(s.new_model, result.weights)], s.data),
            "weights_remaining": result.mask.density(), "ticket": TICKET_DIR}


def merge_tickets(paths: list[str | Path], strategy: str, out: str | Path, recipe: str | None = None,
                  overrides: list[str] | None = None, options: dict | None = None, points: int = MIN_POINTS,
                  pm=None, say: Callable[[str], None] = print) -> dict:
    """Combine the tickets at ``paths`` with ``strategy``; write ``out/merge.json`` and return it.

    Everything a user can get wrong (too few tickets, an unknown strategy or option, a
    missing ticket, another architecture, a used ``out``) fails before anything is written.
    """
    started = time.time()
    paths, out, options = [Path(p) for p in paths], Path(out), dict(options or {})
    if len(paths) < 2:
        raise LthError(f"lth merge needs at least two tickets, got {len(paths)}")
    if points < MIN_POINTS:
        raise LthError(f"--points must be >= {MIN_POINTS} (the linear path's resolution), got {points}")
    pm = pm or get_plugin_manager()
    entry = get_registry(pm).get("merge_strategies", strategy)
    source = f"merge strategy {strategy!r} (plugin {entry.plugin!r})"
    check_entry_options(entry, options, strategy, skip=("tickets", "context"))
    check_out_dir(out)
    s = _setting(paths, recipe, overrides or [], pm)
    retrain, retrained = _retrainer(s, strategy, out, say)
    context = MergeContext(s.recipe["model"]["name"], s.new_model, s.data,
                           torch.Generator().manual_seed(s.recipe["seed"]), retrain, s.recipe)
    make_dir(out)
    say(f"merging {len(s.tickets)} tickets with {strategy}")
    result = _check_result(call_plugin(source, entry.obj, s.tickets, context, **options), s.new_model(), len(s.tickets), source)

    labels = [chr(ord("A") + i) if i < 26 else f"T{i}" for i in range(len(s.tickets))]
    members = [_member(p, t, evaluate([_loaded(s.new_model, t.final)], s.data)) for p, t in zip(paths, s.tickets)]
    merged = _merged_metrics(s, result)
    if result.weights is not None and not (retrained and result.weights is retrained[-1].final):
        _save_merged(s, result, strategy, paths, merged, out)  # (a retrained ticket is saved already)
    record = {
        "strategy": strategy,
        "plugin": entry.plugin,
        "options": options,
        "labels": labels,
        "members": members,
        "merged": merged,
        "mask_overlap": mask_overlap([t.mask for t in s.tickets]),
        "paths": _paths(s.tickets, result, labels, s.new_model, s.data, points) if result.endpoints is not None else [],
        "info": result.info,
        "recipe": str(s.recipe.source),
        "recipe_hash": s.recipe.hash(),
        "model": s.recipe["model"],
        "data": s.recipe["data"]["name"],
        "wall_time_s": round(time.time() - started, 2),
        "lth_version": __version__,
    }
    atomic_write_text(out / MERGE_FILE, json.dumps(record, indent=2))
    say(format_merge(record))
    return record


def format_merge(record: dict) -> str:
    """A few lines for the terminal: each ticket, the merge, and the barriers."""
    lines = [f"{'':<16} {'weights %':>9} {'val acc':>8} {'test acc':>8} {'test loss':>9}"]
    rows = [(lab, m) for lab, m in zip(record["labels"], record["members"])] + [(record["strategy"], record["merged"])]
    for label, m in rows:
        lines.append(f"{label:<16} {100 * m['weights_remaining']:>9.2f} {100 * m['val_acc']:>8.2f} {100 * m['test_acc']:>8.2f} {m['test_loss']:>9.4f}")
    for p in record["paths"]:
        lines.append(f"path {p['from']}->{p['to']} ({p['kind']}): loss barrier {p['loss_barrier']:.4f}, accuracy barrier {100 * p['acc_barrier']:.2f} points")
    return "\n".join(lines)
