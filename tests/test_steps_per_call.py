"""Several steps per Lightning call train exactly what one step per call trains.

A round without training callbacks runs ``steps_per_call`` optimiser steps inside one
Lightning call (issue 8: Lightning's per-step hooks cost a third of a LeNet step). These
tests run real lotteries on digits both ways and compare every number and every tensor.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lth_core.data.loaders import StepChunks, TensorLoader
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.engines.trainer import steps_per_call
from lth_core.config import validate
from lth_core.tickets.ticket import load_ticket

OPTIMISERS = {
    "sgd_nesterov_decay_schedule": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3,
                                    "warmup_steps": 10, "milestones": [70]},
    "adam_decay": {"name": "adam", "lr": 3e-3, "weight_decay": 1e-3},
    "adamw": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-2},
}


def _run(raw: dict, out: Path, chunk: int) -> dict:
    raw = copy.deepcopy(raw)
    raw["steps_per_call"] = chunk
    return run_lottery(validate(raw), out, say=lambda s: None)


def _same_tensors(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    for f in files:
        x, y = load_file(a / f), load_file(b / f)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f


@pytest.mark.parametrize("opt", list(OPTIMISERS))
def test_many_steps_per_call_equal_one_step_per_call_bit_for_bit(tiny_raw, tmp_path, opt):
    """130 steps (not a multiple of the 20-step evaluation), two rounds and a control:
    summaries, curves and every saved tensor are identical."""
    tiny_raw["optimizer"] = OPTIMISERS[opt]
    tiny_raw["trainer"]["max_steps"] = 130
    tiny_raw["controls"] = ["random_reinit"]
    one, many = _run(tiny_raw, tmp_path / "one", 1), _run(tiny_raw, tmp_path / "many", 50)
    assert json.dumps([one["rounds"], one["controls"]]) == json.dumps([many["rounds"], many["controls"]])
    assert [r["steps"] for r in many["rounds"]] == [130, 130, 130]
    for k in range(3):
        curve = lambda d: json.loads((d / f"round_{k}" / "curves.json").read_text())  # noqa: E731
        assert curve(tmp_path / "one") == curve(tmp_path / "many")
        assert [h["step"] for h in curve(tmp_path / "many")] == [20, 40, 60, 80, 100, 120, 130]
    _same_tensors(tmp_path / "one", tmp_path / "many")
    ticket = load_ticket(tmp_path / "many" / "round_2")
    assert ticket.mask.density() == 0.25
    for name, keep in ticket.mask.items():  # gradients masked, no post-step multiply: still exactly zero
        assert int((ticket.final[name][~keep] != 0).sum()) == 0


def test_chunks_follow_the_step_by_step_data_order_across_epochs(digits_loader_parts):
    """Chunks of 7 steps starting mid-epoch hold the batches one step at a time would see."""
    x, y = digits_loader_parts
    loader = TensorLoader(x, y, 32, shuffle=True, seed=3, drop_last=True)
    per_epoch = len(loader)
    start, end = per_epoch - 5, 3 * per_epoch + 4  # crosses three epoch boundaries
    expected = []
    for epoch in range(start // per_epoch, end // per_epoch + 1):
        step_loader = TensorLoader(x, y, 32, shuffle=True, seed=3, drop_last=True)
        step_loader.epoch = epoch
        expected += [b for b in step_loader]
    expected = expected[start % per_epoch:][: end - start]
    got = [b for xs, ys in StepChunks(loader, start, end, 7) for b in zip(xs.split(32), ys.split(32))]
    assert len(got) == end - start == len(expected)
    assert all(torch.equal(gx, ex) and torch.equal(gy, ey) for (gx, gy), (ex, ey) in zip(got, expected))


@pytest.fixture(scope="module")
def digits_loader_parts():
    from lth_datasets import digits

    bundle = digits()
    return bundle.train_x[:500], bundle.train_y[:500]


def test_steps_per_call_is_one_where_a_step_needs_lightning(tiny_raw):
    recipe = validate(tiny_raw)
    assert steps_per_call(recipe, []) == 20  # the largest divisor of val_check_interval=20 up to 50

    class NeedsHooks:  # any callback without multi_step_safe
        pass

    class BetweenCalls:
        multi_step_safe = True

    assert steps_per_call(recipe, [NeedsHooks()]) == 1
    assert steps_per_call(recipe, [BetweenCalls()]) == 20
    for key, value in [("devices", 2), ("strategy", "ddp"), ("precision", "16-mixed"), ("gradient_clip_val", 1.0),
                       ("accumulate_grad_batches", 2)]:
        raw = copy.deepcopy(tiny_raw)
        raw["trainer"][key] = value
        assert steps_per_call(validate(raw), []) == 1, key
    raw = copy.deepcopy(tiny_raw)
    raw["steps_per_call"], raw["trainer"]["val_check_interval"] = 7, 30
    assert steps_per_call(validate(raw), []) == 6


def test_steps_per_call_must_be_a_positive_whole_number(tiny_raw):
    tiny_raw["steps_per_call"] = 0
    with pytest.raises(LthError, match="steps_per_call must be >= 1"):
        validate(tiny_raw)
    tiny_raw["steps_per_call"] = "fast"
    with pytest.raises(LthError, match="steps_per_call"):
        validate(tiny_raw)


def test_the_default_does_not_change_existing_recipe_hashes(tiny_raw):
    explicit = copy.deepcopy(tiny_raw)
    explicit["steps_per_call"] = 50
    assert validate(tiny_raw).hash() == validate(explicit).hash()
