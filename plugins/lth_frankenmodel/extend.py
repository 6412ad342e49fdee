"""``lth extend``: teach a ticket new classes with the weights its pruning freed (PackNet).

One extension trains, each for the recipe's ``trainer.max_steps`` with its optimiser, in
``DIR/runs/<variant>/`` (ticket folders, so an interrupted command resumes):

- ``packnet``: the ticket's kept weights frozen, the freed weights (from their θ0) and the
  new output units trained on the new classes, plus ``extend.rehearsal`` examples of each
  old class; optionally ``extend.prune`` of the newly trained weights given back;
- ``packnet_no_rehearsal``: the same without rehearsal (only when the recipe rehearses,
  so the effect of rehearsal is measured, not assumed);
- ``finetune``: the same start, nothing frozen, the new classes only: forgetting;
- ``dense_joint``: a fresh dense network trained on old and new classes together.

Accuracies are measured on the test split. Task-incremental ("A-only"): task ``t``'s
examples, argmax over its own output units, PackNet using only the weights of tasks
``1..t``. Class-incremental ("joint"): every task's examples, argmax over the whole head.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from lth_core import DataModule, LthError, Mask, PluginError, Recipe, Registry, Run, Start, __version__, atomic_write_text, build_model, call_plugin, check_against_plugins, get_plugin_manager, get_registry, load_data, make_dir, read_json, train_run

from lth_frankenmodel.freeze import FreezeOwned
from lth_frankenmodel.packed import EXTEND_JSON, Packed, claim, grow, load_source, save_packed
from lth_frankenmodel.settings import settings

START_JSON = "extend_start.json"


def check_recipe(recipe: Recipe, source: Packed) -> None:
    """The recipe trains the ticket's own network on the ticket's data set, once."""
    if recipe["model"] != source.model:
        raise LthError(f"{recipe.source}: model {recipe['model']} differs from the ticket's {source.model}; an extension grows the ticket's own network")
    if recipe["data"]["name"] != source.data:
        raise LthError(f"{recipe.source}: data.name {recipe['data']['name']!r} differs from the ticket's {source.data!r}")
    if recipe["data"]["classes"] is not None:
        raise LthError(f"{recipe.source}: data.classes is set by lth extend (the ticket's classes, then extend.classes); remove it")
    if recipe["callbacks"] or recipe["trials"] != 1:
        raise LthError(f"{recipe.source}: lth extend trains once without recipe callbacks; remove callbacks and set trials: 1")


def make_model(registry: Registry, spec: dict, input_shape: tuple, units: int) -> nn.Module:
    """An untrained model of ``spec`` with ``units`` outputs (weights are loaded over it)."""
    entry = registry.get("models", spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    model = call_plugin(f"model {spec['name']!r} (plugin {entry.plugin!r})", entry.obj, input_shape=input_shape, num_classes=units, **options)
    if not isinstance(model, nn.Module):
        raise PluginError(f"model {spec['name']!r} returned {type(model).__name__}, not an nn.Module")
    return model


def head_finder(registry: Registry, input_shape: tuple) -> Callable[[dict, int], list[str]]:
    """Which entries of the state dict grow with the number of classes (the output layer)."""

    def heads(spec: dict, units: int) -> list[str]:
        a = make_model(registry, spec, input_shape, units).state_dict()
        b = make_model(registry, spec, input_shape, units + 1).state_dict()
        grown = [n for n in a if a[n].shape != b[n].shape]
        if not grown or any(a[n].shape[0] != units or b[n].shape[0] != units + 1 for n in grown):
            raise LthError(f"model {spec.get('name')!r} has no output layer lth extend can grow (first dimension = number of classes)")
        return grown

    return heads


@torch.no_grad()
def logits(model: nn.Module, state: dict[str, Tensor], x: Tensor, batch: int) -> Tensor:
    model.load_state_dict(state)
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def task_examples(data: DataModule, task: dict) -> tuple[Tensor, Tensor]:
    lo, hi = task["units"]
    sel = (data.test_y >= lo) & (data.test_y < hi)
    return data.test_x[sel], data.test_y[sel]


def accuracy(out: Tensor, y: Tensor, units: tuple[int, int] | None = None) -> float:
    if units is not None:
        out = out[:, units[0] : units[1]]
        y = y - units[0]
    return float((out.argmax(1) == y).double().mean())


@dataclass
class Evaluator:
    """Measures a network on every task (task- and class-incremental) on the test split."""

    registry: Registry
    data: DataModule
    batch: int

    def model(self, spec: dict, units: int) -> nn.Module:
        return make_model(self.registry, spec, self.data.input_shape, units)

    def packed(self, p: Packed) -> tuple[dict, dict[int, Tensor]]:
        """Each task through its own view; joint through the newest view. Returns the
        metrics and each task's logits (for the bitwise comparison)."""
        per_task, outs = {}, {}
        for t, task in enumerate(p.tasks, start=1):
            x, y = task_examples(self.data, task)
            outs[t] = logits(self.model(p.model, task["units"][1]), p.view(t), x, self.batch)
            per_task[str(t)] = accuracy(outs[t], y, task["units"])
        seen = self.data.test_y < p.units  # a source network is measured on its own classes
        full = logits(self.model(p.model, p.units), p.view(len(p.tasks)), self.data.test_x[seen], self.batch)
        return {"task_acc": per_task, **self._joint(full, self.data.test_y[seen], p.tasks)}, outs

    def dense(self, spec: dict, state: dict[str, Tensor], tasks: list[dict]) -> dict:
        """A network with no ownership: every task through the whole network."""
        units = tasks[-1]["units"][1]
        full = logits(self.model(spec, units), state, self.data.test_x, self.batch)
        per_task = {}
        for t, task in enumerate(tasks, start=1):
            lo, hi = task["units"]
            sel = (self.data.test_y >= lo) & (self.data.test_y < hi)
            per_task[str(t)] = accuracy(full[sel], self.data.test_y[sel], (lo, hi))
        return {"task_acc": per_task, **self._joint(full, self.data.test_y, tasks)}

    def _joint(self, full: Tensor, y: Tensor, tasks: list[dict]) -> dict:
        by_task = {}
        for t, task in enumerate(tasks, start=1):
            lo, hi = task["units"]
            sel = (y >= lo) & (y < hi)
            by_task[str(t)] = accuracy(full[sel], y[sel])
        return {"joint_acc": accuracy(full, y), "joint_acc_by_task": by_task}


def identical_bits(a: Tensor, b: Tensor) -> bool:
    """Equal bit for bit (``torch.equal`` would call 0.0 and -0.0 equal)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def training_data(data: DataModule, tasks: list[dict], rehearsal: int, seed: int) -> DataModule:
    """The new task's training examples plus ``rehearsal`` seeded examples of each old class."""
    lo, hi = tasks[-1]["units"]
    y = data.train_y
    keep = (y >= lo) & (y < hi)
    g = torch.Generator().manual_seed(seed)
    for unit in range(lo) if rehearsal else ():
        idx = torch.nonzero(y == unit).flatten()
        if idx.numel() < rehearsal:
            raise LthError(f"extend.rehearsal={rehearsal} but old class at unit {unit} has only {idx.numel()} training examples")
        keep[idx[torch.randperm(idx.numel(), generator=g)[:rehearsal]]] = True
    out = data.with_train(keep)
    if out.batch_size > out.examples("train"):
        raise LthError(f"data.batch_size={out.batch_size} is larger than the extension's training examples ({out.examples('train')})")
    return out


def measure_packnet(evaluator: Evaluator, start: Packed, trained: dict[str, Tensor], trainable: dict[str, Tensor],
                    prune: float, before_logits: dict[int, Tensor]) -> tuple[dict, Packed]:
    """The new task claims the freed weights (and gives ``prune`` of them back); its metrics
    carry the proofs: frozen entries unchanged, every old task's test logits identical."""
    packed = claim(start, trained, prune)
    metrics, after_logits = evaluator.packed(packed)
    if prune:  # what the new task loses by giving weights back (no retraining)
        metrics["new_task_acc_unpruned"] = evaluator.packed(claim(start, trained, 0.0))[0]["task_acc"][str(len(start.tasks))]
    metrics["frozen_weights_unchanged"] = all(torch.equal(trained[n][~m], start.state[n][~m]) for n, m in trainable.items())
    metrics["old_task_logits_identical"] = {str(t): identical_bits(before_logits[t], after_logits[t]) for t in before_logits}
    return metrics, packed


def _guard_out(out: Path, source_dir: Path, record: dict) -> None:
    """Never overwrite a finished extension; resume only the same source and recipe."""
    if out.resolve() == source_dir.resolve():
        raise LthError(f"--out {out} is the ticket's own folder; choose a new folder")
    if (out / EXTEND_JSON).is_file():
        raise LthError(f"{out} already holds a finished extension ({EXTEND_JSON}); choose another --out")
    start = out / START_JSON
    if start.is_file() and read_json(start) != record:
        raise LthError(f"{out} holds an unfinished extension of another ticket or recipe; choose another --out or delete it")
    make_dir(out)
    atomic_write_text(start, json.dumps(record, indent=2))


def extend(source_dir: str | Path, recipe: Recipe, out: str | Path, say: Callable[[str], None] = print, pm=None) -> dict:
    """Extend the ticket (or extension) in ``source_dir`` by ``recipe``'s ``extend.classes``."""
    started = time.time()
    source_dir, out = Path(source_dir), Path(out)
    pm = pm or get_plugin_manager()
    registry = get_registry(pm)
    check_against_plugins(recipe, registry)
    if not source_dir.exists():
        raise LthError(f"ticket {source_dir} does not exist")
    full = load_data(_with_classes(recipe, None), registry)
    source, kind = load_source(source_dir, head_finder(registry, full.input_shape))
    check_recipe(recipe, source)
    cfg = settings(recipe, source.classes, full.num_classes, registry)
    joint_recipe = _with_classes(recipe, source.classes + cfg["classes"], str(source_dir))
    data = load_data(joint_recipe, registry)
    model = build_model(joint_recipe, registry, data, recipe["seed"])
    start, trainable = grow(source, cfg["classes"], {k: v.detach().clone() for k, v in model.state_dict().items()},
                            {n for n, _ in model.named_parameters()})
    _guard_out(out, source_dir, {"source": str(source_dir.resolve()), "source_sha256": _source_sha(source_dir), "recipe_hash": joint_recipe.hash()})
    evaluator = Evaluator(registry, data, recipe["data"]["eval_batch_size"])
    runs = Variants(Run(joint_recipe, out, registry, pm, data, model, start.state, say=say), recipe, start, out)
    before, before_logits = evaluator.packed(source)
    variants, extended = runs.packnet(evaluator, trainable, cfg, before_logits)
    if cfg["baselines"]:
        fresh = build_model(joint_recipe, registry, data, recipe["seed"]).state_dict()
        variants.update(runs.baselines(evaluator, source.model, fresh))
    record = {
        "source": str(source_dir), "source_kind": kind, "task": len(start.tasks), "classes": cfg["classes"], "settings": cfg,
        "recipe_hash": joint_recipe.hash(), "steps_per_variant": runs.steps, "before": before, "variants": variants,
        "parameters": {"before": source.counts(), "after": extended.counts()},
        "wall_time_s": {**runs.timings, "total": round(time.time() - started, 2)}, "lth_version": __version__,
    }
    meta = {"run": "extend", "recipe_hash": joint_recipe.hash(), "seed": recipe["seed"], "model": source.model,
            "data": source.data, "metrics": variants["packnet"], "lth_version": __version__}
    atomic_write_text(out / "recipe.yaml", _yaml(joint_recipe))
    save_packed(extended, out, meta, record)
    say(format_summary(record))
    return read_json(out / EXTEND_JSON)


@dataclass
class Variants:
    """The extension's training runs, one per variant, each an ordinary training run of
    the lottery (a ticket folder under ``OUT/runs/<variant>``, so a killed command resumes)."""

    run: Run
    recipe: Recipe
    start: Packed
    out: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.recipe["trainer"].get("max_steps", -1)

    def fit(self, name: str, train_data: DataModule, weights: dict, callbacks: tuple = ()) -> dict[str, Tensor]:
        """Train variant ``name`` on ``train_data`` from ``weights``; its trained weights."""
        t0 = time.time()
        self.run.data = train_data
        self.run.say(f"extend [{name}]: {train_data.examples('train')} training examples, {self.steps} steps")
        mask, start = Mask.ones_like(self.run.model), Start(weights, 0, self.recipe["optimizer"])
        ticket, _, _ = train_run(self.run, len(self.start.tasks), name, mask, start, self.out / "runs" / name, callbacks)
        self.timings[name] = round(time.time() - t0, 2)
        return ticket.final

    def packnet(self, evaluator: Evaluator, trainable: dict[str, Tensor], cfg: dict,
                before_logits: dict[int, Tensor]) -> tuple[dict[str, dict], Packed]:
        """PackNet with the recipe's rehearsal (and without, when it rehearses): metrics and
        the extended network (the first variant's)."""
        variants: dict[str, dict] = {}
        extended = None
        data, seed = self.run.data, self.recipe["seed"]
        for rehearsal in [cfg["rehearsal"], 0] if cfg["rehearsal"] else [0]:
            name = "packnet" if rehearsal == cfg["rehearsal"] else "packnet_no_rehearsal"
            trained = self.fit(name, training_data(data, self.start.tasks, rehearsal, seed), self.start.state, (FreezeOwned(trainable),))
            metrics, packed = measure_packnet(evaluator, self.start, trained, trainable, cfg["prune"], before_logits)
            variants[name] = {**metrics, "rehearsal_per_class": rehearsal}
            extended = extended or packed
        self.run.data = data
        return variants, extended

    def baselines(self, evaluator: Evaluator, model: dict, fresh: dict[str, Tensor]) -> dict[str, dict]:
        """Fine-tuning the whole network on the new classes (forgetting), and a dense network
        trained on every class from fresh weights."""
        data, tasks = self.run.data, self.start.tasks
        finetune = self.fit("finetune", training_data(data, tasks, 0, self.recipe["seed"]), self.start.state)
        out = {"finetune": evaluator.dense(model, finetune, tasks)}
        out["dense_joint"] = evaluator.dense(model, self.fit("dense_joint", data, fresh), tasks)
        return out


def _with_classes(recipe: Recipe, classes: list[int] | None, ticket: str | None = None) -> Recipe:
    data = recipe.to_dict()
    data["data"]["classes"] = classes
    data["ticket"] = ticket  # part of the hash: runs of another source are never reused
    return Recipe(data, recipe.source)


def _source_sha(source_dir: Path) -> str:
    meta = read_json(source_dir / "ticket.json")
    return meta.get("sha256", {}).get("final", "")


def _yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def format_summary(record: dict) -> str:
    """The measurements as a plain-text table (the CLI prints it; report.md shows the same)."""
    tasks = sorted(record["before"]["task_acc"], key=int) + [str(record["task"])]
    header = f"{'variant':<22}" + "".join(f"{'task ' + t + ' acc':>12}" for t in tasks) + f"{'joint acc':>11}"
    lines = [header, "-" * len(header)]
    lines.append(f"{'before (source)':<22}" + "".join(f"{100 * record['before']['task_acc'][t]:>12.2f}" if t in record["before"]["task_acc"] else f"{'-':>12}" for t in tasks)
                 + f"{100 * record['before']['joint_acc']:>11.2f}")
    for name, v in record["variants"].items():
        lines.append(f"{name:<22}" + "".join(f"{100 * v['task_acc'][t]:>12.2f}" for t in tasks) + f"{100 * v['joint_acc']:>11.2f}")
    return "\n".join(lines)
