"""Masks that move both ways during training (issue 23): RigL and SET, hard and soft movement
pruning, and the core's rules for a callback that owns the mask.

The runs are LeNet-300-100 on real Fashion-MNIST (Debian's dataset-fashion-mnist), a few
hundred steps each; a watcher plugin records what the run holds after every step, so the
tests read the masks, weights and optimiser state the training really had. Resuming each
of them bit for bit after a stop is in tests/test_resume.py.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import lth_core
from lth_core import Allocation, Mask, erk_densities, allocation_densities, hookimpl, layer_counts, load_ticket
from lth_core.commands import cli
from lth_core.config import validate
from lth_core.engines.enforcer import MaskEnforcer
from lth_core.errors import LthError, PluginError
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.contexts import RoundContext
from lth_movement import cubic
from lth_movement.pruning import _StraightThrough

from conftest import registered


#: LeNet-300-100 on Fashion-MNIST with the paper's Adam, one training run of 300 steps.
LENET = {
    "name": "dynamic-masks",
    "seed": 0,
    "model": {"name": "lenet300"},
    "data": {"name": "fashion_mnist", "batch_size": 60, "val_size": 5000},
    "optimizer": {"name": "adam", "lr": 1.2e-3},
    "trainer": {"max_steps": 300, "val_check_interval": 100, "enable_progress_bar": False},
    "lottery": {"criterion": "magnitude", "rewind": "init", "rounds": 0, "rate": 0.2, "layer_rates": {"last": 0.1}},
    "controls": [],
    "tracking": "none",
}


class Watch(pl.Callback):
    """After every step (after the recipe's callbacks acted): the mask in force when it
    changed (and at the first and last steps), with the weights and Adam's moments then."""

    def __init__(self, context: RoundContext):
        self.context, self.masks, self.after_change, self.steps = context, {}, {}, []

    def state_dict(self) -> dict:
        return {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.context.module
        t = run.step
        self.steps.append(t)
        previous = self.masks[max(self.masks)] if self.masks else None
        changed = previous is not None and any(not torch.equal(previous[n], run.mask[n]) for n in run.mask)
        if previous is None or changed or t == self.context.last_step():
            self.masks[t] = Mask({n: m.clone() for n, m in run.mask.items()})
        if changed:
            params = lth_core.prunable_parameters(run.model)
            state = trainer.optimizers[0].state
            self.after_change[t] = {n: {"weight": p.detach().clone(), **{k: v.clone() for k, v in state[p].items() if k != "step"}}
                                    for n, p in params.items()}


class Watcher:
    def __init__(self):
        self.watches: list[Watch] = []

    @hookimpl
    def round_callbacks(self, context):
        self.watches.append(Watch(context))
        return [self.watches[-1]]


def lenet(**changes) -> dict:
    raw = copy.deepcopy(LENET)
    raw.update(changes)
    return raw


def run_watched(raw: dict, out: Path, pm) -> tuple[Watch, dict]:
    watcher = Watcher()
    with registered(pm, watcher, "watcher"):
        summary = run_lottery(validate(copy.deepcopy(raw)), out, say=lambda _: None, pm=pm)
    return watcher.watches[-1], summary


# ------------------------------------------------------------------- RigL and SET


@pytest.fixture(scope="module")
def dst_runs(tmp_path_factory) -> dict:
    """RigL and SET at 10% (ERK), updates every 25 steps until step 225 (75% of 300)."""
    from lth_core.plugin_api import registry

    pm = registry.make_plugin_manager()
    out = {}
    for method in ("rigl", "set"):
        folder = tmp_path_factory.mktemp(method)
        raw = lenet(callbacks=[{"name": method, "density": 0.1, "update_every": 25, "drop_fraction": 0.3}])
        watch, summary = run_watched(raw, folder, pm)
        out[method] = (watch, summary, folder)
    return out


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_density_is_exact_after_every_update(dst_runs, method: str) -> None:
    watch, summary, folder = dst_runs[method]
    start = Mask({n: torch.ones_like(m) for n, m in watch.masks[1].items()})
    want = layer_counts(erk_densities(start, 0.1), start)
    assert sorted(watch.after_change) == list(range(25, 225, 25)), "an update every 25 steps, none from step 225 on"
    assert watch.steps == list(range(1, 301)) and set(watch.masks) == {1, *range(25, 225, 25), 300}
    for t, mask in watch.masks.items():  # every mask the run had (it changes only at the updates)
        assert {n: int(m.sum()) for n, m in mask.items()} == want, f"step {t}"
    record = json.loads((folder / "round_0" / f"{method}.json").read_text())
    assert [u["step"] for u in record["updates"]] == list(range(25, 225, 25))
    assert all(u["moved"] > 0 for u in record["updates"])
    assert summary["rounds"][0]["weights_remaining"] == sum(want.values()) / start.total()


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_regrown_weights_start_at_zero_with_fresh_optimiser_state_and_grow(dst_runs, method: str) -> None:
    """At each update the newly grown weights are 0 with Adam's moments 0; weights pruned at
    one update come back at a later one and end the run trained (non-zero)."""
    watch, _, folder = dst_runs[method]
    ticket = load_ticket(folder / "round_0")
    came_back = 0
    changes = sorted(watch.masks)
    for previous, t in zip(changes, changes[1:]):
        if t not in watch.after_change:
            continue
        before, after = watch.masks[previous], watch.masks[t]
        for n in after:
            grown = after[n] & ~before[n]
            if bool(before[n].all()):  # ERK keeps LeNet's output layer dense at 10%: nothing to move there
                assert not grown.any()
                continue
            assert grown.any(), f"step {t}: {n} regrew nothing"
            for key, value in watch.after_change[t][n].items():
                assert not value[grown].any(), f"step {t}: {key} of the regrown weights of {n} is not zero"
            dropped = before[n] & ~after[n]
            came_back += int((dropped & ticket.mask[n] & (ticket.final[n] != 0)).sum())
    assert came_back > 0, "no weight pruned at an update was back and trained at the end"
    for n, m in ticket.mask.items():  # the ticket: the mask of the last step, its pruned weights zero
        assert torch.equal(m, watch.masks[max(watch.masks)][n])
        assert not ticket.final[n][~m].any()


def test_rigl_and_set_learn_on_fashion_mnist_and_report_the_final_network(dst_runs) -> None:
    """Well above chance after 300 steps at 10% of the weights; the early-stopping step is
    the last one (an earlier evaluation was another mask's network)."""
    for method, (_, summary, _) in dst_runs.items():
        row = summary["rounds"][0]
        assert row["test_acc"] > 0.7, method
        assert row["early_stop_step"] == 300 and row["test_acc"] == row["test_acc_final"], method


def test_rigl_drops_the_smallest_weights_and_regrows_at_the_largest_dense_gradient() -> None:
    """One RigL update on a real digits batch, through the core's own pieces (mask enforcer,
    dense gradients): dropped = smallest |W| among active, grown = largest |g| among the rest."""
    from sklearn.datasets import load_digits
    from lth_core.engines.enforcer import MaskedRun
    from lth_dst.callback import DynamicSparsity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    digits = load_digits()
    x, y = torch.tensor(digits.data[:128], dtype=torch.float32) / 16, torch.tensor(digits.target[:128])
    dense = Mask.ones_like(model)
    gen = torch.Generator().manual_seed(1)
    start = Mask({n: torch.rand(m.shape, generator=gen) < 0.3 for n, m in dense.items()})

    class Run(MaskedRun):
        step, history, log_prefix, density_fn = 10, [], "", None

        def __init__(self):
            self.model, self.mask, self.enforcer = model, start, MaskEnforcer(model, start)

    run = Run()
    run.enforcer.enforce()
    run.enforcer.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    recipe = validate(copy.deepcopy(LENET))
    ctx = RoundContext(recipe=recipe, round=0, name="ticket", mask=dense, model=model, module=run)
    run.give_mask_to("rigl", dense)
    cb = DynamicSparsity(ctx, "rigl", 0.3, 10, 0.5, "constant", 100, "erk")
    run.capture_dense_grads()
    F.cross_entropy(model(x), y).backward()
    reference = {n: p.grad.clone() for n, p in lth_core.prunable_parameters(model).items()}  # masked (the hooks ran)
    weights = {n: p.detach().clone() for n, p in lth_core.prunable_parameters(model).items()}
    kept = run.enforcer.dense
    grads = {n: kept[id(p)].clone() for n, p in lth_core.prunable_parameters(model).items()}
    for n in grads:  # the enforcer kept the gradient before masking; the optimiser sees the masked one
        assert torch.equal(reference[n], grads[n] * start[n])
        assert grads[n][~start[n]].abs().sum() > 0
    cb.update(10)
    for n, before in start.items():
        after, active = run.mask[n], int(before.sum())
        k = int(round(0.5 * active))
        w = weights[n].abs().flatten()
        order = torch.argsort(w.masked_fill(~before.flatten(), -1.0), descending=True)
        by_magnitude = torch.zeros(w.numel(), dtype=torch.bool)
        by_magnitude[order[:active - k]] = True  # the active weights that survive the drop
        by_magnitude = by_magnitude.view_as(before)
        grown = after & ~by_magnitude
        assert int(after.sum()) == active and bool((after >= by_magnitude).all()), n
        assert int(grown.sum()) == k
        g = grads[n].abs()
        assert g[grown].min() >= g[~after].max(), n  # the largest dense gradients among the rest came
        assert not lth_core.prunable_parameters(model)[n].detach()[~after].any()


def test_the_dense_gradient_is_the_gradient_without_the_mask() -> None:
    """``capture_dense_grads``: what the pruned weights would get, equal to the gradient of
    the same network with its pruned weights at zero but no gradient masking."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    twin = copy.deepcopy(model)
    digits = load_digits()
    x, y = torch.tensor(digits.data[:64], dtype=torch.float32) / 16, torch.tensor(digits.target[:64])
    mask = Mask({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(2)) < 0.5 for n, m in Mask.ones_like(model).items()})
    enforcer = MaskEnforcer(model, mask)
    enforcer.enforce()
    enforcer.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    lth_core.apply_mask(twin, mask)
    enforcer.capture_dense_grads()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(twin(x), y).backward()
    dense = enforcer.dense_grads()
    for n, p in lth_core.prunable_parameters(twin).items():
        assert torch.allclose(dense[n], p.grad, atol=1e-7)
        assert not lth_core.prunable_parameters(model)[n].grad[~mask[n]].any()
    assert enforcer.dense_grads() == {}, "kept for one backward only"


# ------------------------------------------------------------------- movement pruning


def test_the_straight_through_estimator_gives_scores_the_movement_gradient() -> None:
    """∂L/∂S = ∂L/∂W' ⊙ W (W' = W ⊙ M) and ∂L/∂W = ∂L/∂W' ⊙ M: a masked weight gets no
    gradient, its score does (on a real digits batch)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    layer = nn.Linear(64, 10)
    digits = load_digits()
    x, y = torch.tensor(digits.data[:64], dtype=torch.float32) / 16, torch.tensor(digits.target[:64])
    scores = torch.randn(layer.weight.shape, requires_grad=True)
    chosen = scores.detach() > 0.3
    w = layer.weight
    F.cross_entropy(F.linear(x, w * _StraightThrough.apply(scores, chosen), layer.bias), y).backward()
    masked = (w.detach() * chosen).requires_grad_(True)
    F.cross_entropy(F.linear(x, masked, layer.bias.detach()), y).backward()
    assert torch.allclose(scores.grad, masked.grad * w.detach(), atol=1e-8)
    assert torch.allclose(w.grad, masked.grad * chosen, atol=1e-8)
    assert not w.grad[~chosen].any() and scores.grad[~chosen].abs().sum() > 0


class WatchMovement(pl.Callback):
    """Every 10 steps: the mask the forward uses now and the layers' (never zeroed) weights."""

    def __init__(self, context):
        self.context, self.seen = context, {}

    def state_dict(self) -> dict:
        return {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.context.module
        if run.step % 10:
            return
        owner = next(cb for cb in trainer.callbacks if type(cb).__name__ == "MovementPruning")
        self.seen[run.step] = {layer.name: (owner.chosen(layer, run.step).clone(),
                                            layer.module.parametrizations.weight.original.detach().clone())
                               for layer in owner.layers}


class MovementWatcher(Watcher):
    @hookimpl
    def round_callbacks(self, context):
        self.watches.append(WatchMovement(context))
        return [self.watches[-1]]


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory):
    from lth_core.plugin_api import registry

    pm = registry.make_plugin_manager()
    folder = tmp_path_factory.mktemp("hard")
    raw = lenet(callbacks=[{"name": "movement_pruning", "method": "hard", "density": 0.1, "end_step": 200}])
    watcher = MovementWatcher()
    with registered(pm, watcher, "watcher"):
        summary = run_lottery(validate(copy.deepcopy(raw)), folder, say=lambda _: None, pm=pm)
    return watcher.watches[-1], summary, folder


def test_hard_movement_follows_the_cubic_schedule_to_exact_counts(hard_run) -> None:
    watch, summary, folder = hard_run
    dense = Mask({n: torch.ones_like(m) for n, (m, _) in watch.seen[10].items()})
    rates = Allocation.of_recipe(validate(copy.deepcopy(LENET)), dense).rates  # 20% a round, 10% for the output layer
    final = layer_counts(allocation_densities(dense, 0.1, rates), dense)
    for t, layers in watch.seen.items():
        for n, (chosen, _) in layers.items():
            want = round(cubic(t, 0, 200, dense[n].numel(), final[n]))
            assert int(chosen.sum()) == want, (t, n)
    ticket = load_ticket(folder / "round_0")
    assert {n: int(m.sum()) for n, m in ticket.mask.items()} == final
    assert summary["rounds"][0]["weights_remaining"] == pytest.approx(sum(final.values()) / dense.total(), abs=0)
    assert summary["rounds"][0]["test_acc"] > 0.7


def test_hard_movement_keeps_masked_weights_and_lets_them_come_back(hard_run) -> None:
    """A weight masked at one step keeps its (non-zero) value and is chosen again later;
    the ticket is the last mask over the trained weights, its masked weights zeroed."""
    watch, _, folder = hard_run
    steps = sorted(watch.seen)
    back, kept_value = 0, 0
    for a, b in zip(steps, steps[1:]):
        for n, (chosen_a, weight_a) in watch.seen[a].items():
            returning = ~chosen_a & watch.seen[b][n][0]
            back += int(returning.sum())
            kept_value += int((weight_a[~chosen_a] != 0).sum())
    assert back > 0, "no masked weight was chosen again"
    assert kept_value > 0, "masked weights were zeroed"
    ticket = load_ticket(folder / "round_0")
    last = watch.seen[steps[-1]]
    for n, m in ticket.mask.items():
        assert torch.equal(m, last[n][0])
        assert not ticket.final[n][~m].any()
        assert torch.equal(ticket.final[n][m], last[n][1][m])  # the trained values, kept where chosen


def test_soft_movement_prunes_by_the_l1_penalty_and_keeps_the_threshold_mask(tmp_path: Path, pm) -> None:
    """Without the penalty almost nothing falls under τ; with it the density drops; the
    ticket's mask is σ(S) > threshold of the saved scores."""
    rows = {}
    for l1 in (0.0, 1000.0):
        raw = lenet(callbacks=[{"name": "movement_pruning", "method": "soft", "threshold": 0.1, "l1": l1, "end_step": 200}])
        summary = run_lottery(validate(raw), tmp_path / str(l1), say=lambda _: None, pm=pm)
        rows[l1] = summary["rounds"][0]
    assert rows[1000.0]["weights_remaining"] < 0.5 * rows[0.0]["weights_remaining"]
    from safetensors.torch import load_file

    scores = load_file(tmp_path / "1000.0" / "round_0" / "movement_scores.safetensors")
    ticket = load_ticket(tmp_path / "1000.0" / "round_0")
    for n, m in ticket.mask.items():
        assert torch.equal(m, torch.sigmoid(scores[n]) > 0.1)
        assert not ticket.final[n][~m].any()


def test_the_accumulated_movement_criterion_keeps_its_old_name(tiny_raw, tmp_path: Path, pm) -> None:
    """``movement_imp`` is the IMP criterion; ``movement`` runs the same rounds."""
    results = {}
    for name in ("movement", "movement_imp"):
        raw = copy.deepcopy(tiny_raw)
        raw["lottery"]["criterion"] = name
        results[name] = run_lottery(validate(raw), tmp_path / name, say=lambda _: None, pm=pm)
    for a, b in zip(results["movement"]["rounds"], results["movement_imp"]["rounds"]):
        assert {k: v for k, v in a.items() if k != "wall_time_s"} == {k: v for k, v in b.items() if k != "wall_time_s"}
    for k in (1, 2):
        old, new = load_ticket(tmp_path / "movement" / f"round_{k}").mask, load_ticket(tmp_path / "movement_imp" / f"round_{k}").mask
        assert all(torch.equal(old[n], new[n]) for n in old)


# ------------------------------------------------------------------- who owns the mask


class Grower(pl.Callback):
    """Sets, at step 5, a mask that keeps a weight the round started without."""

    def __init__(self, context, owns: bool):
        self.context, self.owns_mask = context, owns

    def state_dict(self) -> dict:
        return {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.context.module
        if run.step == 5:
            grown = Mask({n: torch.ones_like(m) for n, m in run.mask.items()})
            run.set_mask(grown)


class GrowerPlugin:
    def __init__(self, owns: bool, count: int = 1):
        self.owns, self.count = owns, count

    @hookimpl
    def round_callbacks(self, context):
        return [Grower(context, self.owns) for _ in range(self.count)] if context.round == 1 else None


@pytest.mark.parametrize("owns, message", [
    (False, "masks may only tighten"),
    (True, "a mask's owner regrows only weights the run started with"),
])
def test_no_callback_grows_the_mask_past_the_rounds_start(tiny_raw, tmp_path: Path, pm, owns: bool, message: str) -> None:
    """Round 1 starts from round 0's pruned mask: a callback that does not own the mask may
    not grow it at all, an owner not past that start."""
    raw = copy.deepcopy(tiny_raw)
    raw["lottery"]["rounds"] = 1
    with registered(pm, GrowerPlugin(owns), "grower"), pytest.raises(PluginError, match=message) as info:
        run_lottery(validate(raw), tmp_path, say=lambda _: None, pm=pm)
    assert "grower" in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "round_0" / "ticket.json").is_file() and not (tmp_path / "round_1" / "ticket.json").exists()


def test_two_callbacks_that_own_the_mask_are_refused_before_training(tiny_raw, tmp_path: Path, pm) -> None:
    raw = copy.deepcopy(tiny_raw)
    raw["lottery"]["rounds"] = 0
    raw["callbacks"] = [{"name": "rigl", "density": 0.5}, {"name": "set", "density": 0.5}]
    with pytest.raises(PluginError, match="2 callbacks that own the mask.*keep one of them"):
        run_lottery(validate(raw), tmp_path, say=lambda _: None, pm=pm)
    assert not (tmp_path / "round_0" / "ticket.json").exists()


def test_a_multi_step_callback_that_prunes_mid_run_keeps_pruned_weights_at_zero_under_adam(tiny_raw, tmp_path: Path, pm) -> None:
    """The multi-step path masks only gradients: a weight pruned mid-run must not keep moving
    on the moments Adam gathered for it (set_mask resets them)."""

    class PruneHalf(pl.Callback):
        multi_step_safe = True

        def __init__(self, context):
            self.context = context

        def state_dict(self) -> dict:
            return {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            run = self.context.module
            if run.step == 20:
                params = lth_core.prunable_parameters(run.model)
                run.set_mask(Mask({n: lth_core.keep_top(params[n].detach().abs(), m, int(m.sum()) // 2) for n, m in run.mask.items()}))

    class Plugin:
        @hookimpl
        def round_callbacks(self, context):
            return [PruneHalf(context)]

    raw = copy.deepcopy(tiny_raw)
    raw["lottery"]["rounds"] = 0
    raw["steps_per_call"] = 10
    with registered(pm, Plugin(), "prune_half"):
        summary = run_lottery(validate(raw), tmp_path, say=lambda _: None, pm=pm)
    ticket = load_ticket(tmp_path / "round_0")
    assert summary["rounds"][0]["weights_remaining"] == pytest.approx(0.5, abs=0.01)
    for n, m in ticket.mask.items():
        assert not ticket.final[n][~m].any()


# ------------------------------------------------------------------- options and distributions


@pytest.mark.parametrize("callback, message", [
    ({"name": "movement_pruning", "method": "hard"}, "method hard needs density"),
    ({"name": "movement_pruning", "method": "soft", "density": 0.1}, "method soft has no density"),
    ({"name": "movement_pruning", "method": "hard", "density": 0.1, "l1": 5}, "has l1, which belong to method soft"),
    ({"name": "movement_pruning", "method": "medium", "density": 0.1}, "method"),
    ({"name": "rigl", "density": 1.5}, "density"),
    ({"name": "rigl", "density": 0.1, "end_step": 5000}, "end_step .5000. is after the last training step .60."),
    ({"name": "set", "density": 0.1, "drop_fraction": 0}, "drop_fraction"),
])
def test_a_wrong_option_is_one_line_and_exit_status_2(tiny_raw, tmp_path: Path, capsys, callback: dict, message: str) -> None:
    import yaml

    raw = copy.deepcopy(tiny_raw)
    raw["lottery"]["rounds"] = 0
    raw["callbacks"] = [callback]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("lth: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0]  # progress lines (if it got that far), then the one error line
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "out" / "round_0" / "ticket.json").exists()


def test_erk_spreads_the_density_exactly_with_small_layers_denser() -> None:
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    mask = Mask.ones_like(model)
    for density in (0.036, 0.1, 0.5):
        d = erk_densities(mask, density)
        kept = sum(d[n] * m.numel() for n, m in mask.items())
        assert kept == pytest.approx(density * mask.total(), rel=1e-12)
        free = [n for n in d if d[n] < 1.0]
        ratios = {n: d[n] / ((sum(mask[n].shape)) / math.prod(mask[n].shape)) for n in free}
        assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-12), "density ∝ (n_in + n_out) / (n_in · n_out)"
        assert d["4.weight"] >= d["2.weight"] >= d["0.weight"]
    assert erk_densities(mask, 0.5)["4.weight"] == 1.0, "a layer the proportion makes denser than 1 is kept dense"


def test_the_recipes_allocation_gives_imps_per_layer_densities() -> None:
    """LeNet's paper allocation (20% a round, 10% for the output layer): at IMP's overall
    density after 10 rounds, each layer gets exactly what 10 rounds leave it."""
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    mask = Mask.ones_like(model)
    rates = {"0.weight": 0.2, "2.weight": 0.2, "4.weight": 0.1}
    imp = {n: (1 - r) ** 10 for n, r in rates.items()}
    overall = sum(imp[n] * m.numel() for n, m in mask.items()) / mask.total()
    got = allocation_densities(mask, overall, rates)
    for n in imp:
        assert got[n] == pytest.approx(imp[n], rel=1e-9)
    with pytest.raises(LthError, match="never pruned"):
        allocation_densities(mask, 0.01, {"0.weight": 0.2, "2.weight": 0.0, "4.weight": 0.0})


# ------------------------------------------------------------------- a module of the user's own


def test_rigl_runs_on_a_users_own_lightning_module(tmp_path: Path) -> None:
    from test_own_module import MLP, Digits

    recipe = {"name": "own-rigl", "seed": 0, "trainer": {"max_steps": 120, "val_check_interval": 20},
              "lottery": {"rounds": 0, "monitor": "val_loss"}, "controls": [], "tracking": "none",
              "callbacks": [{"name": "rigl", "density": 0.25, "update_every": 20, "distribution": "uniform"}]}
    summary = lth_core.run(recipe, out=tmp_path, module=MLP, datamodule=Digits(), say=lambda _: None)
    ticket = summary.ticket(0)
    counts = {n: int(m.sum()) for n, m in ticket.mask.items()}
    assert counts == {n: round(0.25 * m.numel()) for n, m in ticket.mask.items()}
    record = json.loads((tmp_path / "round_0" / "rigl.json").read_text())
    assert [u["step"] for u in record["updates"]] == [20, 40, 60, 80]
    assert summary["rounds"][0]["test_acc"] > 0.5


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_movement_pruning_runs_on_a_users_own_lightning_module(tmp_path: Path, method: str) -> None:
    """The scores wrap the user's own layers: the ticket is those layers' final mask, with
    the masked weights exactly zero, and the module's plain layers come back."""
    from test_own_module import MLP, Digits

    options = {"density": 0.25} if method == "hard" else {"l1": 50.0, "score_lr": 0.1}  # 120 steps: scores must move fast
    recipe = {"name": "own-movement", "seed": 0, "trainer": {"max_steps": 120, "val_check_interval": 20},
              "lottery": {"rounds": 0, "monitor": "val_loss"}, "controls": [], "tracking": "none",
              "callbacks": [{"name": "movement_pruning", "method": method, **options}]}
    summary = lth_core.run(recipe, out=tmp_path, module=MLP, datamodule=Digits(), say=lambda _: None)
    ticket = summary.ticket(0)
    density = ticket.mask.density()
    if method == "hard":
        counts = {n: int(m.sum()) for n, m in ticket.mask.items()}
        assert counts == {n: round(0.25 * m.numel()) for n, m in ticket.mask.items()}
    else:
        assert 0 < density < 1  # the penalty pruned some, not all
    for n, m in ticket.mask.items():
        assert not ticket.final[n][~m.bool()].any()
    assert summary["rounds"][0]["weights_remaining"] == pytest.approx(density)
    assert summary["rounds"][0]["test_acc"] > 0.5
