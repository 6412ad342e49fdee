"""Pruning during training (the ``gradual_pruning`` callback of ``lth_gradual``) on real data.

Runs are real (scikit-learn digits; the equal-compute check on Fashion-MNIST). A test plugin
adds two named probe callbacks around ``gradual_pruning`` (``callbacks: [probe_before,
gradual_pruning, probe_after]``): at every step they record the mask and the prunable
weights just before and just after the pruning callback acts, so the tests check what
actually happened to the network, independently of the plugin's own bookkeeping.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import get_registry, make_plugin_manager
from lth_core.config import load_recipe, read_yaml, resolve_recipe_path, validate
from lth_core.tickets.ticket import load_ticket

from conftest import TINY

LAYERS = {"net.1.weight": 64 * 64, "net.3.weight": 64 * 32, "net.5.weight": 32 * 10}  # mlp [64, 32] on 8x8 digits
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Probe(pl.Callback):
    """Records (step, mask, prunable weights) at the end of every training step."""

    def __init__(self, sink: list):
        self.sink = sink

    def _snapshot(self, module) -> dict:
        params = dict(module.model.named_parameters())
        return {
            "step": module.step,
            "mask": {n: m.clone() for n, m in module.mask.items()},
            "weights": {n: params[n].detach().cpu().clone() for n in module.mask},
        }

    def on_train_start(self, trainer, module) -> None:
        self.sink.append({**self._snapshot(module), "start": True})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.sink.append(self._snapshot(module))


class ProbePlugin:
    """Named probe callbacks, plus a criterion that needs this run's training state."""

    def __init__(self):
        self.records: dict[tuple, list] = {}
        self.state_calls: list[dict] = []

    def sink(self, context, where: str) -> list:
        return self.records.setdefault((context.round, context.name, where), [])

    @hookimpl
    def register_callbacks(self, register):
        register("probe_before", lambda context: Probe(self.sink(context, "before")))
        register("probe_after", lambda context: Probe(self.sink(context, "after")))
        register("count_steps", lambda context: StepCounter(context))

    @hookimpl
    def register_criteria(self, register):
        def needs_state(model, mask, context):
            """Magnitude scores, but only with the step count the current run has collected."""
            if "test_steps" not in context.state:
                raise LthError("needs_state: no training state")
            params = dict(model.named_parameters())
            self.state_calls.append({
                "steps": context.state["test_steps"],
                "initial": {n: t.clone() for n, t in context.initial.items()},
                "rates": dict(context.rates),
                "remaining": {n: int(m.sum()) for n, m in mask.items()},
            })
            return {n: params[n].detach().abs().cpu() for n in mask}

        register("needs_state", needs_state)


class StepCounter(pl.Callback):
    """Counts optimiser steps into ``context.state`` before each step (training state)."""

    def __init__(self, context):
        self.context = context

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.context.state["test_steps"] = self.context.state.get("test_steps", 0) + 1


def gradual_recipe(max_steps: int = 60, val_every: int = 20, controls: list | None = None, **options) -> dict:
    raw = copy.deepcopy(TINY)
    raw["lottery"]["rounds"] = 0
    raw["trainer"].update(max_steps=max_steps, val_check_interval=val_every)
    raw["callbacks"] = [{"name": "probe_before"}, {"name": "gradual_pruning", **options}, {"name": "probe_after"}]
    raw["controls"] = controls or []
    return raw


def run(raw: dict, out: Path) -> tuple[dict, ProbePlugin]:
    pm = make_plugin_manager()
    probe = ProbePlugin()
    pm.register(probe, name="test_gradual_probe")
    summary = run_lottery(validate(raw, name="gradual"), out, say=lambda s: None, pm=pm)
    return summary, probe


def kept(mask: dict[str, Tensor]) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in mask.items()}


def train_steps(records: list) -> list[dict]:
    return [r for r in records if not r.get("start")]


def cubic(t: int, t0: int, t_end: int, d_final: float) -> float:
    """Zhu & Gupta 2017 for the fraction remaining, from a dense start (d_initial = 1)."""
    return d_final + (1.0 - d_final) * (1.0 - (t - t0) / (t_end - t0)) ** 3


# --- the cubic schedule, with both controls beside the sparse round 0 ---------------------------

CUBIC = {"target": 0.1, "schedule": "cubic", "every": "5it", "start_step": 10, "end_step": 40}
RETRAIN = {"name": "retrain_from_init", "rewind": "init"}


@pytest.fixture(scope="module")
def cubic_run(tmp_path_factory) -> tuple[dict, ProbePlugin, Path]:
    out = tmp_path_factory.mktemp("cubic") / "run"
    summary, probe = run(gradual_recipe(controls=[RETRAIN, "random_reinit"], **CUBIC), out)
    return summary, probe, out


def test_registered_as_named_callback() -> None:
    """Recipes select it by name; `lth plugins` lists it under the gradual plugin."""
    entry = get_registry().get("callbacks", "gradual_pruning")
    assert entry.plugin == "gradual"


def test_cubic_schedule_counts_follow_the_formula_and_hit_the_target(cubic_run) -> None:
    """Every layer keeps exactly round(d_t * size) weights after each pruning step t in
    {10, 15, ..., 40}, nothing changes between pruning steps, and step 40 reaches the
    target exactly (10% of every layer), which the saved ticket and summary report."""
    summary, probe, out = cubic_run
    steps = train_steps(probe.records[(0, "ticket", "after")])
    assert [s["step"] for s in steps] == list(range(1, 61))
    expected = dict(LAYERS)
    densities = []
    for s in steps:
        t = s["step"]
        if 10 <= t <= 40 and (t - 10) % 5 == 0:
            expected = {n: min(expected[n], round(cubic(t, 10, 40, 0.1) * size)) for n, size in LAYERS.items()}
            densities.append(sum(expected.values()) / sum(LAYERS.values()))
        assert kept(s["mask"]) == expected, t
    final = {n: round(0.1 * size) for n, size in LAYERS.items()}
    assert expected == final
    ticket = load_ticket(out / "round_0")
    assert kept(ticket.mask) == final
    assert summary["rounds"][0]["weights_remaining"] == ticket.mask.density()
    assert densities[0] == 1.0 and densities[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a > b for a, b in zip(densities[1:], densities[2:]))  # strictly decreasing after t0
    record = json.loads((out / "round_0" / "gradual_pruning.json").read_text())
    assert [r["step"] for r in record["steps"]] == [15, 20, 25, 30, 35, 40]  # t0 = 10 prunes nothing
    assert record["steps"][-1]["kept"] == final


def test_pruned_weights_never_return_and_are_zero_in_the_ticket(cubic_run) -> None:
    """Once pruned, a weight is zero at every later step (after the optimiser too, as the
    'before' probe sees it) and never re-enters the mask; the saved ticket holds zeros."""
    _, probe, out = cubic_run
    before = train_steps(probe.records[(0, "ticket", "before")])
    after = train_steps(probe.records[(0, "ticket", "after")])
    ever_pruned = {n: torch.zeros(size, dtype=torch.bool) for n, size in LAYERS.items()}
    for b, a in zip(before, after):
        for n in LAYERS:
            assert not (b["weights"][n].flatten()[ever_pruned[n]] != 0).any(), "the optimiser revived a pruned weight"
            assert not (a["mask"][n].flatten() & ever_pruned[n]).any(), "a pruned weight came back into the mask"
            ever_pruned[n] |= ~a["mask"][n].flatten()
            assert (a["weights"][n].flatten()[ever_pruned[n]] == 0).all(), "pruned weights are zero at once"
    ticket = load_ticket(out / "round_0")
    for n in LAYERS:
        assert torch.equal(~ticket.mask[n].flatten(), ever_pruned[n])
        assert (ticket.final[n][~ticket.mask[n]] == 0).all()


def test_magnitude_prunes_the_smallest_remaining_weights_at_each_step(cubic_run) -> None:
    """At each pruning step the weights it removes are, layer by layer, no larger in |w|
    than any weight it keeps (measured just before it acted)."""
    _, probe, _ = cubic_run
    before = train_steps(probe.records[(0, "ticket", "before")])
    after = train_steps(probe.records[(0, "ticket", "after")])
    pruned_steps = 0
    for b, a in zip(before, after):
        for n in LAYERS:
            removed = b["mask"][n] & ~a["mask"][n]
            if removed.any():
                w = b["weights"][n].abs()
                assert w[removed].max() <= w[a["mask"][n]].min()
                pruned_steps += 1
    assert pruned_steps == 6 * len(LAYERS)


def test_retrain_from_init_trains_the_final_mask_from_theta0(cubic_run) -> None:
    """The control beside the sparse round 0 trains the ticket's final mask from exactly θ0,
    and nothing prunes during it; random_reinit gets that mask with fresh weights."""
    summary, probe, out = cubic_run
    ticket = load_ticket(out / "round_0")
    control = load_ticket(out / "round_0" / "control_retrain_from_init")
    assert control.mask == ticket.mask
    assert set(control.init) == set(ticket.init)
    assert all(torch.equal(control.init[k], ticket.init[k]) for k in ticket.init)  # θ0, bit for bit
    records = probe.records[(0, "retrain_from_init", "after")]
    start = records[0]
    assert start.get("start")
    for n in LAYERS:
        assert torch.equal(start["weights"][n], ticket.init[n] * ticket.mask[n])  # θ0 ⊙ final mask
    assert all(kept(r["mask"]) == kept(ticket.mask) for r in records)
    assert not (out / "round_0" / "control_retrain_from_init" / "gradual_pruning.json").exists()
    for n in LAYERS:
        assert (control.final[n][~control.mask[n]] == 0).all()
        assert not torch.equal(control.final[n], ticket.final[n])
    reinit = load_ticket(out / "round_0" / "control_random_reinit")
    assert reinit.mask == ticket.mask
    assert not any(torch.equal(reinit.init[n], ticket.init[n]) for n in LAYERS)
    assert [r["round"] for r in summary["controls"]["retrain_from_init"]] == [0]
    assert [r["round"] for r in summary["controls"]["random_reinit"]] == [0]


def test_early_stopping_only_counts_the_final_mask(cubic_run) -> None:
    """curves.json records the density of each evaluation; the ticket's early-stopping step
    is the best validation loss among evaluations under the final mask only."""
    summary, _, out = cubic_run
    curve = json.loads((out / "round_0" / "curves.json").read_text())
    final = summary["rounds"][0]["weights_remaining"]
    assert [p["step"] for p in curve] == [20, 40, 60]
    assert curve[0]["weights_remaining"] > final  # step 20: pruning still under way
    under_final = [p for p in curve if p["weights_remaining"] == final]
    best = min(under_final, key=lambda p: p["val_loss"])
    assert summary["rounds"][0]["early_stop_step"] == best["step"]
    assert summary["rounds"][0]["test_acc"] == best["test_acc"]


# --- the constant schedule and the lottery's allocation ----------------------------------------


def test_constant_schedule_prunes_the_rate_and_stops_at_target(tmp_path: Path) -> None:
    """Constant rate 0.5 every 20 steps: each pruning step keeps remaining - round(q * remaining)
    until the target; a layer with its own rate (last: 0.25 against lottery.rate 0.5) is
    pruned at that rate and ends where as many IMP rounds would leave it."""
    raw = gradual_recipe(max_steps=120, val_every=40, target=0.1, schedule="constant", rate=0.5, every="20it")
    raw["lottery"].update(rate=0.5, layer_rates={"last": 0.25})
    _, probe = run(raw, tmp_path)
    k = math.log(0.1) / math.log(0.5)  # IMP rounds at 0.5 that reach 10%
    step_rate = {"net.1.weight": 0.5, "net.3.weight": 0.5, "net.5.weight": 0.25}
    floor = {n: round((1 - step_rate[n]) ** k * size) for n, size in LAYERS.items()}
    assert floor["net.5.weight"] == round(0.75 ** k * 320) == 123
    expected = dict(LAYERS)
    history = []
    for s in train_steps(probe.records[(0, "ticket", "after")]):
        t = s["step"]
        if t % 20 == 0 and t <= 90 or t == 90:  # end_step = 75% of 120
            expected = {n: max(floor[n], e - round(step_rate[n] * e)) for n, e in expected.items()}
            history.append(dict(expected))
        assert kept(s["mask"]) == expected, t
    assert expected == floor
    assert [h["net.1.weight"] for h in history] == [2048, 1024, 512, 410, 410]
    assert [h["net.5.weight"] for h in history] == [240, 180, 135, 123, 123]  # the target is reached at step 80


def test_constant_schedule_that_is_too_slow_warns_and_reaches_target_at_end_step(tmp_path: Path) -> None:
    """Rate 0.5 every 5 steps cannot reach 5% by end_step 15 (75% of 20): the recipe is warned
    when the run starts, and the pruning step at end_step goes straight to the target."""
    raw = gradual_recipe(max_steps=20, val_every=10, target=0.05, schedule="constant", rate=0.5, every="5it")
    with pytest.warns(UserWarning, match="prunes straight to the target"):
        _, probe = run(raw, tmp_path)
    by_step = {s["step"]: kept(s["mask"]) for s in train_steps(probe.records[(0, "ticket", "after")])}
    assert by_step[5] == {n: size // 2 for n, size in LAYERS.items()}
    assert by_step[14] == {n: size // 4 for n, size in LAYERS.items()}
    assert by_step[15] == by_step[20] == {n: round(0.05 * size) for n, size in LAYERS.items()}


def test_global_scope_pools_the_layers_with_the_lottery_rate(tmp_path: Path) -> None:
    """lottery.scope: global ranks the pooled layers together: their total hits the target
    exactly while each layer may differ; the output layer keeps its own allocation."""
    raw = gradual_recipe(max_steps=24, val_every=12, target=0.25, every="4it", end_step=16)
    raw["lottery"].update(rate=0.5, layer_rates={"last": 0.25}, scope="global")
    run(raw, tmp_path)
    ticket = load_ticket(tmp_path / "round_0")
    counts = kept(ticket.mask)
    assert counts["net.1.weight"] + counts["net.3.weight"] == round(0.25 * (4096 + 2048))
    assert counts["net.1.weight"] != 1024 or counts["net.3.weight"] != 512  # not simply per layer
    assert counts["net.5.weight"] == round(0.75**2 * 320)  # 0.25 = 0.5^2: two IMP rounds


# --- composition with criteria ------------------------------------------------------------------

SHORT = {"target": 0.2, "every": "4it", "start_step": 0, "end_step": 12}
_criterion_runs: dict[str, tuple] = {}


def short_run(criterion: str, tmp_path_factory) -> tuple[dict, ProbePlugin, Path]:
    if criterion not in _criterion_runs:
        out = tmp_path_factory.mktemp(f"crit_{criterion}") / "run"
        summary, probe = run(gradual_recipe(max_steps=16, val_every=8, criterion=criterion, **SHORT), out)
        _criterion_runs[criterion] = (summary, probe, out)
    return _criterion_runs[criterion]


@pytest.mark.parametrize("criterion", get_registry().names("criteria"))
def test_composes_with_every_registered_criterion(criterion: str, tmp_path_factory) -> None:
    """Any installed criterion drives the schedule: exact final counts, zeros in the ticket."""
    summary, _, out = short_run(criterion, tmp_path_factory)
    ticket = load_ticket(out / "round_0")
    assert kept(ticket.mask) == {n: round(0.2 * size) for n, size in LAYERS.items()}
    for n in LAYERS:
        assert (ticket.final[n][~ticket.mask[n]] == 0).all()
    assert summary["rounds"][0]["weights_remaining"] == pytest.approx(0.2, abs=1e-3)


def test_random_criterion_ignores_magnitude(tmp_path_factory) -> None:
    """With `random` the removed weights are not the smallest ones (as magnitude's are), and
    the final masks of the two criteria differ, at the same exact counts."""
    _, rnd, rnd_out = short_run("random", tmp_path_factory)
    _, _, mag_out = short_run("magnitude", tmp_path_factory)
    before = train_steps(rnd.records[(0, "ticket", "before")])
    after = train_steps(rnd.records[(0, "ticket", "after")])
    violations = 0
    for b, a in zip(before, after):
        removed = b["mask"]["net.1.weight"] & ~a["mask"]["net.1.weight"]
        if removed.any():
            w = b["weights"]["net.1.weight"].abs()
            violations += int(w[removed].max() > w[a["mask"]["net.1.weight"]].min())
    assert violations == 3  # every pruning step (4, 8, 12)
    assert load_ticket(rnd_out / "round_0").mask != load_ticket(mag_out / "round_0").mask


def test_criterion_sees_the_current_runs_state_and_start_weights(tmp_path: Path) -> None:
    """A criterion that needs training state gets this run's live RoundContext.state (here
    the optimiser steps taken so far), the weights the run started from (θ0 in round 0) and
    the rates that remove exactly the scheduled counts."""
    raw = gradual_recipe(max_steps=16, val_every=8, criterion="needs_state", **SHORT)
    raw["callbacks"].insert(0, {"name": "count_steps"})
    _, probe = run(raw, tmp_path)
    assert [c["steps"] for c in probe.state_calls] == [4, 8, 12]
    theta0 = load_ticket(tmp_path / "round_0").init
    after = {s["step"]: kept(s["mask"]) for s in train_steps(probe.records[(0, "ticket", "after")])}
    for call, step in zip(probe.state_calls, (4, 8, 12)):
        assert all(torch.equal(call["initial"][n], theta0[n]) for n in LAYERS)
        for n in LAYERS:
            rem = call["remaining"][n]
            assert rem - round(call["rates"][n] * rem) == after[step][n]


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target": 1.5}, "target must be a fraction"),
        ({"target": 0.1, "schedule": "linear"}, "schedule is 'linear'"),
        ({"target": 0.1, "every": "3 epochs"}, "every must be Nep"),
        ({"target": 0.1, "end_step": 500}, "after the last training step"),
        ({"target": 0.1, "start_step": 30, "end_step": 20}, "must be a step after start_step"),
        ({"target": 0.1, "rate": 0.3}, "rate applies to schedule: constant only"),
        ({"target": 0.1, "criterion": "nope"}, "unknown criterion 'nope'"),
        ({"target": 0.1, "rounds": 0}, "rounds must be a list"),
        ({}, "gradual_pruning.target is required"),
    ],
)
def test_bad_options_are_explained(options: dict, message: str, tmp_path: Path) -> None:
    """A recipe mistake fails before any training with a message naming the option."""
    with pytest.raises(LthError, match=message):
        run(gradual_recipe(**options), tmp_path)


def test_rounds_option_prunes_a_later_round_from_its_imp_mask(tmp_path: Path) -> None:
    """`rounds: [1]` leaves the dense round 0 alone, and prunes round 1 during training from
    its IMP mask (50%) down to the target on the cubic schedule from d_i = 0.5; the control
    beside round 1 trains that final mask without pruning (runs default to the ticket)."""
    raw = gradual_recipe(max_steps=16, val_every=8, rounds=[1], controls=["random_reinit"], **SHORT)
    raw["lottery"].update(rounds=1, rate=0.5)
    summary, probe = run(raw, tmp_path)
    assert summary["rounds"][0]["weights_remaining"] == 1.0
    assert (0, "ticket", "after") in probe.records and not (tmp_path / "round_0" / "gradual_pruning.json").exists()
    expected = {n: size // 2 for n, size in LAYERS.items()}
    for s in probe.records[(1, "ticket", "after")]:
        t = s["step"]
        if t in (4, 8, 12):
            d_i = {n: (size // 2) / size for n, size in LAYERS.items()}
            expected = {n: round((0.2 + (d_i[n] - 0.2) * (1 - t / 12) ** 3) * size) for n, size in LAYERS.items()}
        assert kept(s["mask"]) == expected, t
    target = {n: round(0.2 * size) for n, size in LAYERS.items()}
    assert expected == target and kept(load_ticket(tmp_path / "round_1").mask) == target
    assert all(kept(r["mask"]) == target for r in probe.records[(1, "random_reinit", "after")])


# --- the equal-compute recipes and `lth report` -------------------------------------------------


def test_equal_compute_recipes_arithmetic() -> None:
    """gradual_fashion_mnist trains as many optimiser steps as imp_equal_compute_fashion_mnist's
    ticket ((R + 1) · T) and ends each layer where IMP's last round does."""
    imp, grad = load_recipe("imp_equal_compute_fashion_mnist"), load_recipe("gradual_fashion_mnist")
    rounds, steps = imp["lottery"]["rounds"], imp["trainer"]["max_steps"]
    assert grad["lottery"]["rounds"] == 0
    assert grad["trainer"]["max_steps"] * (grad["lottery"]["rounds"] + 1) == (rounds + 1) * steps
    for section in ("model", "data", "optimizer"):
        assert grad[section] == imp[section]
    assert grad["lottery"]["layer_rates"] == imp["lottery"]["layer_rates"]
    assert grad["lottery"]["rate"] == imp["lottery"]["rate"]
    cb = next(c for c in grad["callbacks"] if c["name"] == "gradual_pruning")
    assert cb["schedule"] == "cubic"
    assert cb["target"] == pytest.approx((1 - imp["lottery"]["rate"]) ** rounds, abs=1e-6)
    assert {"name": "retrain_from_init", "rewind": "init"} in grad["controls"]
    assert {"name": "random_reinit"} in grad["controls"]
    for name in ("gradual_fashion_mnist", "imp_equal_compute_fashion_mnist"):
        text = resolve_recipe_path(name).read_text()
        assert text.startswith("#") and "lth report" in text and "55,000" in text


def test_equal_compute_comparison_on_fashion_mnist_and_report(tmp_path: Path) -> None:
    """Both recipes, shortened alike (IMP: 2 rounds of 6 steps, no control; gradual: 18 steps,
    pruning at every epoch of a 600-image subset; one batch per evaluation), train the same total steps, reach the same per-layer
    densities, and `lth report DIR_IMP DIR_GRADUAL` shows them side by side, with the
    controls beside the gradual run's sparse round 0."""
    short = {"data": {"subset": 600, "val_size": 500, "eval_batch_size": 500}}
    imp_raw = read_yaml(resolve_recipe_path("imp_equal_compute_fashion_mnist"))
    imp_raw["lottery"]["rounds"] = 2
    imp_raw["trainer"].update(max_steps=6, val_check_interval=3, limit_val_batches=1, enable_progress_bar=False)
    imp_raw["controls"] = []
    grad_raw = read_yaml(resolve_recipe_path("gradual_fashion_mnist"))
    grad_raw["trainer"].update(max_steps=18, val_check_interval=3, limit_val_batches=1, enable_progress_bar=False)
    grad_raw["callbacks"][0]["target"] = 0.8**2
    for raw in (imp_raw, grad_raw):
        raw["data"].update(short["data"])
        raw["tracking"] = "none"
        raw["trials"] = 1
    imp_dir, grad_dir = tmp_path / "imp", tmp_path / "gradual"
    imp = run_lottery(validate(imp_raw, name="imp"), imp_dir, say=lambda s: None)
    grad = run_lottery(validate(grad_raw, name="gradual"), grad_dir, say=lambda s: None)
    assert sum(r["steps"] for r in imp["rounds"]) == sum(r["steps"] for r in grad["rounds"]) == 18
    imp_mask, grad_mask = load_ticket(imp_dir / "round_2").mask, load_ticket(grad_dir / "round_0").mask
    for n in imp_mask:
        assert abs(int(imp_mask[n].sum()) - int(grad_mask[n].sum())) <= 1  # rounding per round vs once
    steps_per_epoch = 600 // 60
    record = json.loads((grad_dir / "round_0" / "gradual_pruning.json").read_text())
    assert [r["step"] for r in record["steps"]] == [steps_per_epoch, 13]  # every 1ep, then end_step = 75% of 18

    out = tmp_path / "report"
    assert cli.main(["report", str(imp_dir), str(grad_dir), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for fig in ("accuracy_vs_weights", "early_stop_vs_weights", "curves"):
        assert (out / f"{fig}.png").read_bytes()[:8] == PNG_MAGIC
    assert "imp (iterative)" in text and "gradual (gradual_pruning)" in text
    assert text.count("18 training steps") == 2
    gradual_results = text.split("## Results: gradual (gradual_pruning)")[1]
    row0 = next(line for line in gradual_results.splitlines() if line.startswith("| 0 |"))
    cells = [c.strip() for c in row0.strip("|").split("|")]
    assert cells[1] == f"{100 * grad['rounds'][0]['weights_remaining']:.1f}"
    assert "-" not in cells[2:], row0  # ticket, retrain_from_init and random_reinit all present
    assert f"{100 * grad['controls']['retrain_from_init'][0]['test_acc']:.2f}" in cells
    levels = text.split("## At the paper's levels: gradual (gradual_pruning)")[1].split("##")[0]
    level_row = next(line for line in levels.splitlines() if line.startswith("| 64"))
    assert level_row.split("|")[3].strip() == "-"  # no dense run in a gradual series


class BrokenCriteria:
    """A throwaway plugin whose criteria fail: one with a bug, one with its own explanation."""

    @hookimpl
    def register_criteria(self, register):
        def buggy(model, mask, context):
            return 1 / 0

        def explains(model, mask, context):
            raise LthError("needs criterion_options.alpha")

        register("buggy", buggy)
        register("explains", explains)


@pytest.mark.parametrize("criterion,reason", [
    ("buggy", "raised ZeroDivisionError: division by zero"),
    ("explains", "needs criterion_options.alpha"),
])
def test_a_failing_criterion_inside_gradual_pruning_is_named(criterion: str, reason: str, tmp_path: Path) -> None:
    """The criterion gradual pruning calls mid-training is plugin code: its failure names it
    (and its plugin) and the step, in one line, and no ticket is written."""
    raw = gradual_recipe(**SHORT, criterion=criterion)
    raw["callbacks"] = [c for c in raw["callbacks"] if c["name"] == "gradual_pruning"]
    pm = make_plugin_manager()
    pm.register(BrokenCriteria(), name="broken-criteria")
    with pytest.raises(LthError) as caught:
        run_lottery(validate(raw, name="gradual"), tmp_path, say=lambda s: None, pm=pm)
    message = str(caught.value)
    assert f"criterion '{criterion}' (plugin 'broken-criteria') in gradual_pruning at step 4" in message, message  # its first pruning step (every: 4it)
    assert message.endswith(reason) and "\n" not in message, message
    assert not (tmp_path / "round_0" / "ticket.json").exists()
