"""The movement (Sanh et al.) and Deconstructing-Lottery-Tickets (Zhou et al.) criteria.

Every lottery here is real: scikit-learn's digits, the tiny MLP recipe, a few dozen steps.
Expected masks are recomputed in the test from the saved tickets (θ0, trained weights) or
from an independent replay of the training, never taken from the plugins themselves.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pluggy
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import TINY
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.plugin_api.contexts import PruneContext, RoundContext
from lth_core.errors import LthError
from lth_core.lottery.run import build_model, load_data
from lth_core.lottery.rounds import run_lottery
from lth_core import Allocation, Mask, prune_by_scores, recipe_uses
from lth_core.lottery.callbacks import plugin_callbacks
from lth_core.engines.module import LotteryModule
from lth_core.plugin_api.registry import get_registry, make_plugin_manager
from lth_core.config import Recipe, validate
from lth_core.tickets.ticket import load_ticket

STEPS = 40
SGD_LR = 0.05
DECONSTRUCT = ["magnitude_increase", "large_init_large_final", "weight_movement"]



class StateRecorder:
    """A real lth plugin: keeps each finished run's callback state (``on_round_end``)."""

    def __init__(self) -> None:
        self.states: dict[tuple[int, str], dict] = {}

    @hookimpl
    def on_round_end(self, context, ticket, metrics):
        self.states[(context.round, context.name)] = copy.copy(context.state)


def tiny(**lottery) -> dict:
    raw = copy.deepcopy(TINY)
    raw["trainer"]["max_steps"] = STEPS
    raw["lottery"].update(lottery)
    return raw


def run(raw: dict, out: Path, *extra: object) -> tuple[dict, StateRecorder]:
    pm = make_plugin_manager()
    recorder = StateRecorder()
    pm.register(recorder, name="test_state_recorder")
    for i, plugin in enumerate(extra):
        pm.register(plugin, name=f"test_extra_{i}")
    summary = run_lottery(validate(raw), out, say=lambda s: None, pm=pm)
    return summary, recorder


def keep_count(old: Tensor, rate: float) -> int:
    remaining = int(old.sum())
    return remaining - int(round(rate * remaining))


def assert_top_k(new: Tensor, old: Tensor, scores: Tensor, k: int, what: str) -> None:
    """``new`` keeps exactly ``k`` of ``old``'s weights, and none scores below one it dropped.

    Ties at the threshold may go either way; everything else is the top-k of ``scores``.
    """
    assert not (new & ~old).any(), f"{what}: a pruned weight came back"
    assert int(new.sum()) == k, f"{what}: kept {int(new.sum())}, expected {k}"
    dropped = old & ~new
    if dropped.any() and new.any():
        assert scores[new].min() >= scores[dropped].max(), f"{what}: a dropped weight outscores a kept one"


def is_top_k(new: Tensor, old: Tensor, scores: Tensor) -> bool:
    dropped = old & ~new
    return bool(scores[new].min() >= scores[dropped].max())


# ----------------------------------------------------------------------------- movement


@pytest.fixture(scope="module")
def movement_run(tmp_path_factory) -> tuple[Path, dict, Recipe]:
    """One movement lottery (rounds 1) trained with plain SGD, so S has an exact meaning."""
    out = tmp_path_factory.mktemp("movement")
    raw = tiny(criterion="movement", rounds=1)
    raw["optimizer"] = {"name": "sgd", "lr": SGD_LR}
    _, recorder = run(raw, out)
    return out, recorder.states, validate(raw)


def replay_scores(recipe: Recipe, init: dict[str, Tensor], steps: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Plain-PyTorch replay of round 0: the same θ0, batches and SGD, no Lightning, no plugin.

    Returns (-Σ W_t ⊙ g_t, final weights) for the prunable layers.
    """
    registry = get_registry(make_plugin_manager())
    data = load_data(recipe, registry)
    model = build_model(recipe, registry, data, recipe["seed"])
    model.load_state_dict(init)
    names = list(Mask.ones_like(model))
    params = dict(model.named_parameters())
    s = {n: torch.zeros_like(params[n]) for n in names}
    loader = data.train_loader(recipe["seed"])
    done = 0
    while done < steps:
        for x, y in loader:
            if done == steps:
                break
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
            with torch.no_grad():
                for (n, p), g in zip(params.items(), grads):
                    if n in s:
                        s[n] -= p * g
                    p -= SGD_LR * g
            done += 1
    return s, {n: params[n].detach().clone() for n in names}


def test_movement_scores_are_minus_w_times_grad_summed_over_exactly_the_rounds_steps(movement_run) -> None:
    """The callback's S is -Σ W·∂L/∂W over all of the round's steps, checked against an
    independent replay: it must match the replay at STEPS steps and not at STEPS - 1."""
    out, states, recipe = movement_run
    for round_ in (0, 1):
        assert states[(round_, "ticket")]["movement"]["steps"] == STEPS
    recorded = states[(0, "ticket")]["movement"]["scores"]
    ticket = load_ticket(out / "round_0")
    assert set(recorded) == set(ticket.mask)
    assert all(t.device.type == "cpu" for t in recorded.values())
    ref, final = replay_scores(recipe, ticket.init, STEPS)
    ref_short, _ = replay_scores(recipe, ticket.init, STEPS - 1)
    for n, s in recorded.items():
        assert torch.allclose(final[n], ticket.final[n], atol=1e-5), "the replay must reproduce the run"
        assert torch.allclose(s, ref[n], rtol=1e-3, atol=1e-5), n
        assert not torch.allclose(s, ref_short[n], rtol=1e-3, atol=1e-5), n


def test_movement_ranks_weights_that_grew_above_weights_that_shrank(movement_run) -> None:
    """Under SGD, S_i = (wf² - wi²)/(2 lr) - lr/2 Σ g²: every weight that shrank scores
    below zero, the weights that grew most score above zero, hence above all shrinkers."""
    out, states, _ = movement_run
    scores = states[(0, "ticket")]["movement"]["scores"]
    ticket = load_ticket(out / "round_0")
    for n, s in scores.items():
        wi, wf = ticket.init[n], ticket.final[n]
        growth = wf.square() - wi.square()
        assert (2 * SGD_LR * s <= growth + 1e-6).all(), n  # the exact SGD identity, as an inequality
        shrank, grew = growth < 0, growth > 0
        assert shrank.sum() > 10 and grew.sum() > 10
        assert (s[shrank] < 0).all(), n
        top_growers = growth >= growth.quantile(0.9)
        assert (s[top_growers] > 0).all(), n
        assert s[top_growers].min() > s[shrank].max()
        # The one that grew most outranks the one that shrank most.
        assert s.flatten()[growth.argmax()] > s.flatten()[growth.argmin()]


def test_movement_run_prunes_by_the_recorded_scores(movement_run) -> None:
    """The state collected while round 0 trained reaches the criterion: round 1's saved mask
    is the per-layer top-k of S, and not what magnitude pruning would have kept."""
    out, states, recipe = movement_run
    scores = states[(0, "ticket")]["movement"]["scores"]
    old, new = load_ticket(out / "round_0"), load_ticket(out / "round_1")
    rate = recipe["lottery"]["rate"]
    differs_from_magnitude = False
    for n in new.mask:
        assert_top_k(new.mask[n], old.mask[n], scores[n], keep_count(old.mask[n], rate), n)
        differs_from_magnitude |= not is_top_k(new.mask[n], old.mask[n], old.final[n].abs())
    assert differs_from_magnitude


def test_movement_directed_synthetic_scores() -> None:
    """Hand-set weights and gradients: the weights a gradient step pushes away from zero
    (W·g < 0) score +|W·g| and survive; those pushed towards zero are pruned."""
    from lth_movement import MovementScores

    layer = torch.nn.Linear(4, 1, bias=False)
    model = torch.nn.Sequential(layer)
    mask = Mask.ones_like(model)
    module = LotteryModule(model, mask, {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}, num_classes=2)
    ctx = RoundContext(recipe=None, round=0, name="ticket", mask=mask, model=model, module=module)  # as the core sets it
    cb = MovementScores(ctx)
    cb.on_train_start(None, module)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5, 0.5, -2.0]]))
    layer.weight.grad = torch.tensor([[-1.0, 1.0, 1.0, -0.1]])
    cb.on_before_optimizer_step(None, module, None)
    cb.on_before_optimizer_step(None, module, None)
    cb.on_train_end(None, module)
    state = ctx.state["movement"]
    assert state["steps"] == 2
    expected = torch.tensor([[1.0, 1.0, -1.0, -0.4]])  # 2 × (-W·g)
    assert torch.allclose(state["scores"]["0.weight"], expected)
    criterion = get_registry(make_plugin_manager()).get("criteria", "movement").obj
    scores = criterion(model, mask, PruneContext(initial={}, generator=torch.Generator(), round=1, state=ctx.state))
    kept = prune_by_scores(scores, mask, Allocation({"0.weight": 0.5}))["0.weight"]
    # The large weight (-2.0) that shrinks is pruned although it is the largest.
    assert kept.tolist() == [[True, True, False, False]]


def test_movement_without_collected_scores_is_an_error(tmp_path: Path) -> None:
    """at_init mode scores θ0 before any training: movement must say it has no scores, not
    silently prune by something else."""
    raw = tiny(criterion="movement", rounds=1, mode="at_init")
    raw["trainer"]["max_steps"] = 4
    raw["trainer"]["val_check_interval"] = 2
    with pytest.raises(LthError, match="movement.*needs the scores"):
        run(raw, tmp_path)
    assert not (tmp_path / "round_1" / "ticket.json").exists()


class PruneOnceBy(pl.Callback):
    """A recipe callback that prunes half of each layer once, mid-training, with any
    registered criterion (the way a pruning-during-training plugin uses ``criterion``)."""

    def __init__(self, context: RoundContext, at: int, criterion: str, seen: list):
        self.context, self.at, self.criterion, self.seen = context, at, criterion, seen

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.step != self.at:
            return
        fn = self.context.registry.get("criteria", self.criterion).obj
        ctx = PruneContext(initial={}, generator=torch.Generator(), round=self.context.round, state=self.context.state)
        scores = {n: t.clone() for n, t in fn(module.model, module.mask, ctx).items()}
        new = prune_by_scores(scores, module.mask, Allocation({n: 0.5 for n in module.mask}))
        self.seen.append({"steps": self.context.state["movement"]["steps"], "scores": scores, "old": module.mask, "new": new})
        module.set_mask(new)


class PruneOncePlugin:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    @hookimpl
    def register_callbacks(self, register):
        def prune_once(context, at: int = 10, criterion: str = "magnitude"):
            return PruneOnceBy(context, at, criterion, self.seen)

        register("prune_once", prune_once, refers={"criterion": "criteria"})  # its option names a criterion


def test_a_recipe_callback_with_criterion_movement_gets_live_scores(tmp_path: Path) -> None:
    """``callbacks: [{criterion: movement}]`` alone switches the collector on (the lottery's
    own criterion is magnitude) when the callback declared that option names a criterion,
    and a mid-training prune sees the scores of the steps so far."""
    plugin = PruneOncePlugin()
    raw = tiny(criterion="magnitude", rounds=0)
    raw["callbacks"] = [{"name": "prune_once", "at": 10, "criterion": "movement"}]
    run(raw, tmp_path, plugin)
    (seen,) = plugin.seen
    assert seen["steps"] == 10
    final = load_ticket(tmp_path / "round_0").mask
    for n in final:
        assert torch.equal(final[n], seen["new"][n])
        assert_top_k(seen["new"][n], seen["old"][n], seen["scores"][n], keep_count(seen["old"][n], 0.5), n)


def test_collector_is_added_only_when_movement_is_used() -> None:
    """The movement criterion declares its collector (``collects=``): the core adds it to a
    run's callbacks exactly when the recipe prunes by movement somewhere, the lottery's
    criterion, a control's, or a callback option declared to name a criterion."""
    from types import SimpleNamespace

    from lth_movement import MovementScores

    pm = make_plugin_manager()
    registry = get_registry(pm)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))

    def callbacks(raw: dict) -> list:
        recipe = validate(raw)
        ctx = RoundContext(recipe=recipe, round=0, name="ticket", mask=Mask.ones_like(model), model=model, registry=registry)
        return plugin_callbacks(SimpleNamespace(recipe=recipe, registry=registry, pm=pm), ctx, {})

    assert callbacks(tiny(criterion="magnitude")) == []
    assert [type(c) for c in callbacks(tiny(criterion="movement"))] == [MovementScores]
    with_control = tiny(criterion="magnitude")
    with_control["controls"] = [{"name": "by_movement", "criterion": "movement"}]
    assert [type(c) for c in callbacks(with_control)] == [MovementScores]
    with_callback = tiny(criterion="magnitude")
    with_callback["callbacks"] = [{"name": "gradual_pruning", "target": 0.5, "criterion": "movement"}]
    assert recipe_uses(validate(with_callback), registry, "criteria", "movement")
    with_callback["callbacks"] = [{"name": "gradual_pruning", "target": 0.5}]  # its default criterion: magnitude
    assert not recipe_uses(validate(with_callback), registry, "criteria", "movement")
    assert recipe_uses(validate(with_callback), registry, "criteria", "magnitude")


# -------------------------------------------------------------------------- deconstruct


def percentile_ranks(values: Tensor) -> Tensor:
    """Rank of each value among ``values`` (0 = smallest), by sorting."""
    return torch.argsort(torch.argsort(values)).double()


def expected_scores(criterion: str, wi: Tensor, wf: Tensor) -> Tensor:
    """Zhou et al.'s formulas over the flat vectors of still-unpruned weights."""
    if criterion == "magnitude_increase":
        return wf.abs() - wi.abs()
    if criterion == "weight_movement":
        return (wf - wi).abs()
    # large_init_large_final: kept iff both |wi| and |wf| are above one common percentile.
    return torch.minimum(percentile_ranks(wi.abs()), percentile_ranks(wf.abs()))


@pytest.mark.parametrize("criterion", DECONSTRUCT)
def test_deconstruct_criterion_masks_are_the_top_k_of_the_formula(criterion: str, tmp_path: Path) -> None:
    """Each round's saved mask keeps the top-k of the criterion computed from θ0 (round 0's
    init) and the previous round's trained weights, per layer; magnitude would differ."""
    run(tiny(criterion=criterion, rounds=2), tmp_path)
    rate = TINY["lottery"]["rate"]
    init = load_ticket(tmp_path / "round_0").init
    differs_from_magnitude = False
    for k in (1, 2):
        prev, new = load_ticket(tmp_path / f"round_{k - 1}"), load_ticket(tmp_path / f"round_{k}")
        assert torch.equal(new.init[next(iter(new.mask))], init[next(iter(new.mask))])  # rewound to θ0
        for n in new.mask:
            old = prev.mask[n].flatten()
            s = expected_scores(criterion, init[n].flatten()[old].double(), prev.final[n].flatten()[old].double())
            kept = new.mask[n].flatten()[old]
            assert_top_k(kept, torch.ones_like(kept), s, keep_count(old, rate), f"round {k} {n}")
            assert not new.mask[n].flatten()[~old].any()
            differs_from_magnitude |= not is_top_k(kept, torch.ones_like(kept), prev.final[n].flatten()[old].abs())
    assert differs_from_magnitude


def test_large_init_large_final_ranks_across_layers_under_global_pruning(tmp_path: Path) -> None:
    """With scope global, the common percentile is taken over all pooled layers at once."""
    run(tiny(criterion="large_init_large_final", rounds=1, scope="global"), tmp_path)
    old, new = load_ticket(tmp_path / "round_0"), load_ticket(tmp_path / "round_1")
    names = list(new.mask)
    wi = torch.cat([old.init[n].flatten() for n in names]).double()
    wf = torch.cat([old.final[n].flatten() for n in names]).double()
    kept = torch.cat([new.mask[n].flatten() for n in names])
    s = expected_scores("large_init_large_final", wi, wf)
    assert_top_k(kept, torch.ones_like(kept), s, keep_count(torch.ones_like(kept), TINY["lottery"]["rate"]), "pooled")
    densities = [new.mask[n].float().mean().item() for n in names]
    assert max(densities) - min(densities) > 0.01, "global pruning should not keep the same share of every layer"


@pytest.mark.parametrize("criterion", DECONSTRUCT)
def test_deconstruct_criteria_refuse_untrained_weights(criterion: str) -> None:
    """They compare wf with wi: given θ0 itself (at_init) they must refuse, not rank ties."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    mask = Mask.ones_like(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    fn = get_registry(make_plugin_manager()).get("criteria", criterion).obj
    with pytest.raises(LthError, match="θ0"):
        fn(model, mask, PruneContext(initial=initial, generator=torch.Generator(), round=1))


# ------------------------------------------------------------------------ lth plugins


def test_lth_plugins_json_lists_the_criteria(pm: pluggy.PluginManager, capsys: pytest.CaptureFixture) -> None:
    """Users find these criteria (and the movement collector hook) with `lth plugins --json`."""
    assert cli.main(["plugins", "--json"]) == 0
    by_name = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert by_name["movement"]["registers"] == {"criteria": ["movement", "movement_imp"], "callbacks": ["movement_pruning"]}
    assert by_name["movement"]["hooks"] == ["register_callbacks", "register_criteria"]  # its collector is declared when it registers
    assert by_name["dst"]["registers"] == {"callbacks": ["rigl", "set"]}
    assert by_name["deconstruct"]["registers"] == {"criteria": sorted(DECONSTRUCT)}
    assert by_name["movement"]["distribution"] == by_name["deconstruct"]["distribution"] == "lth"
