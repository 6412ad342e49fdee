"""The bundled models: the paper's architectures, exactly, and that the lottery can prune them.

Parameter counts are derived here from the architectures' definitions (independently of the
model code) and also pinned to published numbers: LeNet-300-100 266,610 (784·300+300 +
300·100+100 + 100·10+10); Conv-2 / Conv-4 on CIFAR-10 4.3M / 2.4M weights as in the paper's
Figure 2 table; VGG-19 20,040,522 and ResNet-20 272,474, the counts OpenLTH's own model tests
assert for ``cifar_vgg_19`` and ``cifar_resnet_20``. (Conv-6 as the paper describes it has
2,261,184 weights, not the 1.7M sometimes quoted: the fc 4096-256 layer alone is 1.05M.)

Shape and optimiser-step checks use random CIFAR-shaped tensors (no CIFAR-10 offline); the
end-to-end lottery runs Conv-2 on the real Fashion-MNIST.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core import Allocation, Mask, apply_mask, prunable_parameters, prune_by_scores
from lth_core.engines.enforcer import MaskEnforcer
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.plugin_api.options import check_against_plugins

CIFAR = (3, 32, 32)
FASHION = (1, 28, 28)
CONV_NETS = ("conv2", "conv4", "conv6")
ALL = ("lenet300", "conv2", "conv4", "conv6", "vgg19", "resnet20")
#: The paper's convolution plans (Figure 2): "M" is a 2x2 max-pool.
PLANS = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


def build(name: str, shape: tuple = CIFAR, seed: int = 0, **options) -> nn.Module:
    """A model through the plugin registry, seeded as the lottery seeds it."""
    torch.manual_seed(seed)
    return get_registry().get("models", name).obj(input_shape=shape, num_classes=10, **options)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_prunable(model: nn.Module) -> int:
    return sum(p.numel() for p in prunable_parameters(model).values())


# --- independent arithmetic from the architectures' definitions --------------------------


def convnet_counts(name: str, shape: tuple) -> tuple[int, int]:
    """(all parameters, prunable weights) of the paper's Conv-N from its plan."""
    c, h, w = shape
    weights = biases = 0
    for spec in PLANS[name]:
        if spec == "M":
            h, w = h // 2, w // 2
        else:
            weights += c * spec * 9
            biases += spec
            c = spec
    for a, b in zip([c * h * w, 256, 256], [256, 256, 10]):
        weights += a * b
        biases += b
    return weights + biases, weights


def vgg19_counts(channels: int = 3) -> tuple[int, int]:
    """VGG-19 with batch norm: conv weights+bias, BN weight+bias, then Linear(512, 10)."""
    c, weights, others = channels, 0, 0
    for spec in PLANS["vgg19"]:
        if spec != "M":
            weights += c * spec * 9
            others += spec + 2 * spec  # conv bias, BN weight and bias
            c = spec
    return weights + others + 512 * 10 + 10, weights + 512 * 10


def resnet20_counts(width: int = 16, channels: int = 3) -> tuple[int, int]:
    """ResNet-20: stem conv+BN, 3 stages x 3 blocks (2 convs+BN each), 1x1 shortcuts at
    stage changes, Linear(4W, 10). Convolutions have no bias."""
    weights, bn = channels * width * 9, 2 * width
    current = width
    for stage, f in enumerate((width, 2 * width, 4 * width)):
        for b in range(3):
            weights += current * f * 9 + f * f * 9
            bn += 4 * f
            if stage > 0 and b == 0:
                weights += current * f
                bn += 2 * f
            current = f
    return weights + bn + current * 10 + 10, weights + current * 10


# --- registration and shapes ---------------------------------------------------------------


def test_models_are_registered_by_the_bundled_plugin() -> None:
    """Recipes name models; every architecture must be reachable by its name."""
    registry = get_registry()
    for name in ALL + ("mlp",):
        assert registry.get("models", name).plugin == "models"


@pytest.mark.parametrize("name", ALL)
def test_output_shape_on_cifar_shaped_input(name: str) -> None:
    """Every model maps a CIFAR-10-shaped batch to (batch, num_classes) logits."""
    batch = 2
    model = build(name)
    with torch.no_grad():
        out = model(torch.randn(batch, *CIFAR))
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CONV_NETS)
def test_conv_nets_accept_fashion_mnist_shape(name: str) -> None:
    """The fc input size follows input_shape, so 1x28x28 works too (28 -> 14 -> 7 -> 3)."""
    model = build(name, FASHION)
    with torch.no_grad():
        out = model(torch.randn(3, *FASHION))
    assert out.shape == (3, 10)
    assert n_params(model) == convnet_counts(name, FASHION)[0]


def test_too_small_input_is_refused() -> None:
    """A clear error, not a shape crash deep inside forward."""
    with pytest.raises(ValueError, match="too small"):
        build("conv6", (3, 4, 4))
    with pytest.raises(ValueError, match="channels, height, width"):
        build("conv2", (784,))


# --- exact architectures and parameter counts -----------------------------------------


@pytest.mark.parametrize("name", CONV_NETS)
def test_conv_net_layers_match_the_paper(name: str) -> None:
    """Conv-N: N 3x3 convs with the paper's widths, a pool after each pair, fc 256-256-10."""
    model = build(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    plan_widths = [s for s in PLANS[name] if s != "M"]
    assert [c.out_channels for c in convs] == plan_widths
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == len(plan_widths) // 2
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    side = 32 // 2 ** len(pools)
    assert [(f.in_features, f.out_features) for f in fcs] == [(plan_widths[-1] * side * side, 256), (256, 256), (256, 10)]
    # ReLU after every conv and hidden fc layer, none after the output layer.
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == len(convs) + 2
    assert isinstance(list(model.children())[-1], nn.Linear)


def test_parameter_counts_match_the_paper_and_openlth() -> None:
    """Exact totals: derived from the architecture, and equal to the published numbers."""
    assert n_params(build("lenet300", FASHION)) == 266_610
    expected = {
        # name: (all parameters, prunable weights)
        "conv2": (4_301_642, 4_300_992),  # paper: 4.3M
        "conv4": (2_425_930, 2_425_024),  # paper: 2.4M
        "conv6": (2_262_602, 2_261_184),
        "vgg19": (20_040_522, 20_024_000),  # OpenLTH test_cifar_vgg: 20040522
        "resnet20": (272_474, 270_896),  # OpenLTH test_cifar_resnet: 272474
    }
    derived = {
        "conv2": convnet_counts("conv2", CIFAR),
        "conv4": convnet_counts("conv4", CIFAR),
        "conv6": convnet_counts("conv6", CIFAR),
        "vgg19": vgg19_counts(),
        "resnet20": resnet20_counts(),
    }
    assert derived == expected
    for name, (total, weights) in expected.items():
        model = build(name)
        assert (n_params(model), n_prunable(model)) == (total, weights), name


def test_vgg19_structure_matches_openlth() -> None:
    """16 conv+BN+ReLU modules with OpenLTH's widths, 4 max-pools, a global average pool and
    one Linear(512, 10); conv and fc weights prunable, batch norm never."""
    model = build("vgg19")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [s for s in PLANS["vgg19"] if s != "M"]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert [(f.in_features, f.out_features) for f in model.modules() if isinstance(f, nn.Linear)] == [(512, 10)]
    names = list(prunable_parameters(model))
    conv_idx = [i for i, s in enumerate(PLANS["vgg19"]) if s != "M"]
    assert names == [f"layers.{i}.conv.weight" for i in conv_idx] + ["fc.weight"]
    assert not any(".bn." in n for n in names)


def test_resnet20_structure_matches_openlth() -> None:
    """Stem conv, 9 basic blocks (widths 16/32/64, stride 2 entering stages 2 and 3), 1x1
    conv+BN shortcuts exactly where the shape changes, global pool, Linear(64, 10)."""
    model = build("resnet20")
    names = list(prunable_parameters(model))
    assert len([n for n in names if "shortcut" not in n]) == 20  # the "20": 19 convs + fc
    assert names[0] == "conv.weight" and names[-1] == "fc.weight"
    assert [n for n in names if "shortcut" in n] == ["blocks.3.shortcut.0.weight", "blocks.6.shortcut.0.weight"]
    widths = [model.blocks[b].conv2.out_channels for b in range(9)]
    assert widths == [16] * 3 + [32] * 3 + [64] * 3
    assert [model.blocks[b].conv1.stride for b in range(9)] == [(1, 1)] * 3 + [(2, 2), (1, 1), (1, 1)] * 2
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d))
    assert (model.fc.in_features, model.fc.out_features) == (64, 10)
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        assert model.blocks[:3](model.conv(x)).shape[1:] == (16, 32, 32)
        assert model.blocks(model.conv(x)).shape[1:] == (64, 8, 8)


@pytest.mark.parametrize("width", [8, 32])
def test_resnet20_width_option(width: int) -> None:
    """``width`` is OpenLTH's resnet_20_W: stages W, 2W, 4W; counts follow exactly."""
    model = build("resnet20", width=width)
    assert [model.blocks[b].conv2.out_channels for b in (0, 3, 6)] == [width, 2 * width, 4 * width]
    assert (n_params(model), n_prunable(model)) == resnet20_counts(width)
    assert model(torch.randn(2, *CIFAR)).shape == (2, 10)


# --- initialisation -------------------------------------------------------------------


@pytest.mark.parametrize("name", CONV_NETS)
def test_conv_nets_use_gaussian_glorot_and_zero_biases(name: str) -> None:
    """The paper's init: N(0, 2/(fan_in+fan_out)) weights (fans include the 3x3 receptive
    field), all biases exactly zero."""
    model = build(name)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            rf = m.weight[0, 0].numel()
            fan_in, fan_out = m.weight.shape[1] * rf, m.weight.shape[0] * rf
            expected = math.sqrt(2.0 / (fan_in + fan_out))
            if m.weight.numel() >= 1000:
                assert abs(float(m.weight.detach().std()) / expected - 1) < 0.1, (m, expected)
            assert torch.count_nonzero(m.bias) == 0


@pytest.mark.parametrize("name", ["vgg19", "resnet20"])
def test_openlth_models_use_kaiming_normal_and_uniform_batchnorm(name: str) -> None:
    """OpenLTH's defaults: Kaiming normal (std sqrt(2/fan_in)) conv/linear weights, BN
    weights in [0, 1) and BN biases zero; ``init: glorot`` switches to Glorot."""
    model = build(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 1000]
    for m in convs:
        fan_in = m.weight[0].numel()
        assert abs(float(m.weight.detach().std()) / math.sqrt(2.0 / fan_in) - 1) < 0.1
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert float(m.weight.min()) >= 0.0 and float(m.weight.max()) < 1.0
            assert float(m.weight.detach().std()) > 0.05  # uniform, not the constant 1
            assert torch.count_nonzero(m.bias) == 0
    glorot = build(name, init="glorot")
    big = [m for m in glorot.modules() if isinstance(m, nn.Conv2d)][-1]
    fan_in, fan_out = big.weight[0].numel(), big.weight.shape[0] * 9
    assert abs(float(big.weight.detach().std()) / math.sqrt(2.0 / (fan_in + fan_out)) - 1) < 0.1
    with pytest.raises(ValueError, match="init must be one of"):
        build(name, init="orthogonal")


@pytest.mark.parametrize("name", ["conv2", "resnet20"])
def test_same_seed_same_weights(name: str) -> None:
    """The lottery seeds the global RNG before building: θ0 must then be repeatable."""
    a, b, c = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    first_fc = "fc.weight" if name == "resnet20" else "fc1.weight"
    assert not torch.equal(sa[first_fc], sc[first_fc])


# --- dropout variant ----------------------------------------------------------------------


def test_conv_dropout_variant() -> None:
    """``dropout`` adds Dropout before every fc layer (never between convs) without changing
    parameter names: a recipe's layer names hold with and without it; in eval mode the
    dropout model computes exactly what the plain one computes."""
    plain, dropped = build("conv4"), build("conv4", dropout=0.5)
    assert [k for k, _ in plain.named_parameters()] == [k for k, _ in dropped.named_parameters()]
    children = list(dropped.named_children())
    for fc in ("fc1", "fc2", "fc3"):
        i = [n for n, _ in children].index(fc)
        assert isinstance(children[i - 1][1], nn.Dropout) and children[i - 1][1].p == 0.5
    assert sum(isinstance(m, nn.Dropout) for m in dropped.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, *CIFAR)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), dropped(x))
        dropped.train()
        torch.manual_seed(0)
        first = dropped(x)
        assert not torch.equal(first, dropped(x))
    with pytest.raises(ValueError, match="dropout"):
        build("conv2", dropout=1.0)


# --- training -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv2", "conv4", "conv6", "vgg19", "resnet20"])
def test_one_optimiser_step(name: str) -> None:
    """Backward reaches every prunable weight with a finite, non-zero gradient, and one SGD
    step changes them all (batch-norm running statistics move too)."""
    model = build(name)
    model.train()
    batch = 2  # enough for batch norm's statistics; keeps VGG-19 cheap on a CPU
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, *CIFAR, generator=g), torch.randint(0, 10, (batch,), generator=g)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in prunable_parameters(model).items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    opt.step()
    after = model.state_dict()
    for n in prunable_parameters(model):
        assert not torch.equal(before[n], after[n]), n
    for k in after:
        if k.endswith("running_mean"):
            assert not torch.equal(before[k], after[k]), k


# --- pruning --------------------------------------------------------------------------


def paper_rates(mask: Mask, conv: float = 0.1, fc: float = 0.2) -> dict[str, float]:
    return {n: conv if mask[n].dim() == 4 else fc for n in mask}


@pytest.mark.parametrize("name", CONV_NETS)
def test_layerwise_magnitude_pruning_conv_10_fc_20(name: str) -> None:
    """The paper's Conv-2/4 setting (conv 10%, fc 20% per layer): exact counts per layer, and
    the smallest magnitudes are the ones pruned; a second round prunes only survivors."""
    model = build(name)
    dense = Mask.ones_like(model)
    params = prunable_parameters(model)
    scores = {n: p.detach().abs() for n, p in params.items()}
    rates = paper_rates(dense)
    mask = prune_by_scores(scores, dense, Allocation(rates))
    for n, m in mask.items():
        total = m.numel()
        assert int(m.sum()) == total - round(rates[n] * total), n
        assert float(scores[n][m].min()) >= float(scores[n][~m].max()), n
    # A second round prunes the same fraction of what remains.
    again = prune_by_scores(scores, mask, Allocation(rates))
    for n in mask:
        kept = int(mask[n].sum())
        assert int(again[n].sum()) == kept - round(rates[n] * kept)
        assert not bool((again[n] & ~mask[n]).any())


def test_mask_holds_on_conv_weights_with_batch_norm() -> None:
    """ResNet-20 pruned at 20% per layer, then Adam steps under the MaskEnforcer: pruned 4-D
    conv weights (shortcuts included) stay exactly zero, survivors and batch norm train."""
    model = build("resnet20")
    params = prunable_parameters(model)
    dense = Mask.ones_like(model)
    mask = prune_by_scores({n: p.detach().abs() for n, p in params.items()}, dense, Allocation({n: 0.2 for n in dense}))
    apply_mask(model, mask)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    enforcer = MaskEnforcer(model, mask)
    enforcer.attach(opt)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 10, (2,), generator=g)  # small: cheap
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    enforcer.detach()
    for n, p in params.items():
        assert torch.count_nonzero(p.detach()[~mask[n]]) == 0, n
        assert not torch.equal(p.detach()[mask[n]], start[n][mask[n]]), n  # survivors trained
    assert not torch.equal(model.bn.weight.detach(), start["bn.weight"])  # batch norm is never masked


@pytest.mark.parametrize("name", ["vgg19", "resnet20"])
def test_global_pruning_of_deep_models(name: str) -> None:
    """The paper's VGG/ResNet setting: global 20% over all conv layers by one magnitude
    ranking, the output layer left alone (as OpenLTH's ``pruning_layers_to_ignore``);
    batch norm has no mask at all."""
    model = build(name)
    raw = {"model": name, "data": "digits", "lottery": {"rate": 0.2, "scope": "global", "layer_rates": {"fc": 0.0}}}
    dense = Mask.ones_like(model)
    assert not any("bn" in n for n in dense)
    allocation = Allocation.of_recipe(validate(raw), dense)
    pooled = list(allocation.pooled)
    assert pooled == [n for n in dense if n != "fc.weight"] and allocation.rates["fc.weight"] == 0.0
    scores = {n: p.detach().abs() for n, p in prunable_parameters(model).items()}
    mask = prune_by_scores(scores, dense, allocation)
    pooled_total = sum(dense[n].numel() for n in pooled)
    assert sum(int(mask[n].sum()) for n in pooled) == pooled_total - round(0.2 * pooled_total)
    assert bool(mask["fc.weight"].all())
    kept_min = min(float(scores[n][mask[n]].min()) for n in pooled)
    pruned_max = max(float(scores[n][~mask[n]].max()) for n in pooled if (~mask[n]).any())
    assert kept_min >= pruned_max
    # One ranking, not per-layer rates: layers end up pruned unevenly.
    densities = {float(mask[n].float().mean()) for n in pooled}
    assert max(densities) - min(densities) > 0.05


def test_layer_rates_name_conv_net_modules() -> None:
    """``lottery.layer_rates`` keys work with the documented names: module names (conv1),
    parameter names (fc3.weight) and ``last``; an unknown name lists the valid ones."""
    model = build("conv4")
    dense = Mask.ones_like(model)
    assert list(dense) == ["conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    lr = {"conv1": 0.1, "conv2": 0.1, "conv3.weight": 0.1, "conv4": 0.1, "last": 0.1}
    allocation = Allocation.of_recipe(validate({"model": "conv4", "data": "digits", "lottery": {"rate": 0.2, "layer_rates": lr}}), dense)
    assert allocation.rates == {**{f"conv{i}.weight": 0.1 for i in range(1, 5)}, "fc1.weight": 0.2, "fc2.weight": 0.2, "fc3.weight": 0.1}
    assert allocation.pooled == ()
    bad = validate({"model": "conv4", "data": "digits", "lottery": {"layer_rates": {"features.0": 0.1}}})
    with pytest.raises(LthError, match="conv1.weight"):
        Allocation.of_recipe(bad, dense)


def test_model_options_are_validated_from_factory_signatures() -> None:
    """Recipe options map to factory keywords: known ones pass, typos and wrong types fail
    before any training starts."""
    registry = get_registry()
    for model in ({"name": "conv2", "dropout": 0.5}, {"name": "resnet20", "width": 32}, {"name": "vgg19", "init": "glorot"}):
        check_against_plugins(validate({"model": model, "data": "digits"}), registry)
    with pytest.raises(LthError, match="unknown option model.widht"):
        check_against_plugins(validate({"model": {"name": "resnet20", "widht": 32}, "data": "digits"}), registry)
    with pytest.raises(LthError, match="model.width"):
        check_against_plugins(validate({"model": {"name": "resnet20", "width": "wide"}, "data": "digits"}), registry)


# --- a whole lottery on real Fashion-MNIST ---------------------------------------------------


def test_conv2_lottery_on_fashion_mnist(tmp_path: Path, monkeypatch, pm) -> None:
    """Conv-2 through ``run_lottery`` on real 1x28x28 Fashion-MNIST with the paper's
    per-layer rates (conv 10%, fc 20%, by module name): both rounds train and learn, the
    round-1 mask has exact per-layer counts, its ticket rewinds to θ0 and its pruned
    weights end at zero. Evaluation uses 200 validation and the first 200 test images
    (``limit_val_batches: 1``) and batches of 30 to stay fast on a CPU."""
    raw = {
        "name": "conv2-fashion",
        "seed": 0,
        "model": {"name": "conv2"},
        "data": {"name": "fashion_mnist", "batch_size": 30, "eval_batch_size": 200, "val_size": 200, "subset": 600},
        "optimizer": {"name": "adam", "lr": 2e-4},
        "trainer": {"max_steps": 10, "val_check_interval": 5, "limit_val_batches": 1, "enable_progress_bar": False},
        "lottery": {"rounds": 1, "rate": 0.2, "layer_rates": {"conv1": 0.1, "conv2": 0.1}},
        "tracking": "none",
    }
    out = tmp_path / "run"
    summary = run_lottery(validate(raw), out, say=lambda _: None, pm=pm)
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for row in summary["rounds"]:
        assert row["steps"] == 10 and row["early_stop_step"] in (5, 10)
        assert row["test_acc"] > 0.3, row  # chance is 0.1 on 200 images
    shapes = {"conv1.weight": (64, 1, 3, 3), "conv2.weight": (64, 64, 3, 3), "fc1.weight": (256, 64 * 14 * 14), "fc2.weight": (256, 256), "fc3.weight": (10, 256)}
    mask = load_file(str(out / "round_1" / "mask.safetensors"))
    assert {n: tuple(m.shape) for n, m in mask.items()} == shapes
    rates = {"conv1.weight": 0.1, "conv2.weight": 0.1, "fc1.weight": 0.2, "fc2.weight": 0.2, "fc3.weight": 0.2}
    kept = {n: math.prod(s) - round(rates[n] * math.prod(s)) for n, s in shapes.items()}
    assert {n: int(m.sum()) for n, m in mask.items()} == kept
    assert summary["rounds"][1]["weights_remaining"] == pytest.approx(sum(kept.values()) / sum(math.prod(s) for s in shapes.values()))
    theta0 = load_file(str(out / "round_0" / "init.safetensors"))
    init1 = load_file(str(out / "round_1" / "init.safetensors"))
    final1 = load_file(str(out / "round_1" / "final.safetensors"))
    assert set(init1) == set(theta0) and all(torch.equal(init1[k], theta0[k]) for k in theta0)  # rewound to θ0
    for n, m in mask.items():
        assert torch.count_nonzero(final1[n][~m]) == 0, n
        assert not torch.equal(final1[n][m], init1[n][m]), n  # the survivors trained
    recorded = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recorded["model"] == {"name": "conv2"}
