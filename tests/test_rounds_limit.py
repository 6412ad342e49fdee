"""Work with an end: more rounds than a model can be pruned are refused at load, and a
round that would train the previous round's mask again stops the lottery in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from conftest import registered
from lth_core import Mask, hookimpl
from lth_core.config import load_recipe, validate
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.lottery.steps import check_rounds
from lth_core.tickets.limits import rounds_limit
from lth_core.tickets.pruning import Allocation, prune_by_scores
from lth_core.tickets.ticket import is_ticket, load_ticket
from lth_models import lenet300, mlp


def _first_repeat(recipe, model) -> int:
    """The first round whose mask equals the one before, found by pruning real masks
    (random scores through the core's own allocation), round after round."""
    mask = Mask.ones_like(model)
    allocation = Allocation.of_recipe(recipe, mask)
    generator = torch.Generator().manual_seed(0)
    for k in range(1, 200):
        new = prune_by_scores({n: torch.rand(t.shape, generator=generator) for n, t in mask.items()}, mask, allocation)
        if new == mask:
            return k
        mask = new
    raise AssertionError("no repeat in 200 rounds")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_the_limit_is_where_real_masks_stop_changing(scope) -> None:
    """The counts' arithmetic agrees with pruning real masks: LeNet-300-100 on digits (the
    quickstart, its output layer at half rate) stops changing after the limit it names."""
    recipe = load_recipe("quickstart", ["lottery.rounds=1000000", f"lottery.scope={scope}"])
    model = lenet300((64,), 10)
    limit = rounds_limit(Allocation.of_recipe(recipe, Mask.ones_like(model)), Mask.ones_like(model), "iterative", 10**6)
    assert limit is not None and limit.rounds == _first_repeat(recipe, model) - 1
    assert rounds_limit(Allocation.of_recipe(recipe, Mask.ones_like(model)), Mask.ones_like(model), "iterative", limit.rounds) is None


def test_a_million_rounds_are_refused_at_load_naming_the_largest_sensible_number(tmp_path) -> None:
    """``lth run quickstart --set lottery.rounds=1000000``: one line, before any folder."""
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "lth_core.commands.cli", "run", "quickstart", "--out", str(out),
                           "--set", "lottery.rounds=1000000", "--set", "tracking=none",
                           "--set", "lottery.rate=0.2", "--set", "lottery.layer_rates.last=0.1"],  # the paper's rates
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lth: error: ") and "lottery.rounds: 1000000 is more than model 'lenet300' can be pruned at lottery.rate 0.2" in line
    assert line.endswith("every further round would train the same mask again; the largest lottery.rounds that makes sense here is 49"), line
    assert not out.exists()


@pytest.mark.parametrize("mode", ["iterative", "one_shot", "at_init"])
def test_rounds_that_would_empty_a_layer_are_refused_and_the_limit_runs(tiny_raw, tmp_path, pm, mode) -> None:
    """At rate 0.9 the output layer (320 weights) keeps 32, 3, then none: three rounds are
    refused naming it and 2; two rounds train on real digits, every layer keeping a weight."""
    tiny_raw["lottery"].update(rate=0.9, rounds=3, mode=mode)
    model = mlp((64,), 10, hidden=[64, 32])
    with pytest.raises(LthError) as exc:
        check_rounds(validate(tiny_raw), Mask.ones_like(model))
    assert str(exc.value).endswith("round 3 would prune net.5.weight (3 weights left) to no weight at all; "
                                   "the largest lottery.rounds that makes sense here is 2"), str(exc.value)
    with pytest.raises(LthError, match="the largest lottery.rounds that makes sense here is 2"):
        run_lottery(validate(tiny_raw), tmp_path / "refused", say=lambda s: None, pm=pm)
    assert not (tmp_path / "refused").exists()
    tiny_raw["lottery"]["rounds"] = 2
    summary = run_lottery(validate(tiny_raw), tmp_path / "run", say=lambda s: None, pm=pm)
    sparsity = load_ticket(tmp_path / "run" / "round_2").mask.report()
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert all(layer["kept"] >= 1 for layer in sparsity.values()), sparsity


class KeepOnePerLayer(pl.Callback):
    """Prunes every layer to a single weight at the first step of the dense round: the
    next round, at rate 0.2, keeps that weight (0.2 rounds to no pruning)."""

    def state_dict(self) -> dict:
        return {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.mask.kept() > len(module.mask):
            one = {n: torch.zeros_like(m) for n, m in module.mask.items()}
            for n, m in module.mask.items():
                one[n].view(-1)[int(m.view(-1).nonzero()[0])] = True
            module.set_mask(Mask(one))


class OnePerLayerPlugin:
    @hookimpl
    def register_callbacks(self, register) -> None:
        register("keep_one_per_layer", lambda context: KeepOnePerLayer() if context.round == 0 else None)


def test_a_round_that_would_repeat_the_last_mask_stops_the_lottery(tiny_raw, tmp_path, pm) -> None:
    """Pruning during training reached the end sooner than the load check can foresee:
    round 1 would train round 0's mask again; one line, round 0's ticket kept."""
    tiny_raw["lottery"].update(rate=0.2, rounds=3)
    tiny_raw["callbacks"] = [{"name": "keep_one_per_layer"}]
    with registered(pm, OnePerLayerPlugin(), "one-per-layer"):
        with pytest.raises(LthError) as exc:
            run_lottery(validate(tiny_raw), tmp_path / "run", say=lambda s: None, pm=pm)
    assert str(exc.value) == (f"round 1 would train the same mask as round 0 ({3 / 6464:.2%} of weights): pruning removes no more "
                              f"weights, so every later round would repeat it; round 0 is kept in {tmp_path / 'run'}; "
                              "lottery.rounds: 0 is as far as this run goes")
    assert is_ticket(tmp_path / "run" / "round_0") and not (tmp_path / "run" / "round_1").exists()
