"""Growing a finished experiment: more ``lottery.rounds`` or more ``trials`` into its folder.

A run folder holds one recipe (its hash in ``run.json``). Rounds 0..N of a lottery do not
depend on how many rounds follow them, and trial ``i`` does not depend on how many trials
there are, so a recipe that differs from the folder's only by *more* rounds or trials
continues it: finished tickets are reused, the new rounds and trials train. ``run.json``
keeps the hashes the folder grew from (``grown_from``); a ticket made under one of them is
this recipe's ticket. Any other change is refused as before, naming what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lth_core.config import Recipe
from lth_core.errors import LthError
from lth_core.files import read_json

#: The keys that may grow: (path, what the message calls it).
GROWABLE = (("lottery", "rounds"), ("trials",))


def _get(data: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part, {}) if isinstance(data, dict) else {}
    return data


def _with(data: dict, path: tuple[str, ...], value: Any) -> dict:
    out = Recipe(data).to_dict()
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(old: dict, new: dict, limit: int = 3) -> str:
    """``lottery.rate 0.2 -> 0.1, seed 0 -> 1``: the keys whose values differ."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in ("name", "description")]
    text = ", ".join(f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def grows(out_dir: Path, recipe: Recipe, previous: str) -> list[str] | None:
    """The hashes ``recipe`` grows from when the folder's recipe (hash ``previous``) is the
    same but for more rounds or trials; ``None`` when the folder holds another recipe."""
    try:
        old = Recipe(yaml.safe_load((out_dir / "recipe.yaml").read_text(encoding="utf-8")), str(out_dir / "recipe.yaml"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(old.data, dict) or old.hash() != previous:
        return None
    same = old.data
    for path in GROWABLE:
        if _get(recipe.data, path) < _get(old.data, path):
            return None  # fewer rounds or trials: report the finished ones with `lth report --rounds`
        same = _with(same, path, _get(recipe.data, path))
    if Recipe(same).hash() != recipe.hash():
        return None
    return [*read_json(out_dir / "run.json").get("grown_from", []), previous]


def refusal(out_dir: Path, recipe: Recipe, previous: str) -> LthError:
    """Why ``recipe`` cannot run into ``out_dir``: another recipe, naming what differs."""
    what, old = "", None
    try:
        old = yaml.safe_load((out_dir / "recipe.yaml").read_text(encoding="utf-8"))
        if isinstance(old, dict):
            what = differences(old, recipe.to_dict())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    fewer = [".".join(p) for p in GROWABLE if isinstance(old, dict) and _get(recipe.data, p) < _get(old, p)]
    hint = (f"; it holds more {' and '.join(fewer)} than this recipe asks for (only more continue a folder)"
            if fewer else "; only more lottery.rounds or trials continue a folder")
    return LthError(f"{out_dir} holds a run of a different recipe (hash {previous}, this one {recipe.hash()}"
                    f"{': ' + what if what else ''}){hint}; choose another --out or delete that folder")


def nest_single_trial(out_dir: Path, say: Any = print) -> None:
    """A one-trial run grown to several trials: its rounds become trial 0's (``trial_0/``,
    with the recipe and hash they were made under, and its W&B run), so they are reused
    instead of trained again. Renames within the folder; ``run.json`` and ``recipe.yaml``
    are copied first, so a kill part way leaves rounds that trial 0 reuses or retrains."""
    from lth_core.files import atomic_write_text, make_dir

    trial = out_dir / "trial_0"
    if trial.exists() or not (out_dir / "round_0").is_dir():
        return
    make_dir(trial)
    for name in ("recipe.yaml", "run.json"):
        atomic_write_text(trial / name, (out_dir / name).read_text(encoding="utf-8"))
    moved = sorted(p.name for p in out_dir.iterdir() if p.name.startswith("round_") or p.name in ("wandb", "wandb_run_id"))
    for name in moved:
        (out_dir / name).rename(trial / name)
    say(f"{out_dir}'s rounds are trial 0's now ({trial})")


def accepted_hashes(out_dir: Path, recipe: Recipe) -> set[str]:
    """The recipe hashes whose finished tickets this recipe reuses in ``out_dir``."""
    record = Path(out_dir) / "run.json"
    grown = read_json(record).get("grown_from", []) if record.is_file() else []
    return {recipe.hash(), *grown}
