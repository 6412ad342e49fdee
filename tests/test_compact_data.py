"""The data is held once, as compactly as its source, and every batch is what it was (issue 22, item 3).

Fashion-MNIST, MNIST and CIFAR-10 are bytes: their bundles keep ``uint8`` images and a
:class:`lth_core.Normalization` the loaders apply per batch. These tests compare, bit for
bit, what a model sees now with what the float32 path gave (the whole split standardised
at load, then copied per split and gathered per batch), on real data: Fashion-MNIST where
Debian's package is installed, and scikit-learn's digits stored as bytes (0..16) through a
throwaway data-set plugin, whose lotteries must equal the float digits' ones ticket for
ticket. Memory facts are structural (dtypes, shared storage), not measured sizes.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

import lth_datasets
from conftest import FASHION_SUBSET, FULL_FASHION, registered
from lth_core import DataBundle, Normalization, hookimpl
from lth_core.config import validate
from lth_core.data.loaders import DataModule, StepChunks, TensorLoader
from lth_core.errors import PluginError
from lth_core.lottery.rounds import run_lottery
from lth_core.lottery.run import load_data
from lth_core.lottery.trials import run_experiment
from lth_core.plugin_api.registry import get_registry
from lth_core.tickets.ticket import load_ticket

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 values as their bit patterns: equal means equal bit for bit (0.0 vs -0.0 too)."""
    return t.contiguous().view(torch.int32)


def old_float_path(images: torch.Tensor, scale: float, dims: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What lth did before: the whole training split to float32 and standardised at load."""
    x = images.float() / scale
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return (x - mean) / std, mean, std


def old_batches(x: torch.Tensor, y: torch.Tensor, seed: int, n_val: int, batch: int, order_seed: int) -> dict:
    """The old DataModule's splits (gathered copies) and loaders over them."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return {"train": TensorLoader(x[train], y[train], batch, shuffle=True, seed=order_seed, drop_last=True),
            "val": TensorLoader(x[val], y[val], 500), "train_x": x[train], "train_y": y[train]}


def assert_same_batches(new, old, count: int) -> None:
    for (xa, ya), (xb, yb), _ in zip(new, old, range(count)):
        assert xa.dtype == torch.float32 and torch.equal(bits(xa), bits(xb)) and torch.equal(ya, yb)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> DataBundle:
    root = tmp_path_factory.mktemp("data")  # all of Fashion-MNIST where Debian's package is, else the tests' subset
    assert lth_datasets.prepare_debian_fashion_mnist(DEBIAN_FASHION.parent if FULL_FASHION else FASHION_SUBSET, root)
    return lth_datasets.fashion_mnist(str(root), download=False), root


def test_fashion_mnist_is_held_as_bytes_and_read_as_torchvision_reads_it(fashion) -> None:
    import torchvision.datasets as tvd

    bundle, root = fashion
    assert bundle.train_x.dtype == torch.uint8 and bundle.test_x.dtype == torch.uint8
    assert bundle.train_x.untyped_storage().nbytes() == bundle.train_x.shape[0] * 28 * 28  # the images and nothing else
    train, test = tvd.FashionMNIST(str(root), train=True), tvd.FashionMNIST(str(root), train=False)
    assert torch.equal(bundle.train_x[:, 0], train.data) and torch.equal(bundle.test_x[:, 0], test.data)
    assert torch.equal(bundle.train_y, train.targets) and torch.equal(bundle.test_y, test.targets)


def test_fashion_mnist_batches_are_bit_for_bit_the_float_path_s(fashion) -> None:
    """The statistics, the whole splits and every kind of batch (training, chunks of
    steps, evaluation, a criterion's sample) equal the old float32 path's."""
    bundle, _ = fashion
    old_train, mean, std = old_float_path(bundle.train_x, 255.0, (0, 1, 2, 3))
    old_test = (bundle.test_x.float() / 255.0 - mean) / std
    assert bundle.normalization == Normalization(255.0, (mean.item(),), (std.item(),))
    assert torch.equal(bits(bundle.normalization.apply(bundle.train_x)), bits(old_train))
    data = DataModule(bundle, 128, 500, 5000, seed=3)
    old = old_batches(old_train, bundle.train_y, 3, 5000, 128, 3)
    assert_same_batches(data.train_loader(3), old["train"], 20)
    assert_same_batches(StepChunks(data.train_loader(3), 420, 560, 50), StepChunks(old["train"], 420, 560, 50), 3)
    assert_same_batches(data.eval_loaders()[0], old["val"], 10)
    assert torch.equal(bits(data.test_x), bits(old_test)) and torch.equal(data.test_y, bundle.test_y)
    x, y = data.sample_batch(64, seed=5)
    idx = torch.randperm(bundle.train_x.shape[0] - 5000, generator=torch.Generator().manual_seed(5))[:64]
    assert torch.equal(bits(x), bits(old["train_x"][idx])) and torch.equal(y, old["train_y"][idx])


def test_per_channel_normalisation_of_channels_last_bytes_is_the_float_path_s() -> None:
    """CIFAR-10's layout (N, H, W, C bytes seen channels first): the same statistics, layout
    and values as standardising a float32 copy per channel. The bytes are made up here (no
    CIFAR-10 offline); the arithmetic is what is compared."""
    raw = torch.randint(0, 256, (600, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = raw.permute(0, 3, 1, 2)
    old, mean, std = old_float_path(images, 255.0, (0, 2, 3))
    norm = Normalization.of(images, 255.0, per_channel=True)
    assert norm.mean == tuple(mean.flatten().tolist()) and norm.std == tuple(std.flatten().tolist())
    idx = torch.randperm(600)[:60]
    new = norm.apply(images[idx])
    assert new.stride() == old[idx].stride() and torch.equal(bits(new), bits(old[idx]))


def digits_as_bytes() -> DataBundle:
    """scikit-learn's digits (integers 0..16) kept as bytes, split as ``digits`` splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.uint8).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(torch.arange(len(y)).numpy(), test_size=0.2, random_state=0, stratify=d.target)
    return DataBundle(x[tr], y[tr], x[te], y[te], 10, "digits_bytes", Normalization.of(x[tr], 16.0))


class BytesDigits:
    @hookimpl
    def register_datasets(self, register):
        register("digits_bytes", digits_as_bytes)


def test_digits_as_bytes_are_the_float_digits() -> None:
    floats, compact = lth_datasets.digits(), digits_as_bytes()
    assert torch.equal(bits(compact.normalization.apply(compact.train_x)), bits(floats.train_x))
    assert torch.equal(bits(compact.normalization.apply(compact.test_x)), bits(floats.test_x))


def same_tickets(a: Path, b: Path, rounds: int, controls: tuple = ()) -> None:
    """Every round's ticket (and from round 1 its controls') equal bit for bit."""
    for k in range(rounds + 1):
        for run in ("", *(controls if k else ())):
            ta, tb = load_ticket(a / f"round_{k}" / run), load_ticket(b / f"round_{k}" / run)
            assert all(torch.equal(ta.final[n], tb.final[n]) for n in ta.final), (k, run)
            assert all(torch.equal(m, tb.mask[n]) for n, m in ta.mask.items()), (k, run)


def test_a_lottery_on_bytes_equals_the_lottery_on_floats(tiny_raw, tmp_path, pm) -> None:
    """Training chunks, one step per call (a control with a callback would force it; here
    steps_per_call: 1), evaluation, the probe and the random-reinit control: every ticket
    equal bit for bit."""
    tiny_raw["controls"] = ["random_reinit"]
    with registered(pm, BytesDigits(), "bytes-digits"):
        for name in ("digits", "digits_bytes"):
            for chunk in (50, 1):
                tiny_raw["data"]["name"], tiny_raw["steps_per_call"] = name, chunk
                run_lottery(validate(tiny_raw), tmp_path / f"{name}-{chunk}", say=lambda s: None, pm=pm)
    for chunk in (50, 1):
        same_tickets(tmp_path / f"digits-{chunk}", tmp_path / f"digits_bytes-{chunk}", 2, ("control_random_reinit",))


@pytest.mark.parametrize("mode", [True, "batched"], ids=["stacked", "batched"])
def test_stacked_trials_on_bytes_equal_those_on_floats(mode, tiny_raw, tmp_path, pm) -> None:
    """Stacked trials gather every trial's chunk into one stacked batch, which stays bytes
    until the module normalises it step by step."""
    tiny_raw.update(trials=2, vectorize_trials=mode)
    tiny_raw["lottery"]["rounds"] = 1
    with registered(pm, BytesDigits(), "bytes-digits"):
        for name in ("digits", "digits_bytes"):
            tiny_raw["data"]["name"] = name
            run_experiment(validate(tiny_raw), tmp_path / name, say=lambda s: None, pm=pm)
    for trial in (0, 1):
        same_tickets(tmp_path / "digits" / f"trial_{trial}", tmp_path / "digits_bytes" / f"trial_{trial}", 1)


def test_the_splits_are_rows_of_one_bundle_shared_while_in_use(tiny_raw, pm) -> None:
    """No split is a copy, and a second run of the same data set while the first still
    holds it (stacked trials, the trials of one ``lth run``) gets the same bundle."""
    with registered(pm, BytesDigits(), "bytes-digits"):
        tiny_raw["data"]["name"] = "digits_bytes"
        first = load_data(validate(tiny_raw), get_registry(pm))
        tiny_raw["seed"] = 1
        second = load_data(validate(tiny_raw), get_registry(pm))
        assert second.bundle is first.bundle
        loaders = [*first.eval_loaders(), first.train_loader(0)]
        assert all(ld.x.data_ptr() in (first.bundle.train_x.data_ptr(), first.bundle.test_x.data_ptr()) for ld in loaders)
        assert not torch.equal(first.rows["val"], second.rows["val"])  # own seed, own split
        assert not first.eval_loaders()[0].same_examples(second.eval_loaders()[0])
        assert first.eval_loaders()[1].same_examples(second.eval_loaders()[1])  # the one test set
        del first, second, loaders
        gc.collect()
        third = load_data(validate(tiny_raw), get_registry(pm))
        assert third.bundle.train_x.dtype == torch.uint8


def test_with_train_keeps_rows_not_copies() -> None:
    data = DataModule(lth_datasets.digits(), 32, 500, 0.1, seed=0)
    keep = data.train_y < 5
    part = data.with_train(keep)
    assert part.examples("train") == int(keep.sum()) and torch.equal(part.train_y, data.train_y[keep])
    assert torch.equal(part.train_x, data.train_x[keep]) and torch.equal(part.val_x, data.val_x)
    assert part.stored is data.stored


@pytest.mark.parametrize("normalization, expected", [
    (None, "returned train inputs as torch.uint8 and labels as torch.int64, expected torch.float32 inputs and torch.int64 "
           "labels (or torch.uint8 inputs with a normalization)"),
    (Normalization(16.0, (0.3,), (0.0,)), "returned a normalization with scale 16.0 and std (0.0,), expected positive values"),
    (Normalization(16.0, (0.3, 0.1), (1.0, 1.0)), "returned a normalization with 2 mean(s) and 2 std(s) for inputs with 1 channel(s)"),
    (Normalization(16.0, (float("nan"),), (1.0,)), "returned a normalization with a non-finite or non-numeric value"),
    ("z-score", "returned normalization as str, expected an lth_core.Normalization or None"),
], ids=["bytes_without", "zero_std", "channels", "nan", "not_a_normalization"])
def test_a_bad_normalization_is_refused_naming_the_plugin(normalization, expected) -> None:
    bundle = digits_as_bytes()
    bundle.normalization = normalization
    with pytest.raises(PluginError) as caught:
        bundle.check("data set 'digits_bytes' (plugin 'x')")
    assert expected in str(caught.value)


def test_a_tensor_is_copied_to_a_device_once_and_the_copy_goes_with_it() -> None:
    """What :meth:`DataModule.place` uses (on the meta device, as no GPU is here): stacked
    trials placing one shared bundle make one device copy, freed when the bundle is."""
    from lth_core.data import loaders

    t = torch.arange(12.0)
    first = loaders._on(t, torch.device("meta"))
    assert first.device.type == "meta" and loaders._on(t, torch.device("meta")) is first
    key = (id(t), "meta")
    assert key in loaders._DEVICE_COPIES
    del t, first
    gc.collect()
    assert key not in loaders._DEVICE_COPIES
