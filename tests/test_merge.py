"""Combining tickets (``lth merge``) on real data: scikit-learn's digits, tiny MLPs.

Weight matching must find a hidden permutation exactly; union and intersection must be
the set algebra of the masks; the linear path must start at A and end at B; the command
must write merge.json and refuse bad input with one line.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, lth_in_fresh_process
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.plugin_api.contexts import MergeContext, MergeResult
from lth_core.errors import LthError, PluginError
from lth_core.lottery.run import build_model, load_data
from lth_core import Mask
from lth_core.commands.merging import merge_tickets
from lth_core.plugin_api.registry import get_registry
from lth_core.config import Recipe, validate
from lth_core.tickets.ticket import Ticket, load_ticket, save_ticket
from lth_core.lottery.trials import run_experiment
from lth_merge.matching import layer_chain, match, permute

QUIET = dict(say=lambda s: None)


def _recipe(**data) -> Recipe:
    raw = copy.deepcopy(TINY)
    raw["lottery"]["rounds"] = 1
    raw["data"].update(data.pop("data", {}))
    raw.update(data)
    return validate(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three tiny lotteries: seed 0, seed 1, and seed 0 with another data order."""
    root = tmp_path_factory.mktemp("merge_runs")
    specs = {"seed0": _recipe(), "seed1": _recipe(seed=1), "order": _recipe(data={"order_seed": 7})}
    for name, recipe in specs.items():
        run_experiment(recipe, root / name, **QUIET)
    return {name: root / name for name in specs}


def _ticket(runs, name: str, round_: int = 1) -> Path:
    return runs[name] / f"round_{round_}"


def _random_perms(chain, state, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(state[layer.weight].shape[0], generator=g) for layer in chain[:-1]]


def _context(recipe: Recipe) -> MergeContext:
    registry = get_registry()
    data = load_data(recipe, registry)
    return MergeContext(recipe["model"]["name"], lambda: build_model(recipe, registry, data, 0), data,
                        torch.Generator().manual_seed(0), retrain=None, recipe=recipe)


def test_data_order_seed_keeps_theta0_and_val_split_but_changes_the_order(runs):
    a, b = load_ticket(_ticket(runs, "seed0", 0)), load_ticket(_ticket(runs, "order", 0))
    assert all(torch.equal(a.init[k], b.init[k]) for k in a.init)  # same θ0
    assert not all(torch.equal(a.final[k], b.final[k]) for k in a.final)  # trained on another order
    registry = get_registry()
    d0, d7 = load_data(_recipe(), registry), load_data(_recipe(data={"order_seed": 7}), registry)
    assert torch.equal(d0.val_x, d7.val_x) and torch.equal(d0.train_y, d7.train_y)
    assert not torch.equal(next(iter(d0.train_loader(d0.order_seed)))[1], next(iter(d7.train_loader(d7.order_seed)))[1])
    # Recipes that never mention the key keep their hash (existing run folders still resume).
    plain = _recipe()
    without = Recipe({**plain.to_dict(), "data": {k: v for k, v in plain["data"].items() if k != "order_seed"}})
    assert plain.hash() == without.hash() != _recipe(data={"order_seed": 7}).hash()


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [64, 32]}, {"name": "conv2"}])
def test_weight_matching_recovers_a_random_permutation_exactly(runs, model):
    """B = A with its hidden units shuffled (weights and mask): matching undoes it."""
    recipe = _recipe(model=model)
    context = _context(recipe)
    if model["name"] == "mlp":
        a = load_ticket(_ticket(runs, "seed0"))  # a trained, pruned network
    else:  # an untrained Conv-2 with a random 50% mask: the flatten spreads channels over positions
        net = context.new_model()
        mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                     for n, p in net.named_parameters() if n.endswith("weight")})
        final = {k: v * mask[k] if k in mask else v for k, v in net.state_dict().items()}
        a = Ticket(mask, final, final)
    chain = layer_chain(context.new_model(), model["name"])
    true = _random_perms(chain, a.final, seed=3)
    b = Ticket(Mask(permute(dict(a.mask.items()), chain, true)), a.init, permute(a.final, chain, true))
    assert not all(torch.equal(a.final[k], b.final[k]) for k in a.final)

    perms, record = match(a.final, b.final, chain, torch.Generator().manual_seed(0))
    assert record["converged"]
    for found, p in zip(perms, true):
        assert torch.equal(found, torch.argsort(p))  # B's unit found[i] is A's unit i

    strategy = get_registry().get("merge_strategies", "weight_matching").obj
    result = strategy([a, b], context)
    assert all(torch.equal(result.weights[k], a.final[k]) for k in a.final)  # the merge is the original
    assert result.mask == a.mask
    assert all(torch.equal(result.endpoints[1][k], a.final[k]) for k in a.final)


def test_weight_matching_refuses_other_architectures():
    recipe = _recipe(model={"name": "resnet20"})
    with pytest.raises(LthError, match="supports the models conv2, conv4, conv6, lenet300, mlp"):
        layer_chain(_context(recipe).new_model(), "resnet20")


@pytest.mark.parametrize("strategy", ["union", "intersection"])
def test_union_and_intersection_are_set_algebra_and_retrain(runs, tmp_path, strategy):
    a, b = load_ticket(_ticket(runs, "seed0")), load_ticket(_ticket(runs, "seed1"))
    record = merge_tickets([_ticket(runs, "seed0"), _ticket(runs, "seed1")], strategy, tmp_path / "m", **QUIET)
    merged = load_ticket(tmp_path / "m" / "ticket")
    op = torch.logical_or if strategy == "union" else torch.logical_and
    for name in a.mask:
        assert torch.equal(merged.mask[name], op(a.mask[name], b.mask[name]))
        assert bool((merged.final[name][~merged.mask[name]] == 0).all())  # pruned stays zero after training
    kept = sum(int(op(a.mask[n], b.mask[n]).sum()) for n in a.mask)
    assert record["merged"]["weights_remaining"] == pytest.approx(kept / a.mask.total())
    overlap = record["mask_overlap"]
    assert overlap[strategy] == pytest.approx(kept / a.mask.total())
    # Retrained from A's rewind weights: the surviving weights moved away from θ0.
    assert all(torch.equal(merged.init[k], a.init[k]) for k in a.init)
    assert not torch.equal(merged.final["net.1.weight"], a.init["net.1.weight"] * merged.mask["net.1.weight"])
    assert record["merged"]["test_acc"] > 0.5  # a trained digits classifier, far above chance (0.1)
    assert record["paths"] == []


def test_average_path_runs_from_a_to_b(runs, tmp_path):
    record = merge_tickets([_ticket(runs, "seed0"), _ticket(runs, "seed1")], "average", tmp_path / "m", **QUIET)
    (path,) = record["paths"]
    assert path["kind"] == "naive" and len(path["points"]) >= 11
    a, b = record["members"]
    first, last = path["points"][0], path["points"][-1]
    assert (first["lambda"], last["lambda"]) == (0.0, 1.0)
    for split in ("val", "test"):
        assert first[f"{split}_acc"] == a[f"{split}_acc"] and last[f"{split}_acc"] == b[f"{split}_acc"]
        assert first[f"{split}_loss"] == pytest.approx(a[f"{split}_loss"]) and last[f"{split}_loss"] == pytest.approx(b[f"{split}_loss"])
    mid = next(p for p in path["points"] if p["lambda"] == 0.5)
    assert record["merged"]["test_acc"] == mid["test_acc"]
    assert path["loss_barrier"] >= 0.0  # λ=0 and λ=1 lie on the line, so the excess is never below zero
    ticket = load_ticket(tmp_path / "m" / "ticket")
    a_t, b_t = load_ticket(_ticket(runs, "seed0")), load_ticket(_ticket(runs, "seed1"))
    assert ticket.mask == a_t.mask.union(b_t.mask)
    assert torch.allclose(ticket.final["net.1.weight"], (a_t.final["net.1.weight"] + b_t.final["net.1.weight"]) / 2)


def test_weight_matching_path_keeps_b_function_and_lowers_the_barrier(runs, tmp_path):
    record = merge_tickets([_ticket(runs, "seed0"), _ticket(runs, "seed1")], "weight_matching", tmp_path / "m", **QUIET)
    paths = {p["kind"]: p for p in record["paths"]}
    assert set(paths) == {"naive", "aligned"}
    b = record["members"][1]
    aligned_end = paths["aligned"]["points"][-1]
    # Permuting hidden units does not change what B computes.
    assert aligned_end["test_acc"] == b["test_acc"] and aligned_end["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    assert record["info"]["alignment"][0]["converged"] and record["info"]["alignment"][0]["changed_units"] > 0
    assert paths["aligned"]["loss_barrier"] < paths["naive"]["loss_barrier"]


def test_ensemble_of_a_ticket_with_itself_is_that_ticket_and_writes_no_ticket(runs, tmp_path):
    t = _ticket(runs, "seed0")
    record = merge_tickets([t, t], "ensemble", tmp_path / "m", **QUIET)
    a = record["members"][0]
    assert record["merged"]["test_acc"] == a["test_acc"] and record["merged"]["ticket"] is None
    assert record["merged"]["weights_remaining"] == pytest.approx(2 * a["weights_remaining"])
    assert not (tmp_path / "m" / "ticket").exists() and a["sha256"]["final"]


def test_a_third_party_strategy_is_usable_by_name(pm, runs, tmp_path):
    class KeepFirst:
        @hookimpl
        def register_merge_strategies(self, register):
            register("keep_first", lambda tickets, context: MergeResult(weights=tickets[0].final, mask=tickets[0].mask))
            # θ0 is dense: its pruned weights are not zero, so this result contradicts its mask.
            register("broken", lambda tickets, context: MergeResult(weights=tickets[0].init, mask=tickets[0].mask))

    pm.register(KeepFirst(), name="keep_first_plugin")
    record = merge_tickets([_ticket(runs, "seed0"), _ticket(runs, "seed1")], "keep_first", tmp_path / "m", pm=pm, **QUIET)
    assert record["plugin"] == "keep_first_plugin"
    assert record["merged"]["test_acc"] == record["members"][0]["test_acc"]
    with pytest.raises(PluginError, match="'broken' .*non-zero weights outside its mask"):
        merge_tickets([_ticket(runs, "seed0"), _ticket(runs, "seed1")], "broken", tmp_path / "b", pm=pm, **QUIET)
    assert not (tmp_path / "b" / "merge.json").exists()


def test_strategies_are_listed_by_lth_plugins(capsys):
    assert cli.main(["plugins"]) == 0
    assert "merge_strategies: average, ensemble, intersection, union, weight_matching" in capsys.readouterr().out


def _user_error(capsys, argv: list[str], *needles: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lth: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    a, b = str(_ticket(runs, "seed0")), str(_ticket(runs, "seed1"))
    out = str(tmp_path / "m")
    _user_error(capsys, ["merge", a, b, "--strategy", "avg", "--out", out], "unknown merge strategy 'avg'", "average, ensemble, intersection")
    _user_error(capsys, ["merge", a, "--strategy", "average", "--out", out], "at least two tickets")
    _user_error(capsys, ["merge", a, str(tmp_path / "nope"), "--strategy", "average", "--out", out], "nope is not a ticket folder")
    _user_error(capsys, ["merge", a, b, "--strategy", "weight_matching", "--option", "steps=3", "--out", out], "unknown option weight_matching.steps", "max_iter")
    # A ticket of another architecture (hidden widths 32, 32) against the recipe's 64, 32.
    other = Recipe({**_recipe().to_dict(), "model": {"name": "mlp", "hidden": [32, 32]}})
    net = build_model(other, get_registry(), load_data(other, get_registry()), 0)
    save_ticket(Ticket(Mask.ones_like(net), net.state_dict(), net.state_dict()), tmp_path / "other")
    _user_error(capsys, ["merge", a, str(tmp_path / "other"), "--strategy", "average", "--out", out], "does not fit this model", "net.1.weight", "architecture")
    assert not Path(out).exists()  # nothing was written by a refused merge
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    _user_error(capsys, ["merge", a, b, "--strategy", "average", "--out", str(tmp_path / "full")], "already holds")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_merge_end_to_end_and_report(runs, tmp_path):
    """The installed command: merge two tickets, then `lth report` draws the path."""
    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "lth_core.commands.cli"]
    proc = subprocess.run([*cmd, "merge", str(_ticket(runs, "seed0")), str(_ticket(runs, "order")),
                           "--strategy", "weight_matching", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "merge.json")
    record = json.loads((out / "merge.json").read_text())
    assert [m["path"] for m in record["members"]] == [str(_ticket(runs, "seed0")), str(_ticket(runs, "order"))]
    assert "loss barrier" in proc.stderr
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "merge_path.png").stat().st_size > 10_000
    assert "weight_matching" in report and f"{100 * record['merged']['test_acc']:.2f}" in report
    # lth's own merge section reads the folder: no plugin (nor torch) is loaded for it.
    assert lth_in_fresh_process("report", str(out), "--out", str(tmp_path / "report2")) == (0, [])
    assert (tmp_path / "report2" / "report.md").read_text() == report
