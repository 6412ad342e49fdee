"""Recipes: one YAML file = one experiment.

``load_recipe`` reads YAML with ``yaml.safe_load``, applies ``--set key.sub=value``
overrides, fills defaults and checks every key lth knows against its models
(:mod:`lth_core.config.schema`). That needs no plugin: plugin names, plugin options and
plugins' own recipe sections are checked in a second stage, against the installed plugins,
by :func:`lth_core.plugin_api.options.check_against_plugins` (a top-level key lth does not
know is kept for it). Every mistake is a :class:`LthError` naming the key and the valid choices.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lth_core.config.explain import parse
from lth_core.config.messages import brief, show_key
from lth_core.config.overrides import apply_overrides, point_name, point_raw, sweep_points
from lth_core.config.schema import MAX_SEED, TOP_LEVEL, RecipeModel, hashed, shorthand, stored
from lth_core.config.trainer import check_trainer_section
from lth_core.config.yaml_io import check_size, read_yaml, resolve_recipe_path
from lth_core.errors import LthError


@dataclass
class Recipe:
    """A validated recipe. Sections are plain dicts so the recipe is its own JSON record."""

    data: dict[str, Any]
    source: str = "<dict>"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A key that may be absent: a plugin's section (``recipe.get("extend")``)."""
        return self.data.get(key, default)

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
        for point in sweep_points(self.data["sweep"]):
            raw = point_raw(self.data, point, "sweep")
            raw["name"] = f"{self.name}-{point_name(point)}"
            out.append((point, validate(raw, self.source)))
        return out

    def hash(self) -> str:
        """Content hash of everything that changes results, as the fields' markers say
        (:func:`lth_core.config.schema.hashed`): name, tracking and other keys that say how
        to compute are left out, and keys added after a release count only when they differ
        from their default, so upgrading lth never orphans an existing run folder."""
        blob = json.dumps(_str_keys(hashed(self.data)), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _str_keys(obj: Any) -> Any:
    """YAML allows non-string keys (``1: x``); json's sort_keys cannot order mixed ones."""
    if isinstance(obj, dict):
        return {str(k): _str_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_str_keys(v) for v in obj]
    return obj


def validate(raw: Any, source: str = "<dict>", name: str | None = None) -> Recipe:
    """Check lth's own keys, types and choices and fill their defaults. Plugin names,
    options and sections are checked later, with the plugins; other top-level keys are
    kept as written for that."""
    if not isinstance(raw, dict):
        raise LthError(f"{source}: a recipe must be a YAML mapping of sections, got {type(raw).__name__}")
    check_size(raw, source)  # before anything copies or walks it
    raw = {k: shorthand(k, v) for k, v in copy.deepcopy(raw).items()}
    core = {k: v for k, v in raw.items() if k in TOP_LEVEL}
    try:
        out = stored(parse(RecipeModel, core, source=source))
    except LthError as exc:
        raise LthError(f"{exc}{_misspelt(raw)}") from None
    out["name"] = out["name"] or name or "recipe"
    out.update((k, v) for k, v in raw.items() if k not in TOP_LEVEL)
    _check_values(out, source)
    check_trainer_section(out["trainer"], out["data"]["batch_size"], source)
    _check_controls(out["controls"], source)
    _check_sweep(out["sweep"], raw, source)
    return Recipe(out, source)


def _misspelt(raw: dict) -> str:
    """`` (unknown key 'modle': model?)`` when a key kept for the plugins' check is close to
    one of lth's: the typo, not the section it left empty, is the mistake to fix."""
    for key in raw:
        close = difflib.get_close_matches(key, TOP_LEVEL, n=1, cutoff=0.8) if isinstance(key, str) and key not in TOP_LEVEL else []
        if close:
            return f" (unknown key {key!r}: {close[0]}?)"
    return ""


def load_recipe(spec: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A bundled recipe's name or a YAML file, with ``--set`` overrides, validated."""
    raw, path = raw_recipe(spec)
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, source=str(path), name=path.stem)


def raw_recipe(spec: str | Path) -> tuple[dict, Path]:
    """A recipe file's content as written (not yet validated) and the file it came from."""
    path = resolve_recipe_path(str(spec))
    raw = read_yaml(path)
    if raw is None:
        raise LthError(f"{path} is empty")
    if not isinstance(raw, dict):
        raise LthError(f"{path}: a recipe must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw, path


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


def _check_values(r: dict, source: str) -> None:
    """What no single key's model can say: the run's name as a folder, trials to stack,
    every trial's seed, SGD's Nesterov momentum."""
    problem = _folder_name_problem(r["name"])
    if problem:
        raise LthError(f"{source}: name {r['name']!r} {problem}; it names the run folder runs/NAME-HASH")
    if r["vectorize_trials"] and r["trials"] < 2:
        raise LthError(f"{source}: vectorize_trials stacks the trials of a recipe, and trials is {r['trials']}; set trials: 2 or more, or vectorize_trials: false")
    last = r["seed"] + r["trials"] - 1
    if last > MAX_SEED:
        raise LthError(f"{source}: trial {r['trials'] - 1} would run with seed {r['seed']} + {r['trials'] - 1} = {last}, beyond the "
                       f"largest seed {MAX_SEED}; lower seed or trials (seed + trials - 1 <= {MAX_SEED})")
    opt = r["optimizer"]
    if opt["name"] == "sgd" and opt["nesterov"] and opt["momentum"] == 0:
        raise LthError(f"{source}: optimizer.nesterov: true needs optimizer.momentum > 0 (torch's SGD refuses Nesterov without momentum)")


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


def _check_sweep(sweep: dict, raw: dict, source: str) -> None:
    """``sweep: {path: [values]}``; every point must itself be a valid recipe."""
    for key, values in sweep.items():
        if not isinstance(key, str) or not key or key.split(".")[0] == "sweep":
            raise LthError(f"{source}: sweep keys are recipe paths such as callbacks.0.density, got {brief(key)}")
        if not isinstance(values, list) or not values:
            raise LthError(f"{source}: sweep.{show_key(key)} must be a non-empty list of values, got {brief(values)}")
    for point in sweep_points(sweep):
        validate(point_raw(raw, point, f"{source}: sweep"), f"{source} (sweep point {point_name(point)})")
