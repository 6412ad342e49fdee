"""Masks: exact pruning counts, monotone masks, and pruned weights held at zero in training.

The pruning arithmetic is checked with hypothesis over random layer shapes, masks and
rates; the training invariant is checked step by step inside real Lightning fits on
scikit-learn's digits with every supported optimiser.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lth_core import hookimpl
from lth_core.data.loaders import DataModule
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core import Allocation, Mask, match_density, prunable_parameters, prune_by_scores
from lth_core.engines.enforcer import MaskEnforcer
from lth_core.engines.module import LotteryModule
from lth_core.config import validate
from lth_core.tickets.ticket import load_ticket
from lth_datasets import digits
from lth_models import mlp

SETTINGS = settings(max_examples=40, deadline=None)

# ----------------------------------------------------------------------------- helpers

shapes = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 12), st.integers(1, 12)),  # Linear weight
        st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),  # Conv2d
        st.tuples(st.integers(1, 30)),
    ),
    min_size=1,
    max_size=4,
)


def _names(n: int) -> list[str]:
    return [f"layer{i}.weight" for i in range(n)]


def _random_mask(shape_list: list[tuple], density: float, g: torch.Generator) -> Mask:
    return Mask({n: torch.rand(s, generator=g) < density for n, s in zip(_names(len(shape_list)), shape_list)})


def _unique_scores(mask: Mask, g: torch.Generator, offsets: dict[str, float] | None = None) -> dict[str, Tensor]:
    """Scores with no ties anywhere (one permutation over all layers), optionally shifted per layer."""
    total = mask.total()
    perm = torch.randperm(total, generator=g).to(torch.float32)
    out, offset = {}, 0
    for n, m in mask.items():
        out[n] = perm[offset : offset + m.numel()].view(m.shape) + (offsets or {}).get(n, 0.0)
        offset += m.numel()
    return out


def _expected_keep(remaining: int, rate: float) -> int:
    return remaining - int(round(rate * remaining))


def _digits_module(seed: int = 0) -> DataModule:
    return DataModule(digits(), batch_size=32, eval_batch_size=2000, val_size=0.1, seed=seed)


def _tiny_model(seed: int = 0, hidden: list[int] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    return mlp((1, 8, 8), 10, hidden=hidden or [64, 32])


# ------------------------------------------------------------------ layer-wise pruning


@SETTINGS
@given(shape_list=shapes, density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_layer_scope_keeps_exact_count_of_highest_scores(shape_list, density, seed, data) -> None:
    """Each layer loses exactly round(rate * remaining) weights, the lowest-scoring survivors,
    and a pruned weight never comes back: the paper's per-layer pruning, to the weight."""
    g = torch.Generator().manual_seed(seed)
    mask = _random_mask(shape_list, density, g)
    rates = {n: data.draw(st.floats(0.01, 0.99), label=f"rate {n}") for n in mask}
    scores = _unique_scores(mask, g)

    new = prune_by_scores(scores, mask, Allocation(rates))

    assert list(new) == list(mask)
    for n, old in mask.items():
        m = new[n]
        assert m.dtype == torch.bool and m.shape == old.shape
        remaining = int(torch.count_nonzero(old))
        assert int(torch.count_nonzero(m)) == _expected_keep(remaining, rates[n])
        assert not bool((m & ~old).any()), f"{n}: a pruned weight came back"
        survivors, dropped = scores[n][m], scores[n][old & ~m]
        if survivors.numel() and dropped.numel():
            assert survivors.min() > dropped.max(), f"{n}: a lower score survived a higher one"
    _check_counts(new)


@SETTINGS
@given(shape_list=shapes, rate=st.floats(0.01, 0.99), levels=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_layer_scope_counts_are_exact_with_tied_scores(shape_list, rate, levels, seed) -> None:
    """Heavy ties (scores from 1-3 values, e.g. many identical magnitudes) must not change
    how many weights are kept, nor revive pruned ones."""
    g = torch.Generator().manual_seed(seed)
    mask = _random_mask(shape_list, 0.7, g)
    scores = {n: torch.randint(0, levels, m.shape, generator=g).float() for n, m in mask.items()}
    new = prune_by_scores(scores, mask, Allocation({n: rate for n in mask}))
    for n, old in mask.items():
        assert int(new[n].sum()) == _expected_keep(int(old.sum()), rate)
        assert not bool((new[n] & ~old).any())


def _check_counts(mask: Mask) -> None:
    """report() and density() agree with the True entries actually in the tensors."""
    report = mask.report()
    kept_total, total = 0, 0
    for n, t in mask.items():
        kept = int(t.numpy().sum())
        assert report[n]["kept"] == kept
        assert report[n]["total"] == t.numel()
        assert math.isclose(report[n]["density"], kept / t.numel())
        kept_total, total = kept_total + kept, total + t.numel()
    assert mask.kept() == kept_total and mask.total() == total
    assert math.isclose(mask.density(), kept_total / total)


@SETTINGS
@given(shape_list=shapes, density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_report_and_density_count_the_tensors(shape_list, density, seed) -> None:
    """The numbers written to ticket.json and printed (report, density) are real counts."""
    _check_counts(_random_mask(shape_list, density, torch.Generator().manual_seed(seed)))


def test_mask_refuses_non_bool_tensors() -> None:
    """A float or uint8 'mask' would multiply weights by arbitrary values; refuse it."""
    for dtype in (torch.float32, torch.uint8, torch.int64):
        with pytest.raises(TypeError, match="must be bool"):
            Mask({"fc.weight": torch.ones(3, 3, dtype=dtype)})


# ---------------------------------------------------------------------- global pruning


@SETTINGS
@given(shape_list=shapes, density=st.floats(0.05, 1.0), rate=st.floats(0.01, 0.99),
       seed=st.integers(0, 2**31 - 1), data=st.data())
def test_global_scope_ranks_all_pooled_layers_together(shape_list, density, rate, seed, data) -> None:
    """Global pruning keeps the exact pooled count by one ranking across layers: a layer
    whose scores are all larger keeps as many weights as the pooled budget allows."""
    g = torch.Generator().manual_seed(seed)
    mask = _random_mask(shape_list, density, g)
    names = list(mask)
    big = names[data.draw(st.integers(0, len(names) - 1), label="big layer")]
    scores = _unique_scores(mask, g, offsets={big: 10.0 * mask.total() + 10})
    rates = {n: rate for n in names}

    new = prune_by_scores(scores, mask, Allocation(rates, "global", tuple(names)))

    remaining = mask.kept()
    keep = _expected_keep(remaining, rate)
    assert new.kept() == keep
    for n in names:
        assert not bool((new[n] & ~mask[n]).any()), f"{n}: a pruned weight came back"
    survivors = torch.cat([scores[n][new[n]] for n in names])
    dropped = torch.cat([scores[n][mask[n] & ~new[n]] for n in names])
    if survivors.numel() and dropped.numel():
        assert survivors.min() > dropped.max(), "the pooled ranking is not global"
    assert int(new[big].sum()) == min(int(mask[big].sum()), keep)
    _check_counts(new)


def test_global_scope_ranks_only_the_pooled_layers_together() -> None:
    """Under global scope the pooled layers are one unit (first, in the mask's order) and
    every other layer is ranked alone: a layer outside the pool keeps its own count even
    when its scores dwarf the pool's."""
    ones = lambda n: torch.ones(n, dtype=torch.bool)  # noqa: E731
    mask = Mask({"a.weight": ones(10), "b.weight": ones(10), "c.weight": ones(10)})
    allocation = Allocation({n: 0.5 for n in mask}, "global", ("c.weight", "a.weight"))
    assert allocation.units(mask) == [("a.weight", "c.weight"), ("b.weight",)]
    assert allocation.counts(mask) == {("a.weight", "c.weight"): 10, ("b.weight",): 5}
    scores = {"a.weight": torch.arange(10.0) + 100, "b.weight": torch.arange(10.0) + 1000, "c.weight": torch.arange(10.0)}
    new = prune_by_scores(scores, mask, allocation)
    assert new.report()["a.weight"]["kept"] == 10
    assert new.report()["c.weight"]["kept"] == 0
    assert new.report()["b.weight"]["kept"] == 5


def test_global_scope_refuses_mixed_pooled_rates() -> None:
    """One pooled ranking needs one rate; silently picking one would prune the wrong amount."""
    mask = Mask({"a.weight": torch.ones(4, dtype=torch.bool), "b.weight": torch.ones(4, dtype=torch.bool)})
    scores = {n: torch.rand(4) for n in mask}
    with pytest.raises(ValueError, match="one rate"):
        prune_by_scores(scores, mask, Allocation({"a.weight": 0.2, "b.weight": 0.5}, "global", tuple(mask)))


def _global_recipe(tiny_raw: dict, key: str | None, rate: float = 0.5) -> object:
    tiny_raw["lottery"].update(scope="global", rate=rate, layer_rates={key: 0.1} if key else {})
    return validate(tiny_raw)


@pytest.mark.parametrize("key", ["net.5.weight", "net.5", "last"])
def test_layer_rates_override_is_pruned_layerwise_under_global_scope(tiny_raw: dict, key: str) -> None:
    """An override (by parameter name, module name or ``last``) takes its layer out of the
    global pool: it loses exactly its own rate even when its scores dwarf the others'."""
    model = _tiny_model()
    dense = Mask.ones_like(model)
    assert list(dense) == ["net.1.weight", "net.3.weight", "net.5.weight"]
    allocation = Allocation.of_recipe(_global_recipe(tiny_raw, key), dense)
    assert allocation.rates == {"net.1.weight": 0.5, "net.3.weight": 0.5, "net.5.weight": 0.1}
    pooled = list(allocation.pooled)
    assert pooled == ["net.1.weight", "net.3.weight"]

    g = torch.Generator().manual_seed(1)
    mask = prune_by_scores({n: torch.rand(m.shape, generator=g) for n, m in dense.items()}, dense, Allocation({n: 0.3 for n in dense}))
    scores = _unique_scores(mask, g, offsets={"net.5.weight": 1e6, "net.3.weight": 1e5})
    new = prune_by_scores(scores, mask, allocation)

    last_remaining = int(mask["net.5.weight"].sum())
    assert int(new["net.5.weight"].sum()) == _expected_keep(last_remaining, 0.1)
    pooled_remaining = sum(int(mask[n].sum()) for n in pooled)
    pooled_keep = _expected_keep(pooled_remaining, 0.5)
    assert sum(int(new[n].sum()) for n in pooled) == pooled_keep
    # net.3's scores are all larger than net.1's, so the pooled budget goes to net.3 first.
    assert int(new["net.3.weight"].sum()) == min(int(mask["net.3.weight"].sum()), pooled_keep)


def test_layer_rates_without_override_pools_every_layer(tiny_raw: dict) -> None:
    """Under global scope with no override, every prunable layer is in one pool."""
    dense = Mask.ones_like(_tiny_model())
    allocation = Allocation.of_recipe(_global_recipe(tiny_raw, None), dense)
    assert list(allocation.pooled) == list(dense) and set(allocation.rates.values()) == {0.5}
    tiny_raw["lottery"]["scope"] = "layer"
    assert Allocation.of_recipe(validate(tiny_raw), dense).pooled == ()


def test_layer_rates_unknown_layer_lists_valid_names(tiny_raw: dict) -> None:
    """A typo in layer_rates must fail loudly with the names that would have worked."""
    dense = Mask.ones_like(_tiny_model())
    with pytest.raises(LthError) as err:
        Allocation.of_recipe(_global_recipe(tiny_raw, "fc3"), dense)
    msg = str(err.value)
    assert "fc3" in msg
    for valid in ("net.1.weight", "net.3.weight", "net.5.weight", "last"):
        assert valid in msg


# ---------------------------------------------------------------------- match_density


@SETTINGS
@given(shape_list=shapes, density=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_match_density_copies_per_layer_counts(shape_list, density, seed, ties) -> None:
    """Controls such as random pruning must have exactly the ticket's per-layer sparsity."""
    g = torch.Generator().manual_seed(seed)
    like = _random_mask(shape_list, density, g)
    if ties:
        scores = {n: torch.randint(0, 2, m.shape, generator=g).float() for n, m in like.items()}
    else:
        scores = {n: torch.rand(m.shape, generator=g) for n, m in like.items()}
    new = match_density(scores, like)
    assert list(new) == list(like)
    for n in like:
        assert new[n].shape == like[n].shape
        assert new.report()[n]["kept"] == like.report()[n]["kept"] == int(like[n].sum())
    assert new.density() == like.density()


# ---------------------------------------------------------------- prunable_parameters


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(4, 2, 1, bias=False)
        self.ln = nn.LayerNorm(8)
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
        self.scale = nn.Parameter(torch.ones(3))


def test_prunable_parameters_are_linear_and_conv_weights_only() -> None:
    """Biases, norms, embeddings and free parameters are never pruned (as in the paper)."""
    model = _Mixed()
    params = prunable_parameters(model)
    assert list(params) == ["conv1.weight", "conv1d.weight", "head.1.weight"]
    own = dict(model.named_parameters())
    for n, p in params.items():
        assert p is own[n], "prunable_parameters must return the model's own tensors"
    assert not any("bias" in n for n in params)
    assert list(Mask.ones_like(model)) == list(params)


def test_prunable_parameters_of_bundled_mlp_exclude_biases() -> None:
    model = _tiny_model()
    names = list(prunable_parameters(model))
    assert names == ["net.1.weight", "net.3.weight", "net.5.weight"]
    biases = [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert biases and not set(biases) & set(names)


def test_prunable_parameter_names_override() -> None:
    """A model may choose its prunable weights itself."""

    class Custom(_Mixed):
        def prunable_parameter_names(self) -> list[str]:
            return ["head.1.weight"]

    assert list(prunable_parameters(Custom())) == ["head.1.weight"]


# -------------------------------------------------------------------- MaskEnforcer


def _sparse_mask(model: nn.Module, rate: float = 0.7, seed: int = 0) -> Mask:
    g = torch.Generator().manual_seed(seed)
    dense = Mask.ones_like(model)
    return prune_by_scores({n: torch.rand(m.shape, generator=g) for n, m in dense.items()}, dense, Allocation({n: rate for n in dense}))


def test_mask_enforcer_binds_the_models_own_tensors() -> None:
    """Masking is in place: the enforcer holds references to the model's parameters (same
    storage), never a copy of the model, and zeroing keeps the same storage."""
    model = _tiny_model()
    mask = _sparse_mask(model)
    # one fully dense layer: still bound, so a mask may tighten during training (set_mask)
    mask = Mask({**dict(mask.items()), "net.5.weight": torch.ones_like(mask["net.5.weight"])})
    own = dict(model.named_parameters())
    ptrs = {n: p.data_ptr() for n, p in own.items()}
    layers = ("net.1.weight", "net.3.weight", "net.5.weight")

    enforcer = MaskEnforcer(model, mask)

    assert [id(p) for p in enforcer.bound.params] == [id(own[n]) for n in layers]
    for p, n in zip(enforcer.bound.params, layers):
        assert p.data_ptr() == own[n].data_ptr()
    model_ptrs = set(ptrs.values())
    for m in enforcer.bound.masks:  # the only other tensors it holds: 0/1 masks, not weights
        assert m.data_ptr() not in model_ptrs
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    held = sum(t.numel() for t in enforcer.bound.params)
    assert held == sum(int(mask[n].numel()) for n in layers)

    enforcer.enforce()
    for n, p in own.items():
        assert p.data_ptr() == ptrs[n], f"{n} was replaced instead of masked in place"
    for n, m in mask.items():
        assert bool((own[n].detach()[~m] == 0).all())
        assert bool((own[n].detach()[m] != 0).all())  # Gaussian init: kept weights untouched

    # Tightening the mask in place: the bound tensors stay the model's, newly pruned go to 0.
    tighter = _sparse_mask(model, rate=0.5, seed=1)
    tighter = Mask({n: tighter[n] & mask[n] for n in mask})
    enforcer.set_mask(tighter)
    for n, m in tighter.items():
        assert own[n].data_ptr() == ptrs[n]
        assert bool((own[n].detach()[~m] == 0).all())
        assert bool((own[n].detach()[m] != 0).all())


# ------------------------------------------------------- training invariant (Lightning)


class MaskChecker(pl.Callback):
    """Inspects the weights and the optimiser state after every training step."""

    def __init__(self, mask: Mask):
        self.mask = mask
        self.steps: list[int] = []
        self.state_keys: set[str] = set()
        self.failures: list[str] = []
        self.bound_is_own = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        model = pl_module.model
        params = dict(model.named_parameters())
        opt = trainer.optimizers[0]
        step = trainer.global_step
        self.steps.append(step)
        for n, m in self.mask.items():
            p = params[n].detach()
            if not bool((p[~m] == 0).all()):
                self.failures.append(f"step {step}: {n} has {int((p[~m] != 0).sum())} revived weights")
            for key, value in opt.state[params[n]].items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    self.state_keys.add(key)
                    if not bool((value[~m] == 0).all()):
                        self.failures.append(f"step {step}: optimiser {key} of pruned {n} is nonzero")
        own = {id(p): p.data_ptr() for p in model.parameters()}
        enforcer = pl_module.enforcer
        if enforcer is None or any(own.get(id(p)) != p.data_ptr() for p in enforcer.bound.params):
            self.bound_is_own = False


OPTIMIZERS = {
    "sgd_momentum_nesterov_wd": ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, {"momentum_buffer"}),
    "sgd_momentum": ({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}, {"momentum_buffer"}),
    "adam_wd": ({"name": "adam", "lr": 3e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 1e-3}, {"exp_avg", "exp_avg_sq"}),
    "adamw_wd": ({"name": "adamw", "lr": 3e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 5e-2}, {"exp_avg", "exp_avg_sq"}),
}


@pytest.fixture(scope="module")
def digits_data() -> DataModule:
    return _digits_module()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_after_every_step(opt_name: str, digits_data: DataModule, tmp_path: Path) -> None:
    """The core lottery invariant: momentum, Adam moments and weight decay never revive a
    pruned weight, at any step, and the optimiser never accumulates state for it."""
    optimizer, state_keys = OPTIMIZERS[opt_name]
    model = _tiny_model(seed=3)
    mask = _sparse_mask(model, rate=0.7, seed=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    checker = MaskChecker(mask)
    module = LotteryModule(model, mask, optimizer, digits_data.num_classes)
    max_steps = 25
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[checker], limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=digits_data.train_loader(seed=0))

    assert checker.steps == list(range(1, max_steps + 1)), "the check must run after every step"
    assert checker.failures == []
    assert state_keys <= checker.state_keys, f"optimiser state {state_keys} was never inspected"
    assert checker.bound_is_own
    params = dict(model.named_parameters())
    for n, m in mask.items():
        w = params[n].detach()
        assert bool((w[~m] == 0).all())
        assert not torch.equal(w[m], before[n][m]), f"{n}: kept weights did not train"
    # biases are never masked: they train freely (the output biases start at 0 and move)
    assert bool((params["net.5.bias"].detach() != 0).all())
    assert not any(p is params[n] for p in module.enforcer.bound.params for n in params if n.endswith("bias"))
    # after fit the hooks are gone: the model trains freely again if used outside the lottery
    assert module.enforcer._handles == []


def test_lottery_keeps_pruned_weights_zero_in_every_round(tiny_raw: dict, pm, tmp_path: Path) -> None:
    """Through the real lottery (recipe -> run_lottery -> train), with SGD + nesterov
    momentum + weight decay: every step of every round keeps pruned weights and their
    momentum at zero, masks only shrink, and biases are never in a mask."""
    tiny_raw["optimizer"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}
    tiny_raw["trainer"]["max_steps"] = 30
    tiny_raw["trainer"]["val_check_interval"] = 15
    checkers: list[MaskChecker] = []

    class CheckerPlugin:
        @hookimpl
        def round_callbacks(self, context):
            checker = MaskChecker(context.mask)
            checkers.append(checker)
            return [checker]

    pm.register(CheckerPlugin(), name="test-mask-checker")
    run_lottery(validate(tiny_raw), tmp_path, say=lambda _: None, pm=pm)

    assert len(checkers) == 3  # round 0 (dense), round 1, round 2
    for checker in checkers:
        assert checker.steps == list(range(1, 31))
        assert checker.failures == []
        assert "momentum_buffer" in checker.state_keys
        assert checker.bound_is_own
    masks = [load_ticket(tmp_path / f"round_{k}").mask for k in range(3)]
    for prev, cur in zip(masks, masks[1:]):
        for n in prev:
            assert not bool((cur[n] & ~prev[n]).any()), f"{n}: a weight pruned earlier came back"
        assert cur.kept() < prev.kept()
    for k, mask in enumerate(masks):
        assert not any(n.endswith("bias") for n in mask)
        final = load_ticket(tmp_path / f"round_{k}").final
        for n, m in mask.items():
            assert bool((final[n][~m] == 0).all())
        assert bool((final["net.5.bias"] != 0).all()), "biases must train in every round"
