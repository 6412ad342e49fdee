"""The core's extension points used by pruning-during-training and rewinding plugins.

Each test registers a throwaway plugin and checks the behaviour the core promises in
hookspecs.py / context.py, on real digits.
"""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from lth_core import hookimpl
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core import Allocation, prune_by_scores
from lth_core.config import validate
from lth_core.plugin_api.options import check_against_plugins
from lth_core.plugin_api.registry import get_registry
from lth_core.tickets.ticket import load_ticket


class HalveAtStep(pl.Callback):
    """Prunes half of every layer (smallest |w|) once, at a given step, mid-training."""

    def __init__(self, context, at: int):
        self.context, self.at, self.done_at = context, at, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.step == self.at and self.done_at is None:
            params = dict(module.model.named_parameters())
            scores = {n: params[n].detach().abs().cpu() for n in module.mask}
            module.set_mask(prune_by_scores(scores, module.mask, Allocation({n: 0.5 for n in module.mask})))
            self.done_at = module.step
            self.context.state["halved_at"] = module.step


class Plugin:
    def __init__(self):
        self.states: list[dict] = []
        self.initial_seen: list[bool] = []

    @hookimpl
    def register_callbacks(self, register):
        def halve(context, at: int = 20):
            return HalveAtStep(context, at) if context.name == "ticket" and context.round == 0 else None

        register("halve_once", halve)

    @hookimpl
    def register_criteria(self, register):
        def spy(model, mask, context):
            self.states.append(dict(context.state))
            params = dict(model.named_parameters())
            self.initial_seen.append(all(torch.equal(params[n].detach().cpu(), context.initial[n]) for n in mask))
            return {n: params[n].detach().abs().cpu() for n in mask}

        register("spy", spy)

    @hookimpl
    def register_rewind_policies(self, register):
        def from_step(model, mask, context):
            context.start_step = 40
            context.optimizer["lr"] = 1e-4
            return {k: v.clone() for k, v in context.initial.items()}

        register("start_at_40", from_step)


@pytest.fixture
def plugin(pm):
    p = Plugin()
    pm.register(p, name="core_ext_test")
    yield p
    pm.unregister(name="core_ext_test")


def test_a_callback_pruning_during_training_makes_the_ticket_sparse(plugin, pm, tiny_raw, tmp_path):
    tiny_raw["callbacks"] = [{"name": "halve_once", "at": 20}]
    tiny_raw["lottery"].update(rounds=0)
    tiny_raw["controls"] = [{"name": "retrain", "rewind": "init"}, "random_pruning"]
    summary = run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    ticket = load_ticket(tmp_path / "round_0")
    assert ticket.mask.density() == pytest.approx(0.5, abs=0.01)
    assert summary["rounds"][0]["weights_remaining"] == ticket.mask.density()
    for n, m in ticket.mask.items():
        assert bool((ticket.final[n][~m] == 0).all())
    # Round 0 is sparse, so its controls ran beside it: retrain = the final mask from θ0.
    retrain = load_ticket(tmp_path / "round_0" / "control_retrain")
    assert retrain.mask == ticket.mask
    assert all(torch.equal(retrain.init[n], ticket.init[n]) for n in ticket.init)
    rp = load_ticket(tmp_path / "round_0" / "control_random_pruning")
    assert rp.mask != ticket.mask
    assert {n: int(m.sum()) for n, m in rp.mask.items()} == {n: int(m.sum()) for n, m in ticket.mask.items()}
    assert [r["round"] for r in summary["controls"]["retrain"]] == [0]


def test_callback_state_reaches_the_next_criterion(plugin, pm, tiny_raw, tmp_path):
    tiny_raw["callbacks"] = [{"name": "halve_once", "at": 20}]
    tiny_raw["lottery"].update(rounds=1, criterion="spy")
    run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    assert plugin.states == [{"halved_at": 20}]
    # Round 1 prunes round 0's (already halved) ticket by another half.
    assert load_ticket(tmp_path / "round_1").mask.density() == pytest.approx(0.25, abs=0.01)


def test_rewind_policy_moves_start_step_and_optimiser(plugin, pm, tiny_raw, tmp_path):
    tiny_raw["lottery"].update(rounds=1, rewind="start_at_40")
    tiny_raw["optimizer"].update(warmup_steps=50)
    run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    curves = json.loads((tmp_path / "round_1" / "curves.json").read_text())
    # max_steps 60, eval every 20: resuming at 40 trains 20 steps and evaluates at step 60.
    assert [row["step"] for row in curves] == [60]
    meta = load_ticket(tmp_path / "round_1").meta
    assert meta["start_step"] == 40 and meta["optimizer"]["lr"] == 1e-4
    assert load_ticket(tmp_path / "round_0").meta["start_step"] == 0


def test_bad_start_step_is_a_plugin_error(pm, tiny_raw, tmp_path):
    class Bad:
        @hookimpl
        def register_rewind_policies(self, register):
            def too_far(model, mask, context):
                context.start_step = 10_000
                return dict(context.initial)

            register("too_far", too_far)

    pm.register(Bad(), name="bad_rewind")
    try:
        tiny_raw["lottery"].update(rounds=1, rewind="too_far")
        with pytest.raises(LthError, match=r"too_far.*start_step=10000"):
            run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(name="bad_rewind")


def test_at_init_mode_scores_theta0_and_compounds_rates(plugin, pm, tiny_raw, tmp_path):
    tiny_raw["lottery"].update(rounds=2, criterion="spy", mode="at_init")
    summary = run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    assert plugin.initial_seen == [True, True]
    assert [r["weights_remaining"] for r in summary["rounds"]] == pytest.approx([1.0, 0.5, 0.25], abs=0.01)
    # Round 2 is pruned from the dense θ0, not from round 1's mask.
    theta0 = load_ticket(tmp_path / "round_0").init
    m2 = load_ticket(tmp_path / "round_2").mask
    for n, m in m2.items():
        k = int(m.sum())
        expected = torch.zeros(m.numel(), dtype=torch.bool)
        expected[theta0[n].abs().flatten().topk(k).indices] = True
        assert torch.equal(m.flatten(), expected)


def test_callback_options_are_validated(plugin, pm, tiny_raw):
    tiny_raw["callbacks"] = [{"name": "halve_once", "when": 3}]
    with pytest.raises(LthError, match=r"unknown option callbacks.halve_once.when; valid: at"):
        check_against_plugins(validate(tiny_raw), get_registry(pm))
    tiny_raw["callbacks"] = ["no_such_callback"]
    with pytest.raises(LthError, match=r"unknown callback 'no_such_callback'; installed: .*halve_once"):
        check_against_plugins(validate(tiny_raw), get_registry(pm))
    tiny_raw["callbacks"] = [3]
    with pytest.raises(LthError, match=r"callbacks\.0 must be a registered callback name or \{name, \.\.\.options\}, got 3$"):
        validate(tiny_raw)


def test_recipe_hash_ignores_later_keys_at_their_default(tiny_raw):
    """Run folders made before `callbacks` existed keep their hash (they resume)."""
    from lth_core.config import Recipe

    recipe = validate(tiny_raw)
    older = recipe.to_dict()
    del older["callbacks"]
    assert Recipe(older).hash() == recipe.hash()
    tiny_raw["callbacks"] = [{"name": "halve_once", "at": 20}]
    assert validate(tiny_raw).hash() != recipe.hash()
