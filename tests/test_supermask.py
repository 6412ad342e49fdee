"""Supermasks (lth_supermask): scores train, weights never do, and the mask is a real ticket.

Every run here is a real search on scikit-learn's digits with a small MLP: seconds each.
"""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from lth_core import hookimpl
from lth_core.errors import LthError
from lth_core.lottery.run import build_model, load_data
from lth_core.lottery.rounds import run_lottery
from lth_core import prunable_parameters
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.plugin_api.options import check_against_plugins
from lth_core.tickets.ticket import load_ticket
from lth_core.lottery.trials import run_experiment


def supermask_recipe(raw: dict, **options) -> dict:
    """The tiny recipe turned into a supermask search: round 0 only, SGD on the scores."""
    raw["init"] = "signed_kaiming_constant"
    raw["optimizer"] = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    raw["trainer"].update(max_steps=200, val_check_interval=100)
    raw["lottery"]["rounds"] = 0
    raw["callbacks"] = [{"name": "supermask", **options}]
    return raw


class ScoreSnapshot:
    """A throwaway plugin: copies every layer's scores when training starts."""

    def __init__(self):
        self.at_start: dict[str, torch.Tensor] = {}

    @hookimpl
    def round_callbacks(self, context):
        outer = self

        class Snap(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                for name, p in context.model.named_parameters():  # the scores live in each weight's parametrization
                    if name.endswith(".parametrizations.weight.0.scores"):
                        outer.at_start[name.split(".parametrizations.")[0] + ".weight"] = p.detach().clone()

        return [Snap()]


@pytest.fixture
def snapshot(pm):
    plugin = ScoreSnapshot()
    pm.register(plugin, name="score-snapshot")
    yield plugin
    pm.unregister(plugin)


def test_edge_popup_trains_scores_never_weights(tiny_raw, tmp_path, snapshot, pm):
    """Bitwise: every weight and bias of the ticket is θ0 (zero where masked); scores moved."""
    summary = run_lottery(validate(supermask_recipe(tiny_raw, density=0.5)), tmp_path, say=lambda s: None, pm=pm)
    ticket = load_ticket(tmp_path / "round_0")
    for name, init in ticket.init.items():
        if name in ticket.mask:
            assert torch.equal(ticket.final[name], init * ticket.mask[name]), name
            assert torch.equal(ticket.final[name][ticket.mask[name]], init[ticket.mask[name]]), name
        else:
            assert torch.equal(ticket.final[name], init), name  # biases: frozen too
    scores = load_file(str(tmp_path / "round_0" / "supermask_scores.safetensors"))
    assert set(scores) == set(ticket.mask) == set(snapshot.at_start)
    for name, s in scores.items():
        moved = (s - snapshot.at_start[name]).abs()
        assert moved.max() > 1e-3 and (moved > 0).float().mean() > 0.5, f"{name} scores barely trained"
        k = int(ticket.mask[name].sum())  # the ticket is exactly the top-k of |scores|
        top = torch.zeros(s.numel(), dtype=torch.bool)
        top[s.abs().flatten().topk(k).indices] = True
        assert torch.equal(top.view_as(s), ticket.mask[name])
    assert summary["rounds"][0]["test_acc_final"] > 0.7  # chance is 0.1: a random net's subnetwork works


@pytest.mark.parametrize("density", [0.1, 0.37])
def test_edge_popup_keeps_exactly_k_per_layer(tiny_raw, tmp_path, density, pm):
    raw = supermask_recipe(tiny_raw, density=density)
    raw["trainer"].update(max_steps=20, val_check_interval=10)
    summary = run_lottery(validate(raw), tmp_path, say=lambda s: None, pm=pm)
    ticket = load_ticket(tmp_path / "round_0")
    for name, m in ticket.mask.items():
        assert int(m.sum()) == round(density * m.numel()), name
    curves = json.loads((tmp_path / "round_0" / "curves.json").read_text())
    assert {c["weights_remaining"] for c in curves} == {ticket.mask.density()}  # what was evaluated is the ticket
    assert summary["rounds"][0]["weights_remaining"] == ticket.mask.density()


def test_model_is_restored_and_later_rounds_search_inside_the_mask(tiny_raw, tmp_path, pm):
    """Round 1 prunes round 0's supermask ticket; its supermask keeps half of what survived."""
    raw = supermask_recipe(tiny_raw, density=0.5)
    raw["lottery"].update(rounds=1, rate=0.5)
    raw["trainer"].update(max_steps=40, val_check_interval=20)
    run_lottery(validate(raw), tmp_path, say=lambda s: None, pm=pm)
    t0, t1 = load_ticket(tmp_path / "round_0"), load_ticket(tmp_path / "round_1")
    assert set(t1.final) == set(t0.final)  # no scores left in the model's state
    for name in t0.mask:
        assert not (t1.mask[name] & ~t0.mask[name]).any(), "round 1 revived a weight round 0 pruned"
        assert int(t1.mask[name].sum()) == round(0.5 * round(0.5 * int(t0.mask[name].sum())))
    assert t1.mask.density() == pytest.approx(0.125, abs=0.01)


def test_bernoulli_supermask_reports_expected_and_sampled_masks(tiny_raw, tmp_path, pm):
    raw = supermask_recipe(tiny_raw, method="bernoulli", eval_samples=5)
    raw["optimizer"]["lr"] = 50.0
    summary = run_lottery(validate(raw), tmp_path, say=lambda s: None, pm=pm)
    row = summary["rounds"][0]
    ticket = load_ticket(tmp_path / "round_0")
    scores = load_file(str(tmp_path / "round_0" / "supermask_scores.safetensors"))
    for name, s in scores.items():
        assert torch.equal(ticket.mask[name], s > 0)  # the most likely mask: sigmoid(s) > 0.5
        assert torch.equal(ticket.final[name], ticket.init[name] * ticket.mask[name])
    assert 0.0 < row["weights_remaining"] < 1.0
    assert row["supermask_test_acc_sampled_min"] <= row["supermask_test_acc_sampled_mean"] <= row["supermask_test_acc_sampled_max"]
    assert row["supermask_test_acc_sampled_std"] >= 0.0 and 0.0 < row["supermask_expected_density"] < 1.0
    assert min(row["test_acc_final"], row["supermask_test_acc_expected"], row["supermask_test_acc_sampled_mean"]) > 0.5


def test_bernoulli_rescale_scales_the_ticket_as_it_was_evaluated(tiny_raw, tmp_path, pm):
    raw = supermask_recipe(tiny_raw, method="bernoulli", rescale=True, eval_samples=2)
    raw["optimizer"]["lr"] = 50.0
    raw["trainer"].update(max_steps=40, val_check_interval=40)
    run_lottery(validate(raw), tmp_path, say=lambda s: None, pm=pm)
    ticket = load_ticket(tmp_path / "round_0")
    for name, m in ticket.mask.items():
        scale = m.numel() / int(m.sum())
        assert torch.allclose(ticket.final[name], ticket.init[name] * m * scale, rtol=1e-6, atol=0)


def test_signed_constant_inits_are_exact(tiny_raw, pm):
    """±sqrt(2/fan_in) (scaled: /sqrt(k)), both signs, through the recipe's init key, seeded."""
    registry = get_registry(pm)
    raw = supermask_recipe(tiny_raw)
    data = load_data(validate(raw), registry)
    for spec, k in (("signed_kaiming_constant", 1.0), ({"name": "scaled_signed_kaiming_constant", "density": 0.3}, 0.3)):
        raw["init"] = spec
        recipe = validate(raw)
        model = build_model(recipe, registry, data, seed=0)
        for name, w in prunable_parameters(model).items():
            std = math.sqrt(2.0 / (k * w.shape[1]))
            assert torch.allclose(w.abs(), torch.full_like(w, std)), name
            assert 0.4 < (w > 0).float().mean() < 0.6, name
        again = build_model(recipe, registry, data, seed=0)
        other = build_model(recipe, registry, data, seed=1)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
        assert not torch.equal(model.net[1].weight, other.net[1].weight)
    raw["init"] = "kaiming_normal"
    w = build_model(validate(raw), registry, data, seed=0).net[1].weight
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / w.shape[1]), rel=0.05)


def test_conv_net_supermask_with_non_affine_batchnorm(tmp_path, pm):
    """Conv-2 on 8x8 digits: BN without parameters, conv and fc weights frozen, masks exact."""
    raw = {
        "model": {"name": "conv2", "batchnorm": "non_affine", "width": 0.25},
        "data": {"name": "digits", "batch_size": 32},
        "init": {"name": "scaled_signed_kaiming_constant", "density": 0.5},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "trainer": {"max_steps": 30, "val_check_interval": 15, "enable_progress_bar": False},
        "lottery": {"rounds": 0},
        "callbacks": [{"name": "supermask", "density": 0.5}],
        "tracking": "none",
    }
    run_lottery(validate(raw), tmp_path, say=lambda s: None, pm=pm)
    ticket = load_ticket(tmp_path / "round_0")
    assert "bn1.running_mean" in ticket.init and not any(n.startswith("bn") and n.endswith((".weight", ".bias")) for n in ticket.init)
    for name, m in ticket.mask.items():
        assert int(m.sum()) == round(0.5 * m.numel())
        assert torch.equal(ticket.final[name], ticket.init[name] * m)
    assert not torch.equal(ticket.final["bn1.running_mean"], ticket.init["bn1.running_mean"])  # statistics do update


def test_bad_supermask_settings_are_one_line_errors(tiny_raw, tmp_path, pm):
    registry = get_registry(pm)
    raw = supermask_recipe(tiny_raw, method="popup")
    with pytest.raises(LthError, match="method is 'popup'; valid: edge_popup, bernoulli"):
        run_lottery(validate(raw), tmp_path / "a", say=lambda s: None, pm=pm)
    raw = supermask_recipe(tiny_raw, density=1.5)
    with pytest.raises(LthError, match=r"density must be in \(0, 1\]"):
        run_lottery(validate(raw), tmp_path / "b", say=lambda s: None, pm=pm)
    raw = supermask_recipe(tiny_raw)
    raw["init"] = "xavier"
    with pytest.raises(LthError, match="unknown initializer 'xavier'; installed: .*signed_kaiming_constant"):
        check_against_plugins(validate(raw), registry)
    raw["init"] = {"name": "signed_kaiming_constant", "density": 0.5}
    with pytest.raises(LthError, match="unknown option init.signed_kaiming_constant.density"):
        check_against_plugins(validate(raw), registry)
    raw["init"] = ["signed_kaiming_constant"]
    with pytest.raises(LthError, match="init must be a string or mapping or null"):
        validate(raw)


def test_a_k_sweep_runs_every_point_and_tabulates_them(tiny_raw, tmp_path, pm):
    """`sweep:` runs one complete run folder per value; sweep.md has one row per point."""
    raw = supermask_recipe(tiny_raw, density=0.5)
    raw["trainer"].update(max_steps=20, val_check_interval=10)
    raw["sweep"] = {"callbacks.0.density": [0.2, 0.6], "model.hidden": [[32, 16], [64, 32]]}
    recipe = validate(raw)
    result = run_experiment(recipe, tmp_path, say=lambda s: None, pm=pm)
    assert [p["point"] for p in result["points"]] == [
        {"callbacks.0.density": d, "model.hidden": h} for d in (0.2, 0.6) for h in ([32, 16], [64, 32])
    ]
    for p in result["points"]:
        summary = json.loads((tmp_path / p["folder"] / "summary.json").read_text())
        assert summary["recipe"]["callbacks"][0]["density"] == p["point"]["callbacks.0.density"]
        assert summary["recipe"]["model"]["hidden"] == p["point"]["model.hidden"]
        assert p["last_round"]["weights_remaining"] == pytest.approx(p["point"]["callbacks.0.density"], abs=0.01)
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert len(table) == 2 + 4 and table[0].startswith("| callbacks.0.density | model.hidden |")
    again = run_experiment(recipe, tmp_path, say=lambda s: None, pm=pm)  # resumes: reuses every finished run
    assert again["points"] == result["points"]


def test_sweep_mistakes_fail_at_load_naming_the_point(tiny_raw):
    raw = dict(tiny_raw, sweep={"lottery.rate": [0.2, 1.5]})
    with pytest.raises(LthError, match=r"sweep point lottery.rate=1.5.*lottery.rate must be in \(0, 1\)"):
        validate(raw)
    with pytest.raises(LthError, match="sweep.lottery.rate must be a non-empty list"):
        validate(dict(tiny_raw, sweep={"lottery.rate": 0.2}))
    with pytest.raises(LthError, match=r"sweep point lotery.rate=0.2\): unknown key 'lotery'"):  # lth's keys and plugins' sections
        check_against_plugins(validate(dict(tiny_raw, sweep={"lotery.rate": [0.2]})), get_registry())
    with pytest.raises(LthError, match="'5' is not an index of that list"):
        validate(dict(tiny_raw, callbacks=[{"name": "x"}], sweep={"callbacks.5.at": [1]}))


def test_callback_metrics_are_averaged_over_trials(tiny_raw, tmp_path, pm):
    """The Bernoulli callback's extra numbers reach the trials summary with their spread."""
    raw = supermask_recipe(tiny_raw, method="bernoulli", eval_samples=2)
    raw["optimizer"]["lr"] = 50.0
    raw["trainer"].update(max_steps=30, val_check_interval=30)
    raw["trials"] = 2
    summary = run_experiment(validate(raw), tmp_path, say=lambda s: None, pm=pm)
    row = summary["rounds"][0]
    per_trial = [json.loads((tmp_path / f"trial_{i}" / "summary.json").read_text())["rounds"][0] for i in (0, 1)]
    key = "supermask_test_acc_expected"
    assert row["stats"][key]["values"] == [r[key] for r in per_trial]
    assert row[key] == pytest.approx(sum(r[key] for r in per_trial) / 2)


def test_a_supermask_ticket_is_read_by_report_and_export(tiny_raw, tmp_path, pm):
    """The ticket is ordinary: `lth report` tabulates it and `lth export` reproduces its predictions."""
    from lth_core.commands.exporting import export_ticket
    from lth_core.reporting.report import write_report

    raw = supermask_recipe(tiny_raw, density=0.2)
    raw["trainer"].update(max_steps=60, val_check_interval=30)
    summary = run_lottery(validate(raw), tmp_path / "run", say=lambda s: None, pm=pm)
    report = write_report([tmp_path / "run"], tmp_path / "report")
    assert f"{summary['rounds'][0]['test_acc'] * 100:.2f}" in report.read_text()
    record = export_ticket(tmp_path / "run" / "round_0", tmp_path / "m.pt2", pm=pm)
    assert record["prediction_agreement"] == 1.0 and record["max_abs_logit_diff_reloaded"] <= 1e-5
    assert record["test_acc"] == pytest.approx(summary["rounds"][0]["test_acc_final"], abs=1e-4)
    assert record["units"][0]["type"] == "SparseLinear"  # 20% of the first layer: stored as its nonzeros
