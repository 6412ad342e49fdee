"""Recipes: one YAML file = one experiment.

``load_recipe`` reads YAML with ``yaml.safe_load``, applies ``--set key.sub=value``
overrides, fills defaults and checks every key and type against :data:`SCHEMA`. Plugin
names and plugin options (``model:``, ``data:``) are checked against the installed
plugins by :func:`check_against_plugins`. Every mistake is a :class:`LthError` naming the
key and the valid choices.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import inspect
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lth_core.errors import LthError, choices

ANY = object()
REQUIRED = object()

#: section -> key -> (allowed python types, default). ``dict`` sections marked OPEN take
#: plugin options beyond the listed keys; those are validated against the plugin.
SCHEMA: dict[str, dict[str, tuple]] = {
    "model": {"name": ((str,), REQUIRED)},
    "data": {
        "name": ((str,), REQUIRED),
        "batch_size": ((int,), 60),
        "eval_batch_size": ((int,), 2000),
        "val_size": ((int, float), 0.1),
        "subset": ((int, type(None)), None),
        "order_seed": ((int, type(None)), None),
        "classes": ((list, type(None)), None),
    },
    "optimizer": {
        "name": ((str,), "adam"),
        "lr": ((float, int), 1e-3),
        "momentum": ((float, int), 0.0),
        "weight_decay": ((float, int), 0.0),
        "nesterov": ((bool,), False),
        "warmup_steps": ((int,), 0),
        "milestones": ((list,), []),
        "gamma": ((float, int), 0.1),
    },
    "trainer": {},
    "lottery": {
        "criterion": ((str,), "magnitude"),
        "criterion_options": ((dict,), {}),
        "rewind": ((str,), "init"),
        "rewind_options": ((dict,), {}),
        "rounds": ((int,), 5),
        "rate": ((float, int), 0.2),
        "layer_rates": ((dict,), {}),
        "scope": ((str,), "layer"),
        "mode": ((str,), "iterative"),
    },
    "tracking": {
        "backend": ((str,), "wandb"),
        "project": ((str,), "lth"),
        "entity": ((str, type(None)), None),
        "mode": ((str,), "auto"),
        "log_every_n_steps": ((int,), 50),
    },
}
OPEN_SECTIONS = {"model", "data", "trainer"}
TOP_LEVEL = {
    "name": (str,), "seed": (int,), "controls": (list,), "description": (str,),
    "trials": (int,), "ticket": (str, type(None)), "callbacks": (list,),
    "init": (str, dict, type(None)), "sweep": (dict,),
    "extend": (dict, type(None)), "steps_per_call": (int,),
    "checkpoint_every_n_steps": (int, type(None)), "vectorize_trials": (bool, str),
}
TOP_LEVEL.update({s: (dict,) for s in SCHEMA})
CHOICES = {
    ("optimizer", "name"): ("sgd", "adam", "adamw"),
    ("lottery", "scope"): ("layer", "global"),
    ("lottery", "mode"): ("iterative", "one_shot", "at_init"),
    ("tracking", "backend"): ("wandb", "none"),
    ("tracking", "mode"): ("auto", "online", "offline", "disabled"),
}
#: Trainer arguments the lottery sets itself; a recipe may not override them.
RESERVED_TRAINER_KEYS = {
    "logger", "callbacks", "enable_checkpointing", "default_root_dir", "num_sanity_val_steps",
    "check_val_every_n_epoch", "limit_test_batches", "plugins",
}
TRAINER_DEFAULTS = {"accelerator": "auto", "devices": 1, "max_epochs": -1, "max_steps": 1000, "val_check_interval": 100}


#: Keys introduced after runs already existed, with their no-op defaults: a top-level key
#: (``callbacks``) or ``section.key``. They enter the hash only when they differ from it.
LATER_KEYS: dict[str, Any] = {"callbacks": [], "init": None, "data.order_seed": None, "data.classes": None, "extend": {}, "sweep": {},
                              "checkpoint_every_n_steps": None, "steps_per_call": 50, "vectorize_trials": False}
#: Keys that say how to compute, not what: never hashed, so a run folder is the same run with
#: or without them (where files go, how often to checkpoint, how many steps per Lightning
#: call, ``vectorize_trials`` training the trials stacked with the same results).
UNHASHED_KEYS = ("tracking", "description", "name", "checkpoint_every_n_steps", "steps_per_call", "vectorize_trials")


def _drop_later_defaults(content: dict) -> dict:
    out = {}
    for key, value in content.items():
        if key in LATER_KEYS and value == LATER_KEYS[key]:
            continue
        if isinstance(value, dict):
            value = {
                k: v for k, v in value.items()
                if not (f"{key}.{k}" in LATER_KEYS and v == LATER_KEYS[f"{key}.{k}"])
            }
        out[key] = value
    return out


@dataclass
class Recipe:
    """A validated recipe. Sections are plain dicts so the recipe is its own JSON record."""

    data: dict[str, Any]
    source: str = "<dict>"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def name(self) -> str:
        return self.data["name"]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def for_trial(self, index: int) -> "Recipe":
        """Trial ``index`` of a multi-trial recipe: its own seed, hence its own θ0."""
        data = self.to_dict()
        data["seed"] = self.data["seed"] + index
        data["trials"] = 1
        data["vectorize_trials"] = False  # one lottery: nothing to stack
        data["name"] = f"{self.name}-trial{index}"
        return Recipe(data, self.source)

    def sweep_points(self) -> list[tuple[dict[str, Any], "Recipe"]]:
        """Each point of ``sweep:`` with its own recipe (no sweep; named after the point)."""
        out = []
        for point in _sweep_points(self.data["sweep"]):
            raw = _point_raw(self.data, point, "sweep")
            raw["name"] = f"{self.name}-{point_name(point)}"
            out.append((point, validate(raw, self.source)))
        return out

    def hash(self) -> str:
        """Content hash of everything that changes results (name and tracking excluded).

        Keys added after a release are hashed only when they differ from their default
        (:data:`LATER_KEYS`), so upgrading lth never orphans an existing run folder.
        """
        content = _drop_later_defaults({k: v for k, v in self.data.items() if k not in UNHASHED_KEYS})
        trainer = {k: v for k, v in content.get("trainer", {}).items() if k != "enable_progress_bar"}
        content["trainer"] = trainer
        blob = json.dumps(_str_keys(content), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _str_keys(obj: Any) -> Any:
    """YAML allows non-string keys (``1: x``); json's sort_keys cannot order mixed ones."""
    if isinstance(obj, dict):
        return {str(k): _str_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_str_keys(v) for v in obj]
    return obj


def _type_names(types: tuple) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "true/false", dict: "mapping", list: "list", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


#: ``1e-3`` is a string to YAML 1.1 (PyYAML wants ``1.0e-3``); read it as the number users mean.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml11_number(value: Any, types: tuple) -> Any:
    if float in types and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def _check_type(where: str, value: Any, types: tuple) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise LthError(f"{where} must be a {_type_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise LthError(f"{where} must be a {_type_names(types)}, got {type(value).__name__} {value!r}")
    # (float, int): a number, stored as float. (int, float) keeps ints: data.val_size 1000 is a count.
    if types[0] is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"lottery.rate=0.1"`` -> (["lottery", "rate"], 0.1); the value is read as YAML."""
    if "=" not in text:
        raise LthError(f"--set {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise LthError(f"--set {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise LthError(f"--set {text!r}: value is not valid YAML: {exc}") from exc
    return path, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        set_path(raw, path, value, f"--set {text!r}")
    return raw


def set_path(raw: dict, path: list[str], value: Any, where: str) -> None:
    """Set ``raw[a][b]...= value``; a numeric part indexes a list (``callbacks.0.density``)."""
    if path[0] not in TOP_LEVEL:
        raise LthError(f"{where}: unknown key {path[0]!r}; valid: {choices(TOP_LEVEL)}")
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise LthError(f"{where}: {part!r} is not an index of that list (0..{len(node) - 1})")
            part = int(part)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise LthError(f"{where}: {path[i - 1]!r} is not a mapping or a list")
        elif not last and node.get(part) is None:
            node[part] = {}
        if last:
            node[part] = value
        else:
            if isinstance(node[part], str) and path[i] in ("model", "data"):
                node[part] = {"name": node[part]}  # `model: lenet300` shorthand
            node = node[part]


def _sweep_points(sweep: dict) -> list[dict[str, Any]]:
    """Every combination of the sweep's values, in order: [{"path": value, ...}, ...]."""
    keys = list(sweep)
    if not keys:
        return []
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def _check_sweep(sweep: Any, raw: dict, source: str) -> dict:
    """``sweep: {path: [values]}``; every point must itself be a valid recipe."""
    for key, values in sweep.items():
        if not isinstance(key, str) or not key or key.split(".")[0] == "sweep":
            raise LthError(f"{source}: sweep keys are recipe paths such as callbacks.0.density, got {key!r}")
        if not isinstance(values, list) or not values:
            raise LthError(f"{source}: sweep.{key} must be a non-empty list of values, got {values!r}")
    for point in _sweep_points(sweep):
        validate(_point_raw(raw, point, f"{source}: sweep"), f"{source} (sweep point {point_name(point)})")
    return copy.deepcopy(sweep)


def _point_raw(raw: dict, point: dict[str, Any], where: str) -> dict:
    """A copy of ``raw`` without ``sweep``, with one sweep point's values set."""
    out = copy.deepcopy({k: v for k, v in raw.items() if k != "sweep"})
    for key, value in point.items():
        set_path(out, key.split("."), copy.deepcopy(value), f"{where}.{key}")
    return out


def point_name(point: dict[str, Any]) -> str:
    """A folder name for a sweep point: ``callbacks.0.density=0.3,model.hidden=600-200``."""
    def text(v: Any) -> str:
        if isinstance(v, list):
            return "-".join(text(x) for x in v)
        if isinstance(v, dict):
            return "-".join(f"{k}_{text(x)}" for k, x in v.items())
        return re.sub(r"[^A-Za-z0-9_.-]", "_", str(v))

    return ",".join(f"{k}={text(v)}" for k, v in point.items())


def _shorthand(raw: dict) -> dict:
    """Accept ``model: lenet300`` for ``model: {name: lenet300}`` and ``tracking: none``."""
    for section in ("model", "data"):
        if isinstance(raw.get(section), str):
            raw[section] = {"name": raw[section]}
    if raw.get("tracking") in ("none", None, False) and "tracking" in raw:
        raw["tracking"] = {"backend": "none"}
    elif isinstance(raw.get("tracking"), str):
        raw["tracking"] = {"backend": raw["tracking"]}
    return raw


def validate(raw: Any, source: str = "<dict>", name: str | None = None) -> Recipe:
    """Check keys, types and choices; fill defaults. Plugin names are checked later."""
    if not isinstance(raw, dict):
        raise LthError(f"{source}: a recipe must be a YAML mapping of sections, got {type(raw).__name__}")
    raw = _shorthand(copy.deepcopy(raw))
    for key in raw:
        if key not in TOP_LEVEL:
            raise LthError(f"{source}: unknown key {key!r}; valid: {choices(TOP_LEVEL)}")
        _check_type(f"{source}: {key}", raw[key], TOP_LEVEL[key])
    out: dict[str, Any] = {
        "name": raw.get("name") or name or "recipe",
        "seed": raw.get("seed", 0),
        "trials": raw.get("trials", 1),
        "steps_per_call": raw.get("steps_per_call", LATER_KEYS["steps_per_call"]),
        "ticket": raw.get("ticket"),
        "description": raw.get("description", ""),
        "checkpoint_every_n_steps": raw.get("checkpoint_every_n_steps"),
        "vectorize_trials": raw.get("vectorize_trials", False),
    }
    for section, fields in SCHEMA.items():
        given = dict(raw.get(section) or {})
        if section in ("model", "data") and "name" not in given:
            raise LthError(f"{source}: {section}.name is required (a registered {section} name; see `lth plugins`)")
        result = {}
        for key, (types, default) in fields.items():
            if key in given:
                value = given.pop(key)
                if value is None and type(None) not in types and default is not REQUIRED and default is not None:
                    value = default
                result[key] = _check_type(f"{source}: {section}.{key}", _yaml11_number(value, types), types)
            else:
                result[key] = copy.deepcopy(default)
            allowed = CHOICES.get((section, key))
            if allowed and result[key] not in allowed:
                raise LthError(f"{source}: {section}.{key} is {result[key]!r}; valid: {choices(allowed)}")
        if given and section not in OPEN_SECTIONS:
            raise LthError(f"{source}: unknown key {section}.{sorted(given, key=str)[0]}; valid: {choices(fields)}")
        if section == "trainer":
            given = {**TRAINER_DEFAULTS, **given}
        result.update(given)
        out[section] = result
    _check_values(out, source)
    controls = raw.get("controls") or []
    out["controls"] = [
        _named_spec(c, "control", source, "{name, criterion, rewind}", {"name", "criterion", "rewind"}) for c in controls
    ]
    out["callbacks"] = [_named_spec(c, "callback", source, "{name, ...options}") for c in raw.get("callbacks") or []]
    out["sweep"] = _check_sweep(raw.get("sweep") or {}, raw, source)
    out["init"] = _named_spec(raw["init"], "initializer", source, "{name, ...options}") if raw.get("init") is not None else None
    out["extend"] = dict(raw.get("extend") or {})  # read by the lth_frankenmodel plugin (`lth extend`)
    return Recipe(out, source)


def _named_spec(spec: Any, kind: str, source: str, form: str, keys: set[str] | None = None) -> dict:
    """A control or callback entry: a registered name, or ``{name, ...}`` (only ``keys`` if given)."""
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        unknown = set(spec) - keys if keys is not None else set()
        if unknown:
            raise LthError(
                f"{source}: {kind} {spec['name']!r} has unknown key {sorted(unknown, key=str)[0]!r}; valid: {choices(keys)}"
            )
        return dict(spec)
    raise LthError(f"{source}: each {kind} must be a registered {kind} name or {form}, got {spec!r}")


def _check_values(r: dict, source: str) -> None:
    if r["trials"] < 1:
        raise LthError(f"{source}: trials must be >= 1, got {r['trials']}")
    if r["steps_per_call"] < 1:
        raise LthError(f"{source}: steps_per_call must be >= 1 (1: Lightning's loop, one step per call), got {r['steps_per_call']}")
    if (r["checkpoint_every_n_steps"] or 0) < 0:
        raise LthError(f"{source}: checkpoint_every_n_steps must be a number of steps >= 1, 0 (no checkpoints) or null (about 4 per round), got {r['checkpoint_every_n_steps']}")
    if r["vectorize_trials"] not in (True, False, "batched"):
        raise LthError(f"{source}: vectorize_trials is {r['vectorize_trials']!r}; valid: true, false, batched")
    if r["vectorize_trials"] and r["trials"] < 2:
        raise LthError(f"{source}: vectorize_trials stacks the trials of a recipe, and trials is {r['trials']}; set trials: 2 or more, or vectorize_trials: false")
    lot = r["lottery"]
    if lot["rounds"] < 0:
        raise LthError(f"{source}: lottery.rounds must be >= 0 (0 trains only the dense network), got {lot['rounds']}")
    if not 0.0 < lot["rate"] < 1.0:
        raise LthError(f"{source}: lottery.rate must be in (0, 1) (a fraction of remaining weights), got {lot['rate']}")
    for layer, rate in lot["layer_rates"].items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise LthError(f"{source}: lottery.layer_rates.{layer} must be a number in [0, 1), got {rate!r}")
    d = r["data"]
    if d["batch_size"] < 1 or d["eval_batch_size"] < 1:
        raise LthError(f"{source}: data.batch_size and data.eval_batch_size must be >= 1")
    if isinstance(d["val_size"], float) and not 0.0 < d["val_size"] < 1.0:
        raise LthError(f"{source}: data.val_size as a fraction must be in (0, 1), got {d['val_size']}")
    if isinstance(d["val_size"], int) and d["val_size"] < 1:
        raise LthError(f"{source}: data.val_size as a count must be >= 1, got {d['val_size']}")
    _check_classes(d["classes"], source)
    ms = r["optimizer"]["milestones"]
    if not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in ms) or ms != sorted(ms):
        raise LthError(f"{source}: optimizer.milestones must be increasing positive step numbers, got {ms!r}")
    if not 0 < r["optimizer"]["lr"] < math.inf:
        raise LthError(f"{source}: optimizer.lr must be a finite number > 0, got {r['optimizer']['lr']}")
    t = r["trainer"]
    bad = sorted(set(t) & RESERVED_TRAINER_KEYS)
    if bad:
        raise LthError(f"{source}: trainer.{bad[0]} is set by lth itself and cannot be given in a recipe")
    _check_trainer_keys(t, source)
    from lth_core.distributed import check_trainer

    check_trainer(t, r["data"]["batch_size"], source)  # data parallel: strategy, nodes, batch split
    vci = t.get("val_check_interval")
    if not isinstance(vci, int) or isinstance(vci, bool) or vci < 1:
        raise LthError(f"{source}: trainer.val_check_interval must be a whole number of steps >= 1, got {vci!r}")


def _check_classes(classes: list | None, source: str) -> None:
    """``data.classes``: distinct class labels (integers >= 0), at least two, or null for all."""
    if classes is None:
        return
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
        raise LthError(f"{source}: data.classes must be a list of class labels (integers >= 0), got {classes!r}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise LthError(f"{source}: data.classes must name at least two distinct classes, got {classes!r}")


def _check_trainer_keys(t: dict, source: str) -> None:
    import pytorch_lightning as pl

    params = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"} - RESERVED_TRAINER_KEYS
    for key in t:
        if key not in params:
            raise LthError(f"{source}: unknown key trainer.{key}; valid: {choices(params)}")


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise LthError(f"cannot read recipe {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LthError(f"{path} is not valid YAML{at}: {problem}") from exc


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped with lth (the repository's ``recipes/`` folder), by name."""
    root = importlib.resources.files("lth_recipes")
    return {
        Path(str(p)).stem: Path(str(p))
        for p in root.iterdir()
        if str(p).endswith(".yaml")
    }


def resolve_recipe_path(spec: str) -> Path:
    """A path to a YAML file, or the name of a bundled recipe."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if spec in bundled:
        return bundled[spec]
    if path.suffix in (".yaml", ".yml") and path.name and Path(path.name).stem in bundled and not path.exists():
        return bundled[Path(path.name).stem]
    raise LthError(f"recipe {spec!r} not found: not a file and not a bundled recipe ({choices(bundled)})")


def load_recipe(spec: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = resolve_recipe_path(str(spec))
    raw = read_yaml(path)
    if raw is None:
        raise LthError(f"{path} is empty")
    if not isinstance(raw, dict):
        raise LthError(f"{path}: a recipe must be a YAML mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, source=str(path), name=path.stem)


def check_options(fn: Any, options: dict, where: str, skip: tuple = ()) -> None:
    """Check plugin options against ``fn``'s keyword parameters (names and simple types)."""
    sig = inspect.signature(fn)
    params = {n: p for n, p in sig.parameters.items() if n not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    for key, value in options.items():
        if key not in params:
            valid = choices(params) if params else "none (it takes no options)"
            raise LthError(f"unknown option {where}.{key}; valid: {valid}")
        ann = params[key].annotation
        types = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,)}.get(
            ann if isinstance(ann, str) else getattr(ann, "__name__", ""), None
        )
        if types and value is not None:
            _check_type(f"{where}.{key}", value, types)
    for name, p in params.items():
        if p.default is p.empty and name not in options:
            raise LthError(f"{where}.{name} is required")


def check_against_plugins(recipe: Recipe, registry) -> None:
    """Every plugin name in the recipe is registered; plugin options fit their factories."""
    r = recipe.data
    model = registry.get("models", r["model"]["name"])
    check_options(model.obj, {k: v for k, v in r["model"].items() if k != "name"}, "model", skip=("input_shape", "num_classes"))
    data = registry.get("datasets", r["data"]["name"])
    core_keys = set(SCHEMA["data"])
    check_options(data.obj, {k: v for k, v in r["data"].items() if k not in core_keys}, "data")
    registry.get("criteria", r["lottery"]["criterion"])
    registry.get("rewind_policies", r["lottery"]["rewind"])
    if r.get("init"):
        entry = registry.get("initializers", r["init"]["name"])
        check_options(entry.obj, {k: v for k, v in r["init"].items() if k != "name"}, f"init.{r['init']['name']}", skip=("model", "generator"))
    for _, point in recipe.sweep_points():
        check_against_plugins(point, registry)
    for c in r["callbacks"]:
        entry = registry.get("callbacks", c["name"])
        check_options(entry.obj, {k: v for k, v in c.items() if k != "name"}, f"callbacks.{c['name']}", skip=("context",))
    for c in r["controls"]:
        if set(c) == {"name"}:
            registry.get("controls", c["name"])
        else:
            if c.get("criterion"):
                registry.get("criteria", c["criterion"])
            if c.get("rewind"):
                registry.get("rewind_policies", c["rewind"])
