"""Recipes: one YAML file = one experiment.

``load_recipe`` reads YAML with ``yaml.safe_load``, applies ``--set key.sub=value``
overrides, fills defaults and checks every key and type against :data:`SCHEMA`. Plugin
names and plugin options (``model:``, ``data:``) are checked against the installed
plugins by :func:`check_against_plugins`. Every mistake is a :class:`LthError` naming the
key and the valid choices.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.resources
import inspect
import itertools
import json
import math
import re
from types import UnionType
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from lth_core.config.parallel import check_trainer
from lth_core.errors import LthError, PluginError, choices, one_line

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
        """A deep copy of the validated recipe as plain data (what ``recipe.yaml`` holds)."""
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


def _a(types: tuple) -> str:
    """``a number``, ``an integer``: the type names with their article."""
    text = _type_names(types)
    return f"an {text}" if text[0] in "aeiou" else f"a {text}"


_PLAIN_KEY = re.compile(r"[\w.*?\[\]-]+")


def _show_key(key: Any) -> str:
    """A key as it goes into ``section.key`` in a message: as written when it is a plain
    name, else its repr, so a key holding a line break cannot split the one-line error."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else repr(key)


def _brief(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message quotes a value, not a file's worth."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


#: ``1e-3`` is a string to YAML 1.1 (PyYAML wants ``1.0e-3``); read it as the number users mean.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml11_number(value: Any, types: tuple) -> Any:
    if float in types and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def _check_type(where: str, value: Any, types: tuple) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise LthError(f"{where} must be {_a(types)}, got {value!r}")
    if not isinstance(value, types):
        raise LthError(f"{where} must be {_a(types)}, got {type(value).__name__} {_brief(value)}")
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
    value = _parse_yaml(raw, f"--set {text!r}: the value") if raw.strip() else ""
    _check_size(value, f"--set {text!r}")
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
            elif i == 0 and part == "tracking" and isinstance(node[part], (str, bool)):
                node[part] = {"backend": "none" if node[part] in ("none", False) else node[part]}  # `tracking: none`
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
            raise LthError(f"{source}: sweep keys are recipe paths such as callbacks.0.density, got {_brief(key)}")
        if not isinstance(values, list) or not values:
            raise LthError(f"{source}: sweep.{_show_key(key)} must be a non-empty list of values, got {_brief(values)}")
    for point in _sweep_points(sweep):
        validate(_point_raw(raw, point, f"{source}: sweep"), f"{source} (sweep point {point_name(point)})")
    return copy.deepcopy(sweep)


def _point_raw(raw: dict, point: dict[str, Any], where: str) -> dict:
    """A copy of ``raw`` without ``sweep``, with one sweep point's values set."""
    out = copy.deepcopy({k: v for k, v in raw.items() if k != "sweep"})
    for key, value in point.items():
        set_path(out, key.split("."), copy.deepcopy(value), f"{where}.{_show_key(key)}")
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
    _check_size(raw, source)  # before anything copies or walks it
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
            raise LthError(f"{source}: unknown key {section}.{_show_key(sorted(given, key=str)[0])}; valid: {choices(fields)}")
        if section == "trainer":
            given = {**TRAINER_DEFAULTS, **given}
        result.update(given)
        out[section] = result
    _check_values(out, source)
    controls = raw.get("controls") or []
    out["controls"] = [
        _named_spec(c, "control", source, "{name, criterion, rewind}", {"name", "criterion", "rewind"}) for c in controls
    ]
    _check_controls(out["controls"], source)
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
    raise LthError(f"{source}: each {kind} must be a registered {kind} name or {form}, got {_brief(spec)}")


def _folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a folder (a run's ``runs/NAME-HASH``, a control's
    ``control_NAME``), or None: a slash or ``..`` would put results outside the run."""
    if not name.strip():
        return "is empty"
    if not name.isprintable():
        return "holds control characters"
    if "/" in name or "\\" in name or name.strip() in (".", ".."):
        return "is not a folder name (no /, \\, . or ..)"
    return None


def _check_controls(controls: list[dict], source: str) -> None:
    """Control names become folders and summary keys: distinct, not ``ticket``, no path
    separators; their criterion and rewind are plugin names (looked up at plugin check)."""
    seen: set[str] = set()
    for c in controls:
        name = c["name"]
        problem = _folder_name_problem(name) or ("is the lottery's own run" if name == "ticket" else None)
        if problem:
            raise LthError(f"{source}: control name {name!r} {problem}")
        if name in seen:
            raise LthError(f"{source}: control {name!r} is listed twice; give each control its own name")
        seen.add(name)
        for key in ("criterion", "rewind"):
            if c.get(key) is not None and not isinstance(c[key], str):
                raise LthError(f"{source}: control {name!r}: {key} must be a registered {key} name or null, got {_brief(c[key])}")


def _check_values(r: dict, source: str) -> None:
    problem = _folder_name_problem(r["name"])
    if problem:
        raise LthError(f"{source}: name {r['name']!r} {problem}; it names the run folder runs/NAME-HASH")
    if r["trials"] < 1:
        raise LthError(f"{source}: trials must be >= 1, got {r['trials']}")
    if r["steps_per_call"] < 1:
        raise LthError(f"{source}: steps_per_call must be >= 1 (1: Lightning's loop, one step per call), got {r['steps_per_call']}")
    if (r["checkpoint_every_n_steps"] or 0) < 0:
        raise LthError(f"{source}: checkpoint_every_n_steps must be a number of steps >= 1, 0 (no checkpoints) or null (about 4 per round), got {r['checkpoint_every_n_steps']}")
    if r["vectorize_trials"] not in (True, False, "batched", "parallel"):
        raise LthError(f"{source}: vectorize_trials is {r['vectorize_trials']!r}; valid: true, false, batched, parallel")
    if r["vectorize_trials"] and r["trials"] < 2:
        raise LthError(f"{source}: vectorize_trials stacks the trials of a recipe, and trials is {r['trials']}; set trials: 2 or more, or vectorize_trials: false")
    lot = r["lottery"]
    if lot["rounds"] < 0:
        raise LthError(f"{source}: lottery.rounds must be >= 0 (0 trains only the dense network), got {lot['rounds']}")
    if not 0.0 < lot["rate"] < 1.0:
        raise LthError(f"{source}: lottery.rate must be in (0, 1) (a fraction of remaining weights), got {lot['rate']}")
    for layer, rate in lot["layer_rates"].items():
        if not isinstance(layer, str):
            raise LthError(f"{source}: lottery.layer_rates keys are layer names or patterns (strings), got {layer!r}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise LthError(f"{source}: lottery.layer_rates.{_show_key(layer)} must be a number in [0, 1), got {_brief(rate)}")
    for key in ("criterion_options", "rewind_options"):
        bad = [k for k in lot[key] if not isinstance(k, str)]
        if bad:
            raise LthError(f"{source}: lottery.{key} keys are option names (strings), got {bad[0]!r}")
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
        raise LthError(f"{source}: optimizer.milestones must be increasing positive step numbers, got {_brief(ms)}")
    if not 0 < r["optimizer"]["lr"] < math.inf:
        raise LthError(f"{source}: optimizer.lr must be a finite number > 0, got {r['optimizer']['lr']}")
    t = r["trainer"]
    bad = sorted(set(t) & RESERVED_TRAINER_KEYS)
    if bad:
        raise LthError(f"{source}: trainer.{bad[0]} is set by lth itself and cannot be given in a recipe")
    _check_trainer_keys(t, source)
    check_trainer(t, r["data"]["batch_size"], source)  # data parallel: strategy, nodes, batch split


def _check_classes(classes: list | None, source: str) -> None:
    """``data.classes``: distinct class labels (integers >= 0), at least two, or null for all."""
    if classes is None:
        return
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
        raise LthError(f"{source}: data.classes must be a list of class labels (integers >= 0), got {_brief(classes)}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise LthError(f"{source}: data.classes must name at least two distinct classes, got {_brief(classes)}")


@functools.lru_cache(maxsize=1)
def _trainer_params() -> dict[str, inspect.Parameter]:
    """``pytorch_lightning.Trainer``'s parameters: the valid ``trainer:`` keys and their types."""
    import pytorch_lightning as pl

    params = inspect.signature(pl.Trainer.__init__).parameters
    return {n: p for n, p in params.items() if n != "self" and n not in RESERVED_TRAINER_KEYS}


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fraction_or_count(v: Any) -> bool:
    """Lightning's ``limit_*_batches``/``overfit_batches``: a count of batches or a fraction."""
    return (_whole(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def _devices_ok(v: Any) -> bool:
    """``devices``: a count (or -1, all), ``auto``, ``"2"``, or device indices (``[0, 1]``, ``"0,1"``)."""
    if isinstance(v, str):
        text = v.strip()
        if text in ("auto", "-1"):
            return True
        if text.isdigit():
            return int(text) >= 1
        return bool(re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text))  # indices: "0,1", "1,"
    if isinstance(v, list):
        return bool(v) and all(_whole(i) and i >= 0 for i in v) and len(set(v)) == len(v)
    return _whole(v) and (v >= 1 or v == -1)


def _max_time_ok(v: Any) -> bool:
    """``max_time``: ``DD:HH:MM:SS`` or ``{days: .., hours: ..}`` (what Lightning's Timer parses)."""
    if v is None or isinstance(v, str) and re.fullmatch(r"\s*\d+:\d\d:\d\d:\d\d\s*", v):
        return True
    units = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")
    return isinstance(v, dict) and bool(v) and all(
        k in units and isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < math.inf for k, x in v.items()
    )


@functools.lru_cache(maxsize=1)
def _accelerators() -> frozenset[str]:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    return frozenset(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"}


def _literals(annotation: Any) -> list:
    """The ``Literal[...]`` values inside a Trainer annotation (``precision``'s accepted values)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for a in typing.get_args(annotation) for v in _literals(a)]


def _precision_ok(v: Any) -> bool:
    allowed = _literals(_trainer_params()["precision"].annotation) + [None]
    return any(v == a and type(v) is type(a) for a in allowed)  # 16.0 == 16, but Lightning refuses it


def _precision_choices() -> str:
    return choices({str(a) for a in _literals(_trainer_params()["precision"].annotation)}) + " or null"


_STEPS_OR_NONE = "a whole number of steps >= 0 or null"
#: trainer key -> (accepts(value), what is accepted). Keys not listed are type-checked from
#: Trainer's annotations; ``strategy`` and ``num_nodes`` are lth_core.engines.data_parallel's.
TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], Callable[[], str] | str]] = {
    "max_steps": (lambda v: _whole(v) and (v >= 1 or v == -1), "a whole number of steps >= 1, or -1 (no step limit)"),
    "max_epochs": (lambda v: v is None or _whole(v) and (v >= 1 or v == -1), "a whole number of epochs >= 1, -1 (no epoch limit) or null"),
    "min_steps": (lambda v: v is None or _whole(v) and v >= 0, _STEPS_OR_NONE),
    "min_epochs": (lambda v: v is None or _whole(v) and v >= 0, "a whole number of epochs >= 0 or null"),
    "max_time": (_max_time_ok, "a duration DD:HH:MM:SS (e.g. 00:12:00:00), a mapping such as {hours: 12}, or null"),
    "val_check_interval": (lambda v: _whole(v) and v >= 1, "a whole number of steps >= 1 (lth evaluates every N optimiser steps)"),
    "limit_train_batches": (lambda v: v is None or _fraction_or_count(v), "a number of batches >= 0, a fraction in [0.0, 1.0], or null"),
    "limit_val_batches": (lambda v: v is None or _fraction_or_count(v), "a number of batches >= 0, a fraction in [0.0, 1.0], or null"),
    "limit_predict_batches": (lambda v: v is None or _fraction_or_count(v), "a number of batches >= 0, a fraction in [0.0, 1.0], or null"),
    "overfit_batches": (_fraction_or_count, "a number of batches >= 0 or a fraction in [0.0, 1.0]"),
    "accumulate_grad_batches": (lambda v: _whole(v) and v >= 1, "a whole number of batches >= 1"),
    "gradient_clip_val": (lambda v: v is None or not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < math.inf,
                          "a number >= 0, or null (no clipping)"),
    "gradient_clip_algorithm": (lambda v: v in (None, "norm", "value"), "norm, value or null"),
    "log_every_n_steps": (lambda v: v is None or _whole(v) and v >= 0, _STEPS_OR_NONE),
    "reload_dataloaders_every_n_epochs": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0"),
    "fast_dev_run": (lambda v: isinstance(v, bool) or _whole(v) and v >= 0, "true, false or a whole number of batches >= 0"),
    "deterministic": (lambda v: v is None or isinstance(v, bool) or v == "warn", "true, false, warn or null"),
    "profiler": (lambda v: v is None or isinstance(v, str) and v.lower() in ("simple", "advanced", "pytorch", "xla"),
                 "simple, advanced, pytorch, xla or null"),
    "devices": (_devices_ok, "a number of devices >= 1, -1 (all), auto, or device indices such as [0, 1]"),
    "accelerator": (lambda v: isinstance(v, str) and v in _accelerators(), lambda: choices(_accelerators())),
    "precision": (_precision_ok, _precision_choices),
}


def _annotation_types(annotation: Any) -> set[type]:
    """The plain types (what YAML can write) a Trainer annotation admits; Lightning's own
    classes (Accelerator, Logger, timedelta) cannot come from a recipe and are left out."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        return {t for a in typing.get_args(annotation) for t in _annotation_types(a)}
    if annotation is type(None):
        return {type(None)}
    base = origin or annotation
    if base in (int, float, str, bool, list, dict):
        return {base, int} if base is float else {base}
    return set()


def _check_trainer_value(key: str, value: Any, source: str) -> None:
    rule = TRAINER_RULES.get(key)
    if rule is not None:
        accepts, valid = rule
        if not accepts(value):
            raise LthError(f"{source}: trainer.{key} is {_brief(value)}; valid: {valid() if callable(valid) else valid}")
        return
    if key in ("strategy", "num_nodes"):
        return  # lth_core.config.parallel.check_trainer: supported strategies, whole nodes
    kinds = _annotation_types(_trainer_params()[key].annotation)
    if kinds and (isinstance(value, bool) and bool not in kinds or not isinstance(value, tuple(kinds))):
        order = (bool, int, float, str, list, dict, type(None))
        raise LthError(f"{source}: trainer.{key} must be {_a(tuple(t for t in order if t in kinds))}, got {type(value).__name__} {_brief(value)}")


def _check_trainer_keys(t: dict, source: str) -> None:
    """Every ``trainer:`` key is a Trainer parameter with a value Lightning accepts: checked
    here, before the run folder exists, not by a traceback from inside the first Trainer."""
    params = _trainer_params()
    for key, value in t.items():
        if key not in params:
            raise LthError(f"{source}: unknown key trainer.{_show_key(key)}; valid: {choices(params)}")
        _check_trainer_value(key, value, source)
    if t.get("max_steps") == -1 and t.get("max_epochs") == -1 and t.get("max_time") is None:
        raise LthError(f"{source}: trainer.max_steps and trainer.max_epochs are both -1, so training would never end; "
                       "set trainer.max_steps (steps per round) or trainer.max_epochs")


#: A recipe is a page of YAML; a bigger file is a mistake (or an attack on the parser).
MAX_RECIPE_BYTES = 1 << 20
#: Values a recipe may expand to, and how deeply they may nest. YAML anchors and aliases
#: let a few lines expand to billions of values (hashing or copying them would never end),
#: or hold a value inside itself; a real recipe has a few hundred values, nested 5 deep.
MAX_NODES = 100_000
MAX_DEPTH = 50


def _parse_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` whose every failure is one LthError line. PyYAML's constructors
    raise ValueError, KeyError or AttributeError for some values (``2001-13-45``,
    ``!!int x``, ``!!bool maybe``, ``!!timestamp x``), and deep nesting a RecursionError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
        raise LthError(one_line(f"{what} is not valid YAML{at}: {problem}")) from None
    except RecursionError:
        raise LthError(f"{what} is not valid YAML: it nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - see above: PyYAML's constructors raise anything
        raise LthError(one_line(f"{what} is not valid YAML: {type(exc).__name__}: {exc}")) from None


def _check_size(raw: Any, source: str) -> None:
    """Refuse a structure of more than :data:`MAX_NODES` values or :data:`MAX_DEPTH` levels,
    counting an alias each time it is used (iteratively: deep nesting must not recurse)."""
    stack, count = [(raw, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise LthError(f"{source}: the recipe expands to more than {MAX_NODES} values (YAML aliases of aliases?); a recipe has a few hundred")
        if depth > MAX_DEPTH:
            raise LthError(f"{source}: the recipe nests more than {MAX_DEPTH} levels deep (a YAML alias inside itself?)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in value)


def read_yaml(path: Path) -> Any:
    """A YAML file's content, or one LthError line saying why it is not a recipe."""
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise LthError(f"{path} is {size} bytes; a recipe is a YAML text file of at most {MAX_RECIPE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LthError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise LthError(f"{path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); a recipe is a YAML text file") from None
    raw = _parse_yaml(text, str(path))
    _check_size(raw, str(path))
    return raw


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
    """A recipe from a YAML file or a bundled recipe's name, with ``--set key=value`` overrides, checked."""
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
            raise LthError(f"unknown option {where}.{_show_key(key)}; valid: {valid}")
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
    """Every plugin name in the recipe is registered; plugin options fit their factories,
    and ``lottery.criterion_options``/``rewind_options`` fit what the run's criteria and
    rewind policies read. Everything a run will look up, so a mistake fails before round 0."""
    r = recipe.data
    model = registry.get("models", r["model"]["name"])
    check_options(model.obj, {k: v for k, v in r["model"].items() if k != "name"}, "model", skip=("input_shape", "num_classes"))
    data = registry.get("datasets", r["data"]["name"])
    core_keys = set(SCHEMA["data"])
    check_options(data.obj, {k: v for k, v in r["data"].items() if k not in core_keys}, "data")
    criteria = [registry.get("criteria", r["lottery"]["criterion"])]
    rewinds = [registry.get("rewind_policies", r["lottery"]["rewind"])]
    if r.get("init"):
        entry = registry.get("initializers", r["init"]["name"])
        check_options(entry.obj, {k: v for k, v in r["init"].items() if k != "name"}, f"init.{_show_key(r['init']['name'])}", skip=("model", "generator"))
    for _, point in recipe.sweep_points():
        check_against_plugins(point, registry)
    for c in r["callbacks"]:
        entry = registry.get("callbacks", c["name"])
        check_options(entry.obj, {k: v for k, v in c.items() if k != "name"}, f"callbacks.{_show_key(c['name'])}", skip=("context",))
        if isinstance(c.get("criterion"), str) and c["criterion"] in registry.kinds["criteria"]:
            criteria.append(registry.get("criteria", c["criterion"]))  # gradual_pruning scores with it
    for c in r["controls"]:
        criterion, rewind = _control_plugins(c, registry)
        criteria += criterion
        rewinds += rewind
    _check_shared_options(r["lottery"]["criterion_options"], criteria, "criterion_options", ("criterion", "criteria"))
    _check_shared_options(r["lottery"]["rewind_options"], rewinds, "rewind_options", ("rewind policy", "rewind policies"))


def _control_plugins(c: dict, registry) -> tuple[list, list]:
    """The registry entries of the criterion and rewind policy a control trains with.

    A control given by name alone is a registered one: its plugin chose them at
    registration (``register(name, criterion=..., rewind=...)``), and a name that is not
    installed would otherwise fail only after round 0 has trained.
    """
    if set(c) == {"name"}:
        entry = registry.get("controls", c["name"])
        criterion, rewind = entry.extra.get("criterion"), entry.extra.get("rewind")
        where = f"control {c['name']!r} (plugin {entry.plugin!r})"
        for kind, name in (("criterion", criterion), ("rewind", rewind)):
            if name is not None and not isinstance(name, str):
                raise PluginError(f"{where} registered {kind}={_brief(name)}; it must be a registered {kind} name or None")
    else:
        criterion, rewind, where = c.get("criterion"), c.get("rewind"), f"control {c['name']!r}"
    found = []
    for kind, noun, name in (("criteria", "criterion", criterion), ("rewind_policies", "rewind policy", rewind)):
        if name and name not in registry.kinds[kind]:
            raise PluginError(f"{where} trains with {noun} {name!r}, which is not installed; installed: {choices(registry.kinds[kind])}")
        found.append([registry.get(kind, name)] if name else [])
    return found[0], found[1]


def _check_shared_options(options: dict, entries: list, key: str, nouns: tuple[str, str]) -> None:
    """``lottery.<key>`` reaches every criterion (or rewind policy) of the run: the lottery's,
    its controls' and a pruning callback's. A key none of them reads is a typo that would
    pass silently; a plugin that reads options without declaring them checks them itself."""
    if not options:
        return
    unique = list({id(e): e for e in entries}.values())
    accepted: set[str] = set()
    for entry in unique:
        names = plugin_options(entry)
        if names is None:
            return
        accepted |= names
    for option in options:
        if option not in accepted:
            names = ", ".join(repr(e.name) for e in unique)
            noun = nouns[0] if len(unique) == 1 else nouns[1]
            valid = choices(accepted) if accepted else f"none ({'it reads' if len(unique) == 1 else 'they read'} no options)"
            raise LthError(f"unknown option lottery.{key}.{_show_key(option)} for {noun} {names}; valid: {valid}")


def plugin_options(entry) -> frozenset[str] | None:
    """The option names a criterion or rewind policy reads from ``context.options``: those
    it declared when it registered (``register(name, fn, options=["batch_size"])``), or
    None when it declared nothing (then it may read any, and checks them when it runs)."""
    declared = entry.extra.get("options")
    if declared is None:
        return None
    if isinstance(declared, str) or not all(isinstance(n, str) for n in declared):
        raise PluginError(f"plugin {entry.plugin!r} registered {entry.name!r} with options={_brief(declared)}; it must be a list of option names")
    return frozenset(declared)
