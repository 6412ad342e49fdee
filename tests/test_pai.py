"""Pruning at initialisation (plugin ``lth_pai``): SNIP, SynFlow and GraSP on real data.

Each criterion is checked against an independent computation of its formula on the real
LeNet-300-100 / Fashion-MNIST (or a small MLP on digits where a full Hessian is needed),
SynFlow is shown to read nothing from the data but its input shape and to avoid the layer
collapse that single-shot criteria suffer at extreme sparsity, and every criterion drives
a real ``lottery.mode: at_init`` run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lth_core.commands import cli
from lth_core.plugin_api.contexts import PruneContext
from lth_core.data.loaders import DataModule
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core import Allocation, Mask, prune_by_scores
from lth_core.tickets.pruning import select
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.tickets.ticket import load_ticket



def criterion(name: str):
    """A criterion as the core finds it: by name, through the plugin registry."""
    return get_registry().get("criteria", name).obj


def context(data, mask: Mask, options: dict | None = None, rates: dict | None = None,
            scope: str = "layer", pooled: list | None = None) -> PruneContext:
    return PruneContext(
        initial={}, generator=torch.Generator().manual_seed(0), round=1, data=data,
        options=dict(options or {}), allocation=Allocation(dict(rates or {}), scope, tuple(pooled or ())),
    )


def core_prune(result, mask: Mask, rates: dict, scope: str = "layer", pooled: list | None = None) -> Mask:
    """What the core makes of a criterion's result (scores or its own mask) under this allocation."""
    return select(result, mask, Allocation(rates, scope, tuple(pooled or ())), "criterion")


def keep_counts(mask: Mask, rates: dict) -> dict[str, int]:
    """Weights each layer keeps when pruned layer by layer at ``rates``."""
    return {unit[0]: k for unit, k in Allocation(rates).counts(mask).items()}


def random_mask(model: nn.Module, keep: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(m.shape, generator=g) < keep for n, m in Mask.ones_like(model).items()})


def linear_weights(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(f"{n}.weight", m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def synflow_closed_form(model: nn.Module, mask: Mask) -> dict[str, Tensor]:
    """SynFlow of a ReLU MLP by hand: with |W|, |b| and an all-ones input every unit is
    active, so a_l = |W_l| a_(l-1) + |b_l|, δ_L = 1, δ_(l-1) = |W_l|ᵀ δ_l and the score of
    W_l[i, j] is δ_l[i] · a_(l-1)[j] · |W_l[i, j]|. Independent of autograd and the plugin."""
    layers = [(n, (m.weight.detach().double() * mask[n].double()).abs(), m.bias.detach().double().abs()) for n, m in linear_weights(model)]
    acts = [torch.ones(layers[0][1].shape[1], dtype=torch.float64)]
    for _, w, b in layers:
        acts.append(w @ acts[-1] + b)
    delta = torch.ones(layers[-1][1].shape[0], dtype=torch.float64)
    out = {}
    for (n, w, _), a in zip(reversed(layers), reversed(acts[:-1])):
        out[n] = delta[:, None] * a[None, :] * w
        delta = w.T @ delta
    return out


def has_path(mask: Mask) -> bool:
    """Whether any input pixel still reaches any output through kept weights (MLP masks in order)."""
    reach = torch.ones(next(iter(mask.values())).shape[1], dtype=torch.float64)
    for m in mask.values():
        reach = (m.double() @ reach > 0).double()
    return bool(reach.any())


class OnlyInputShape:
    """A real DataModule seen through a window that lets only ``input_shape`` through.

    Any other attribute (``sample_batch``, ``train_x``, loaders ...) fails the test: this is
    how the test proves a criterion is data free, not a stand-in for the criterion."""

    def __init__(self, data: DataModule):
        self._data = data
        self.reads: list[str] = []

    @property
    def input_shape(self) -> tuple[int, ...]:
        self.reads.append("input_shape")
        return self._data.input_shape

    def __getattr__(self, name: str):
        raise AssertionError(f"a data-free criterion read data.{name}")


@pytest.fixture(scope="module")
def fashion() -> DataModule:
    """Real Fashion-MNIST (2,000 training images are plenty to score with)."""
    bundle = get_registry().get("datasets", "fashion_mnist").obj()
    return DataModule(bundle, 60, 2000, 1000, 0, 2000)


@pytest.fixture(scope="module")
def digits() -> DataModule:
    bundle = get_registry().get("datasets", "digits").obj()
    return DataModule(bundle, 32, 500, 0.1, 0)


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_registry().get("models", "lenet300").obj(input_shape=(1, 28, 28), num_classes=10)


# ------------------------------------------------------------------------------------ SNIP


def test_snip_is_gradient_times_weight_of_the_masked_model(fashion: DataModule) -> None:
    """SNIP must score |∂L/∂w · w| on the seeded batch, computed on the *masked* model: a
    pruned weight that still holds a value in the model must neither be scored nor change
    the other weights' gradients, and the caller's model must not change."""
    model = lenet()
    mask = random_mask(model, 0.5, seed=1)  # the model still holds the pruned weights' values
    before = copy.deepcopy(model.state_dict())
    scores = criterion("snip")(model, mask, context(fashion, mask, {"batch_size": 128, "seed": 3}))

    x, y = fashion.sample_batch(128, 3)
    weights = {n: (p.detach() * mask[n]).requires_grad_() if n in mask else p.detach() for n, p in model.named_parameters()}
    loss = F.cross_entropy(torch.func.functional_call(model, weights, (x,)), y)
    grads = torch.autograd.grad(loss, [weights[n] for n in mask])
    for n, g in zip(mask, grads):
        expected = (g * weights[n]).abs().detach()
        torch.testing.assert_close(scores[n], expected, rtol=1e-5, atol=1e-12)
        assert torch.all(scores[n][~mask[n]] == 0)
        assert scores[n][mask[n]].gt(0).float().mean() > 0.5
    dense = criterion("snip")(model, Mask.ones_like(model), context(fashion, mask, {"batch_size": 128, "seed": 3}))
    assert not torch.allclose(dense["net.3.weight"][mask["net.3.weight"]], scores["net.3.weight"][mask["net.3.weight"]])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_snip_prunes_exactly_the_requested_counts(fashion: DataModule) -> None:
    """Whatever the allocation, the core keeps exactly round-counted weights per layer (or per
    pooled group) and what it prunes are the lowest SNIP scores."""
    model = lenet()
    dense = Mask.ones_like(model)
    names = list(dense)
    rates = {names[0]: 0.8, names[1]: 0.8, names[2]: 0.4}
    scores = criterion("snip")(model, dense, context(fashion, dense, {"seed": 0}, rates))
    layerwise = core_prune(scores, dense, rates)
    assert {n: r["kept"] for n, r in layerwise.report().items()} == keep_counts(dense, rates) == {
        names[0]: 47040, names[1]: 6000, names[2]: 600}
    for n in names:
        assert scores[n][layerwise[n]].min() >= scores[n][~layerwise[n]].max()

    rates = {n: 0.95 for n in names}
    glob = core_prune(scores, dense, rates, "global", names)
    assert glob.kept() == dense.total() - round(0.95 * dense.total())
    kept = torch.cat([scores[n][glob[n]] for n in names])
    pruned = torch.cat([scores[n][~glob[n]] for n in names])
    assert kept.min() >= pruned.max()


def test_snip_and_grasp_score_in_eval_mode_and_restore_nothing(digits: DataModule) -> None:
    """Dropout must not make a criterion random: scores are computed in eval mode on a copy,
    so two calls agree exactly and the caller's model keeps its training flag."""
    torch.manual_seed(0)
    model = get_registry().get("models", "mlp").obj(input_shape=(1, 8, 8), num_classes=10, hidden=[64, 32], dropout=0.5)
    model.train()
    mask = Mask.ones_like(model)
    for name in ("snip", "grasp"):
        a = criterion(name)(model, mask, context(digits, mask, {"seed": 1, "batch_size": 200}))
        b = criterion(name)(model, mask, context(digits, mask, {"seed": 1, "batch_size": 200}))
        assert all(torch.equal(a[n], b[n]) for n in mask)
        assert model.training


# ----------------------------------------------------------------------------------- GraSP


def test_grasp_is_hessian_gradient_product_times_weight(digits: DataModule) -> None:
    """GraSP's score is (H g) ⊙ θ at temperature 200, checked against the full Hessian of the
    loss in the weights (a small MLP on digits, so the Hessian fits in memory)."""
    torch.manual_seed(0)
    model = get_registry().get("models", "mlp").obj(input_shape=(1, 8, 8), num_classes=10, hidden=[16])
    mask = random_mask(model, 0.7, seed=2)
    scores = criterion("grasp")(model, mask, context(digits, mask, {"seed": 5, "batch_size": 300}))

    x, y = digits.sample_batch(300, 5)
    names = list(mask)
    net = copy.deepcopy(model).double()
    base = {n: p.detach() for n, p in net.named_parameters()}
    shapes = [base[n].shape for n in names]
    flat = torch.cat([(base[n] * mask[n]).flatten() for n in names])

    def loss(v: Tensor) -> Tensor:
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        params = {k: parts.get(k, t) for k, t in base.items()}
        return F.cross_entropy(torch.func.functional_call(net, params, (x.double(),)) / 200.0, y)

    g = torch.autograd.functional.jacobian(loss, flat)
    hessian = torch.autograd.functional.hessian(loss, flat)
    expected = (hessian @ g) * flat
    got = torch.cat([scores[n].flatten() for n in names]).double()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    assert expected.abs().max() > 0


# --------------------------------------------------------------------------------- SynFlow


def test_synflow_reads_nothing_but_the_input_shape(fashion: DataModule) -> None:
    """SynFlow is data free: handed the real Fashion-MNIST DataModule behind a window that
    fails on anything but ``input_shape``, it still scores and prunes, and leaves the model
    (signs, values, training flag) exactly as it found it."""
    model = lenet()
    model.train()
    before = copy.deepcopy(model.state_dict())
    dense = Mask.ones_like(model)
    window = OnlyInputShape(fashion)
    rates = {n: 0.9 for n in dense}
    scores = criterion("synflow")(model, dense, context(window, dense, {"iterations": 5}, rates))
    assert set(window.reads) == {"input_shape"}
    assert core_prune(scores, dense, rates).kept() == sum(keep_counts(dense, rates).values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and (before["net.1.weight"] < 0).any()


def test_synflow_single_step_equals_the_closed_form(fashion: DataModule) -> None:
    """With nothing to prune (or one iteration) the scores are exactly SynFlow's
    |∂R/∂θ ⊙ θ| of the masked, linearised network, computed here by hand."""
    model = lenet()
    with torch.no_grad():  # non-zero biases so their absolute values matter too
        for _, m in linear_weights(model):
            m.bias.normal_(0, 0.1)
    mask = random_mask(model, 0.6, seed=4)
    expected = synflow_closed_form(model, mask)
    plain = criterion("synflow")(model, mask, context(OnlyInputShape(fashion), mask))
    for n in mask:
        torch.testing.assert_close(plain[n], expected[n], rtol=1e-10, atol=0.0)
        assert plain[n].dtype == torch.float64

    rates = {n: 0.5 for n in mask}
    one = criterion("synflow")(model, mask, context(OnlyInputShape(fashion), mask, {"iterations": 1}, rates))
    assert isinstance(one, Mask)  # iterating, SynFlow returns the mask it reached
    assert core_prune(one, mask, rates) == prune_by_scores(expected, mask, Allocation(rates))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_synflow_iterates_to_the_exact_counts_the_core_keeps(fashion: DataModule, scope: str) -> None:
    """Iterative SynFlow (exponential schedule, rescoring the masked network every step)
    must end on exactly the core's counts, and the mask it returns must be the one the
    iteration finds: here an independent loop over the closed form."""
    model = lenet()
    dense = Mask.ones_like(model)
    names = list(dense)
    if scope == "layer":
        rates, pooled = {names[0]: 0.9, names[1]: 0.9, names[2]: 0.5}, []
    else:
        rates, pooled = {n: 0.97 for n in names}, names
    iterations = 8
    scores = criterion("synflow")(model, dense, context(OnlyInputShape(fashion), dense, {"iterations": iterations}, rates, scope, pooled))
    found = core_prune(scores, dense, rates, scope, pooled)

    groups = [pooled] if pooled else [[n] for n in names]
    final = keep_counts(dense, rates) if not pooled else None
    target = [final[g[0]] for g in groups] if final else [dense.total() - round(0.97 * dense.total())]
    start = [sum(dense[n].numel() for n in g) for g in groups]
    current = dense
    for t in range(1, iterations + 1):
        step = {}
        for g, k, r in zip(groups, target, start):
            keep = k if t == iterations else round(r * (k / r) ** (t / iterations))
            remaining = sum(int(current[n].sum()) for n in g)
            step.update({n: (remaining - keep) / remaining for n in g})
        current = prune_by_scores(synflow_closed_form(model, current), current, Allocation(step, scope, tuple(pooled)))
    assert found == current
    if pooled:
        assert found.kept() == target[0]
    else:
        assert {n: r["kept"] for n, r in found.report().items()} == final


def test_iterative_synflow_avoids_layer_collapse_on_lenet(fashion: DataModule) -> None:
    """The SynFlow paper's point, on the real LeNet-300-100 at its initialisation: pruned
    globally to 99.95% (133 of 266,200 weights), iterative SynFlow keeps every layer and a
    path from input to output, while global magnitude, SNIP (on real Fashion-MNIST) and
    single-shot SynFlow empty the first layer and disconnect the network. (At 99.9%
    iterative SynFlow also survives; magnitude and SNIP collapse there for some seeds only.)"""
    model = lenet()
    dense = Mask.ones_like(model)
    names = list(dense)

    def prune(name: str, rate: float, options: dict) -> Mask:
        rates = {n: rate for n in names}
        data = fashion if name == "snip" else OnlyInputShape(fashion)
        scores = criterion(name)(model, dense, context(data, dense, options, rates, "global", names))
        return core_prune(scores, dense, rates, "global", names)

    synflow = prune("synflow", 0.9995, {"iterations": 100})
    assert synflow.kept() == dense.total() - round(0.9995 * dense.total()) == 133
    assert all(r["kept"] >= 1 for r in synflow.report().values()), synflow.report()
    assert has_path(synflow)
    for name, options in (("magnitude", {}), ("snip", {"seed": 0}), ("synflow", {"iterations": 1})):
        collapsed = prune(name, 0.9995, options)
        assert collapsed.kept() == synflow.kept()
        assert collapsed.report()[names[0]]["kept"] == 0, (name, collapsed.report())
        assert not has_path(collapsed)


def test_synflow_handles_batch_norm_models() -> None:
    """On a batch-norm ResNet-20, SynFlow (eval mode, absolute running statistics as in
    Synaptic-Flow) gives finite non-negative scores, hits the exact pruned counts, and
    leaves the model's weights, running statistics and training flag untouched."""
    torch.manual_seed(0)
    model = get_registry().get("models", "resnet20").obj(input_shape=(3, 32, 32), num_classes=10)
    model.train()
    before = copy.deepcopy(model.state_dict())

    class Shape:
        input_shape = (3, 32, 32)

    dense = Mask.ones_like(model)
    rates = {n: 0.9 for n in dense}
    mask = core_prune(criterion("synflow")(model, dense, context(Shape(), dense, {"iterations": 4}, rates, "global", list(dense))),
                 dense, rates, "global", list(dense))
    assert mask.kept() == dense.total() - round(0.9 * dense.total())
    scores = criterion("synflow")(model, mask, context(Shape(), mask))  # nothing to prune: plain scores
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert all((scores[n][mask[n]] >= 0).all() for n in mask)
    assert all(r["kept"] >= 1 for r in mask.report().values())
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_criterion_option_is_refused(digits: DataModule) -> None:
    """A misspelt option must stop the run with a message naming the valid ones, not be ignored."""
    torch.manual_seed(0)
    model = get_registry().get("models", "mlp").obj(input_shape=(1, 8, 8), num_classes=10, hidden=[16])
    mask = Mask.ones_like(model)
    with pytest.raises(LthError, match="iteratons.*valid: iterations"):
        criterion("synflow")(model, mask, context(digits, mask, {"iteratons": 3}))


# ---------------------------------------------------------------------- lottery and CLI


@pytest.mark.parametrize("name,options", [
    ("snip", {"batch_size": 128, "seed": 7}),
    ("synflow", {"iterations": 20}),
    ("grasp", {"batch_size": 128, "seed": 7}),
])
def test_at_init_lottery_with_each_criterion_trains_and_beats_chance(
    name: str, options: dict, tiny_raw: dict, tmp_path: Path, pm
) -> None:
    """Selected by name in a recipe with ``mode: at_init``, each criterion prunes θ0 itself
    (the round-1 mask is exactly the criterion's mask of the initial weights, not of the
    trained ones), at exactly the recipe's density, and the pruned network trains on real
    digits far above chance (10%)."""
    tiny_raw["lottery"].update(criterion=name, criterion_options=options, mode="at_init", rounds=1, rate=0.8)
    tiny_raw["trainer"]["max_steps"] = 80
    summary = run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None)
    row = summary["rounds"][1]
    round0 = load_ticket(tmp_path / "round_0")
    ticket = load_ticket(tmp_path / "round_1")
    dense = round0.mask
    rates = {n: 0.8 for n in dense}
    assert ticket.mask.kept() == sum(keep_counts(dense, rates).values())
    assert row["weights_remaining"] == pytest.approx(ticket.mask.density())
    assert row["test_acc"] > 0.5

    torch.manual_seed(0)
    model = get_registry().get("models", "mlp").obj(input_shape=(1, 8, 8), num_classes=10, hidden=[64, 32])
    data = DataModule(get_registry().get("datasets", "digits").obj(), 32, 2000, 0.1, 0)
    for which, expect_equal in ((round0.init, True), (round0.final, False)):
        model.load_state_dict(which)
        scores = criterion(name)(model, dense, context(data, dense, options, rates))
        assert (core_prune(scores, dense, rates) == ticket.mask) is expect_equal
    assert all(torch.equal(ticket.init[k], round0.init[k]) for k in ticket.init)


def test_lth_plugins_lists_the_pai_criteria(capsys) -> None:
    """``lth plugins --json`` shows the plugin and the three names a recipe can select."""
    assert cli.main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["pai"]["registers"] == {"criteria": ["grasp", "snip", "synflow"]}
    assert plugins["pai"]["distribution"] == "lth"
