"""Every number a recipe holds has its valid range checked at load.

The numeric keys are found by walking lth's own recipe models (and Lightning's Trainer
signature for ``trainer:``), not listed by hand, so a key added later is covered too.
Values far outside any range are refused for every one of them; hypothesis then draws
values over the whole schema, and whatever a recipe with them passes, the code that
consumes those numbers accepts: Lightning's seeding for every trial, torch's optimiser
and learning-rate schedule, the data split and order on real digits, Lightning's
Trainer, the pruning allocation. Finally a real two-trial run at the largest seeds.
"""

from __future__ import annotations

import copy
import json
import math
import typing
from pathlib import Path
from types import UnionType
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from conftest import TINY
from lth_core.config import RESERVED_TRAINER_KEYS, validate
from lth_core.config.schema import MAX_SEED, RecipeModel
from lth_core.config.trainer import _annotation_types, _trainer_params
from lth_core.data.loaders import DataModule
from lth_core.engines import checkpoints
from lth_core.engines.module import build_optimizer, lr_factor
from lth_core.engines.trainer import make_trainer, steps_per_call
from lth_core.errors import LthError
from lth_core.lottery.api import run as lth_run
from lth_core.tickets.mask import Mask
from lth_core.tickets.pruning import Allocation
from lth_datasets import digits
from lth_models import mlp

LIST, DICT = "[]", "{}"  # a leaf inside a list, or a mapping's value


def _leaves(annotation: Any, path: tuple) -> list[tuple[tuple, type]]:
    """(path, int or float) of every number inside ``annotation``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = annotation.__origin__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [leaf for name, f in annotation.model_fields.items() for leaf in _leaves(f.annotation, path + (name,))]
    if origin in (typing.Union, UnionType):
        return [leaf for member in args for leaf in _leaves(member, path)]
    if origin is list:
        return _leaves(args[0], path + (LIST,))
    if origin is dict:
        return _leaves(args[1], path + (DICT,))
    return [(path, annotation)] if annotation in (int, float) else []


#: Every numeric key of lth's own schema, then every numeric Trainer argument a recipe may give.
SCHEMA_LEAVES = sorted(set(_leaves(RecipeModel, ())), key=str)
TRAINER_LEAVES = sorted(
    {(("trainer", k), t) for k, p in _trainer_params().items() if k not in RESERVED_TRAINER_KEYS
     for t in _annotation_types(p.annotation) if t in (int, float)}, key=str)
LEAVES = SCHEMA_LEAVES + TRAINER_LEAVES


def test_the_walk_finds_the_numbers_it_should() -> None:
    """A guard on the walk itself: it sees nested sections, lists, mappings and unions."""
    found = {path for path, _ in LEAVES}
    for path in [("seed",), ("trials",), ("data", "val_size"), ("data", "classes", LIST), ("optimizer", "milestones", LIST),
                 ("lottery", "layer_rates", DICT), ("lottery", "rounds"), ("tracking", "log_every_n_steps"),
                 ("trainer", "max_steps"), ("trainer", "gradient_clip_val"), ("trainer", "num_nodes")]:
        assert path in found, path


def with_value(path: tuple, value: Any, base: dict | None = None) -> dict:
    """The tiny recipe with ``value`` at ``path`` (a list or mapping built around a leaf)."""
    raw = copy.deepcopy(base or TINY)
    raw["tracking"] = {"backend": "none"}
    node, keys = raw, list(path)
    while keys:
        key = keys.pop(0)
        if keys and keys[0] == LIST:
            keys.pop(0)
            node[key] = [0, value] if key == "classes" else [value]
            return raw
        if keys and keys[0] == DICT:
            node[key] = {"net.1": value}
            return raw
        if not keys:
            node[key] = value
        else:
            node = node.setdefault(key, {})
    return raw


@pytest.mark.parametrize("path, kind", LEAVES, ids=[".".join(p) + f":{k.__name__}" for p, k in LEAVES])
def test_a_number_outside_every_range_is_refused_in_one_line(path, kind) -> None:
    """2**70 or -2**70 for an integer, NaN, ±inf or -2**70 for a real number: no key of a
    recipe has such a value in its range, and each is one line naming the key."""
    values = [2**70, -(2**70)] if kind is int else [math.nan, math.inf, -math.inf, -(2.0**70)]
    for value in values:
        with pytest.raises(LthError) as exc:
            validate(with_value(path, value))
        assert len(str(exc.value).splitlines()) == 1
        assert path[-1] in str(exc.value) or path[-2] in str(exc.value), str(exc.value)


# --- hypothesis: whatever passes, its consumers accept ---------------------------------------

_INTS = st.one_of(st.integers(-3, 130), st.integers(-(2**80), 2**80), st.sampled_from([2**32 - 2, 2**32 - 1, 2**32, 2**63 - 1, 2**63]))
_REALS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.5, 1e-300, 1e300]))
#: Keys that start processes (data parallel has its own tests); the rest build a Trainer here.
_PROCESS_KEYS = {("trainer", "devices"), ("trainer", "num_nodes")}
_DRAWN = [(p, k) for p, k in LEAVES if p not in _PROCESS_KEYS]


@pytest.fixture(scope="module")
def consumers(tmp_path_factory):
    """What consumes a recipe's numbers, built once: real digits and an MLP's mask."""
    model = mlp((64,), 10, hidden=[64, 32])
    return digits(), Mask.ones_like(model), tmp_path_factory.mktemp("trainer")


def _consume(recipe, bundle, mask: Mask, folder: Path) -> None:
    """Hand every number of an accepted recipe to the code that uses it."""
    r = recipe.data
    for seed in {r["seed"], r["seed"] + r["trials"] - 1}:  # every trial's seed (the first and the last)
        pl.seed_everything(seed, verbose=False)
    d = r["data"]
    try:
        data = DataModule(bundle, d["batch_size"], d["eval_batch_size"], d["val_size"], r["seed"], d["subset"], d.get("order_seed"))
    except LthError:  # a size only the data can refuse (a batch larger than the split): one line too
        data = None
    if data is not None:
        loader = data.train_loader(data.order_seed)
        assert len(loader.order(0)) == data.train_x.shape[0] and len(loader.order(2**40)) == data.train_x.shape[0]
        checkpoints.every_n_steps(recipe, len(loader))
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([weight], r["optimizer"])
    factor = lr_factor(r["optimizer"]) or (lambda step: 1.0)
    for step in (0, 1, *r["optimizer"]["milestones"], r["optimizer"]["warmup_steps"], 2**62):
        assert math.isfinite(factor(step)) and factor(step) >= 0
    weight.sum().backward()
    optimizer.step()
    make_trainer(recipe, None, folder, 0, [], steps_per_call(recipe, []))
    Allocation.of_recipe(recipe, mask).counts(mask)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_whatever_passes_the_schema_its_consumers_accept(consumers, data) -> None:
    bundle, mask, folder = consumers
    raw = copy.deepcopy(TINY)
    for path, kind in data.draw(st.lists(st.sampled_from(_DRAWN), min_size=1, max_size=6, unique=True)):
        raw = with_value(path, data.draw(_INTS if kind is int else st.one_of(_REALS, _INTS)), raw)
    try:
        recipe = validate(raw)
    except LthError as exc:
        assert len(str(exc).splitlines()) == 1
        event("refused at load")
        return
    event("accepted: consumed")
    _consume(recipe, bundle, mask, folder)


def test_trials_derive_seeds_that_must_stay_seeds(tiny_raw) -> None:
    """Trial i runs with seed + i: the last trial's seed is checked at load, with the numbers."""
    tiny_raw.update(seed=MAX_SEED, trials=2)
    with pytest.raises(LthError) as exc:
        validate(tiny_raw)
    assert str(exc.value) == ("<dict>: trial 1 would run with seed 4294967295 + 1 = 4294967296, beyond the largest seed 4294967295; "
                              "lower seed or trials (seed + trials - 1 <= 4294967295)")
    tiny_raw["sweep"] = {"seed": [0, MAX_SEED]}
    tiny_raw["seed"] = 0
    with pytest.raises(LthError, match=r"sweep point seed=4294967295\): trial 1 would run with seed 4294967295 \+ 1"):
        validate(tiny_raw)


def test_the_largest_seeds_train(tiny_raw, tmp_path) -> None:
    """A real run at the edge: trials 0 and 1 of seed 2**32-2 train (Lightning seeds both)."""
    tiny_raw.update(seed=MAX_SEED - 1, trials=2)
    tiny_raw["lottery"]["rounds"] = 0
    summary = lth_run(tiny_raw, out=tmp_path / "edge", say=lambda s: None)
    assert summary["rounds"][0]["trials"] == 2
    seeds = [json.loads((tmp_path / "edge" / f"trial_{i}" / "round_0" / "ticket.json").read_text())["seed"] for i in (0, 1)]
    assert seeds == [MAX_SEED - 1, MAX_SEED]


@pytest.mark.parametrize("optimizer, needle", [
    ({"name": "sgd", "nesterov": True}, "optimizer.nesterov: true needs optimizer.momentum > 0"),
    ({"name": "sgd", "momentum": 1.0}, "optimizer.momentum must be in [0, 1)"),
    ({"name": "adam", "gamma": 2.0, "milestones": [10]}, "optimizer.gamma must be in (0, 1]"),
    ({"name": "adam", "weight_decay": -0.1}, "optimizer.weight_decay must be a finite number >= 0"),
])
def test_optimizer_settings_torch_would_refuse_are_refused_at_load(tiny_raw, optimizer, needle) -> None:
    tiny_raw["optimizer"] = optimizer
    with pytest.raises(LthError) as exc:
        validate(tiny_raw)
    assert needle in str(exc.value), str(exc.value)
