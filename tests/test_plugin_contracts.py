"""The core checks every plugin result and names the plugin (issue 9).

Each test registers a throwaway plugin on the ``pm`` fixture that returns one kind of
garbage (a data set, a model, an initialiser, a callback, an event hook), runs a real
lottery on scikit-learn's digits and asserts the one-line ``PluginError`` that names the
registered name and the plugin, says what came back and what was expected, and that
finished rounds keep their tickets. The data-root tests load the real torchvision
data sets from missing, empty and garbage folders, without network.
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pluggy
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

import lth_datasets
from lth_core import hookimpl
from lth_core import DataBundle
from lth_core.errors import LthError, PluginError
from lth_core.lottery.run import load_data
from lth_core.lottery.rounds import run_lottery
from lth_core import Mask
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.tickets.ticket import is_ticket
from conftest import needs_full_fashion

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
LTH = [str(Path(sys.executable).with_name("lth"))] if Path(sys.executable).with_name("lth").is_file() else [sys.executable, "-m", "lth_core.commands.cli"]


class Registers:
    """A throwaway plugin registering ``obj`` as ``name`` through one registration hook."""

    def __init__(self, hook: str, name: str, obj: Any) -> None:
        self.hook, self.name, self.obj = hook, name, obj

    def _register(self, hook: str, register: Callable) -> None:
        if hook == self.hook:
            register(self.name, self.obj)

    @hookimpl
    def register_datasets(self, register: Callable) -> None:
        self._register("register_datasets", register)

    @hookimpl
    def register_models(self, register: Callable) -> None:
        self._register("register_models", register)

    @hookimpl
    def register_initializers(self, register: Callable) -> None:
        self._register("register_initializers", register)

    @hookimpl
    def register_callbacks(self, register: Callable) -> None:
        self._register("register_callbacks", register)

    @hookimpl
    def register_criteria(self, register: Callable) -> None:
        self._register("register_criteria", register)


def short(raw: dict, rounds: int = 1, steps: int = 4) -> dict:
    """The tiny recipe cut to ``rounds`` rounds of ``steps`` steps: enough to reach every check."""
    raw["trainer"].update(max_steps=steps, val_check_interval=max(1, steps // 2))
    raw["lottery"]["rounds"] = rounds
    return raw


def plugin_error(pm: pluggy.PluginManager, plugin: Any, name: str, raw: dict, out: Path) -> str:
    """Run ``raw`` with ``plugin`` registered as ``name``; return the one-line PluginError it must raise."""
    pm.register(plugin, name=name)
    try:
        with pytest.raises(PluginError) as caught:
            run_lottery(validate(raw), out, say=lambda _: None, pm=pm)
    finally:
        pm.unregister(plugin)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def digits() -> DataBundle:
    """The real digits bundle, as the bundled plugin loads it."""
    return lth_datasets.digits()


# ----------------------------------------------------------------------- data sets


def _replace(**changes: Any) -> Callable[[], Any]:
    def factory() -> DataBundle:
        b = digits()
        for key, make in changes.items():
            setattr(b, key, make(getattr(b, key)))
        return b
    return factory


def _nan_test_x(x: Tensor) -> Tensor:
    x = x.clone()
    x[3, 0, 2, 2] = float("nan")
    return x


def _label(index: int, value: int) -> Callable[[Tensor], Tensor]:
    def change(y: Tensor) -> Tensor:
        y = y.clone()
        y[index] = value
        return y
    return change


def _raises_loading() -> DataBundle:
    raise FileNotFoundError("/srv/data/digits.npz")


@pytest.mark.parametrize("factory, expected", [
    (lambda: {"train_x": digits().train_x}, "returned dict, expected an lth_core.DataBundle"),
    (lambda: None, "returned NoneType, expected an lth_core.DataBundle"),
    (_replace(train_y=_label(0, 10)), "returned train labels 0..10, expected 0..9 (num_classes=10)"),
    (_replace(test_y=_label(5, -1)), "returned test labels -1..9, expected 0..9"),
    (_replace(train_y=lambda y: y[:-1]), "returned a misaligned train split: train_x shaped (1437, 1, 8, 8), train_y shaped (1436,)"),
    (_replace(train_x=lambda x: (x * 16).to(torch.uint8)), "returned train inputs as torch.uint8 and labels as torch.int64, "
                                                            "expected torch.float32 inputs and torch.int64 labels"),
    (_replace(test_y=lambda y: y.float()), "returned test inputs as torch.float32 and labels as torch.float32"),
    (_replace(test_x=_nan_test_x), "returned 1 NaN or infinite values in test_x, expected finite inputs"),
    (_replace(test_x=lambda x: x[:0], test_y=lambda y: y[:0]), "returned an empty test split (test_x shaped (0, 1, 8, 8))"),
    (_replace(train_x=lambda x: x.numpy()), "returned train_x as ndarray, expected a torch.Tensor"),
    (_replace(num_classes=lambda n: "10"), "returned num_classes='10', expected a positive int"),
    (_replace(test_x=lambda x: x[:, :, :, :7]), "returned test inputs shaped (1, 8, 7) per example, expected the train inputs' (1, 8, 8)"),
    (_raises_loading, "raised FileNotFoundError: /srv/data/digits.npz"),
], ids=["dict", "none", "label_too_high", "label_negative", "misaligned", "uint8_inputs", "float_labels", "nan_inputs",
        "empty_test", "numpy", "num_classes_str", "test_shape", "raises"])
def test_a_bad_data_set_is_named_with_what_it_returned(factory, expected, pm, tiny_raw, tmp_path) -> None:
    """Whatever a data set returns is checked before a model sees it; nothing is written."""
    tiny_raw["data"]["name"] = "bad_data"
    message = plugin_error(pm, Registers("register_datasets", "bad_data", factory), "bad-data-plugin", short(tiny_raw), tmp_path / "run")
    assert message.startswith("data set 'bad_data' (plugin 'bad-data-plugin') "), message
    assert expected in message, message
    assert not (tmp_path / "run").exists()


def test_the_real_digits_pass_the_data_checks(pm, tiny_raw) -> None:
    """The checks refuse garbage, not real data: the bundled digits load through them."""
    data = load_data(validate(tiny_raw), get_registry(pm))
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert data.train_x.shape[0] + data.val_x.shape[0] == 1437 and data.test_x.shape[0] == 360


# -------------------------------------------------------------------------- models


class NoPrunable(nn.Module):
    """A classifier whose only weight is a bare parameter: nothing a lottery can prune."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w


class TupleOut(nn.Module):
    """Returns ``(logits, features)``: not the logits the core trains on."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(x.flatten(1)), x


class NamesUnknown(TupleOut):
    """Claims a prunable weight it does not have."""

    def prunable_parameter_names(self) -> list[str]:
        return ["nope.weight"]


def _nan_weights(input_shape, num_classes) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    return model


def _model_raises(input_shape, num_classes) -> nn.Module:
    raise ValueError("width must be even")


@pytest.mark.parametrize("factory, expected", [
    (lambda input_shape, num_classes: {"fc": nn.Linear(64, num_classes)}, "returned dict, expected an nn.Module"),
    (lambda input_shape, num_classes: NoPrunable(num_classes), "returned a NoPrunable with no prunable weights"),
    (lambda input_shape, num_classes: nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1)),
     "maps a probe batch shaped (2, 1, 8, 8) to torch.float32 (2, 11), expected float logits shaped (2, 10)"),
    (lambda input_shape, num_classes: nn.Sequential(nn.Flatten(), nn.Linear(63, num_classes)),
     "on a probe batch shaped (2, 1, 8, 8) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    (lambda input_shape, num_classes: TupleOut(num_classes), "maps a probe batch shaped (2, 1, 8, 8) to tuple"),
    (lambda input_shape, num_classes: NamesUnknown(num_classes), "prunable_parameter_names() names ['nope.weight']"),
    (_nan_weights, "left 1 NaN or infinite values in 1.weight, expected finite weights"),
    (_model_raises, "raised ValueError: width must be even"),
], ids=["dict", "no_prunable", "wrong_head", "wrong_input", "tuple_out", "unknown_prunable", "nan_weights", "raises"])
def test_a_bad_model_is_named_with_what_it_returned(factory, expected, pm, tiny_raw, tmp_path) -> None:
    """A model is checked once built, on two real inputs, before any folder exists."""
    tiny_raw["model"] = {"name": "bad_model"}
    message = plugin_error(pm, Registers("register_models", "bad_model", factory), "bad-model-plugin", short(tiny_raw), tmp_path / "run")
    assert message.startswith("model 'bad_model' (plugin 'bad-model-plugin')"), message
    assert expected in message, message
    assert not (tmp_path / "run").exists()


def test_the_probe_leaves_the_model_and_random_streams_alone(pm, tiny_raw) -> None:
    """The probe forward runs in eval mode under a forked RNG: θ0, the BatchNorm buffers,
    the train flag and the next random draw are what they would be without it."""
    from lth_core.plugin_api.contracts import probe

    data = load_data(validate(tiny_raw), get_registry(pm))
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(0.5), nn.Linear(32, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe(model, "model 'x' (plugin 'y')", data)
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(0.5), nn.Linear(32, 10))
    assert torch.equal(after_probe, torch.rand(3))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# -------------------------------------------------------------------- initialisers


def _init_values(make: Callable[[Tensor], Any]) -> Callable:
    def init(model: nn.Module, generator: torch.Generator) -> dict:
        return {"net.1.weight": make(model.get_parameter("net.1.weight").detach().clone())}
    return init


def _nan_value(w: Tensor) -> Tensor:
    w[0, 0] = float("nan")
    return w


def _writes_inf(model: nn.Module, generator: torch.Generator) -> dict:
    with torch.no_grad():
        model.get_parameter("net.3.weight")[1, 1] = float("inf")
    return {}


@pytest.mark.parametrize("init, expected", [
    (_init_values(_nan_value), "returned net.1.weight with 1 NaN or infinite values, expected finite ones"),
    (_init_values(lambda w: w.to(torch.complex64)), "returned net.1.weight as torch.complex64, expected a real floating tensor (the model's torch.float32)"),
    (_init_values(lambda w: w.sign().long()), "returned net.1.weight as torch.int64, expected a real floating tensor"),
    (_init_values(lambda w: w.bool()), "returned net.1.weight as torch.bool, expected a real floating tensor"),
    (_init_values(lambda w: w[:, :63]), "returned net.1.weight with the wrong shape (64, 63), expected (64, 64)"),
    (_writes_inf, "left 1 NaN or infinite values in net.3.weight, expected finite weights"),
    (lambda model, generator: [1, 2], "returned list, expected a dict of parameter name -> tensor"),
], ids=["nan", "complex", "int", "bool", "wrong_shape", "writes_inf", "list"])
def test_a_bad_initialiser_is_named(init, expected, pm, tiny_raw, tmp_path) -> None:
    """An initialiser's values are checked before loading, and the model after it ran."""
    tiny_raw["init"] = "bad_init"
    message = plugin_error(pm, Registers("register_initializers", "bad_init", init), "bad-init-plugin", short(tiny_raw), tmp_path / "run")
    assert message.startswith("initializer 'bad_init' (plugin 'bad-init-plugin') "), message
    assert expected in message, message
    assert not (tmp_path / "run").exists()


def test_an_initialiser_in_another_precision_is_cast(pm, tiny_raw, tmp_path) -> None:
    """float64 values are real numbers of the same kind: accepted, loaded as the model's float32."""
    def halves(model: nn.Module, generator: torch.Generator) -> dict:
        return {"net.1.weight": torch.full(model.get_parameter("net.1.weight").shape, 0.5, dtype=torch.float64)}

    plugin = Registers("register_initializers", "halves", halves)
    pm.register(plugin, name="halves-plugin")
    try:
        tiny_raw["init"] = "halves"
        run_lottery(validate(short(tiny_raw, rounds=0)), tmp_path / "run", say=lambda _: None, pm=pm)
    finally:
        pm.unregister(plugin)
    init = load_file(str(tmp_path / "run" / "round_0" / "init.safetensors"))
    assert init["net.1.weight"].dtype == torch.float32 and bool((init["net.1.weight"] == 0.5).all())


# ------------------------------------------------- a callback that assigns module.mask


class AssignsMask:
    """A throwaway plugin whose callback sets ``module.mask = make(module)`` itself in round
    1, bypassing ``set_mask`` (or, with ``use_set_mask``, through it): at step 2 of 4, or
    with ``at_end`` when training ends (after the last evaluation)."""

    def __init__(self, make: Callable[[Any], Any], use_set_mask: bool = False, at_end: bool = False) -> None:
        self.make, self.use_set_mask, self.at_end = make, use_set_mask, at_end

    def apply(self, module) -> None:
        new = self.make(module)
        if self.use_set_mask:
            module.set_mask(new)
        else:
            module.mask = new

    @hookimpl
    def register_callbacks(self, register: Callable) -> None:
        outer = self

        class Assign(pl.Callback):
            def __init__(self, context) -> None:
                self.context = context

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                if self.context.round == 1 and module.step == 2 and not outer.at_end:
                    outer.apply(module)

            def on_train_end(self, trainer, module) -> None:
                if self.context.round == 1 and outer.at_end:
                    outer.apply(module)

        register("assign_mask", lambda context: Assign(context))


def _halve_first(module) -> Mask:
    """The current mask with the first layer's first half of rows pruned as well."""
    mask = dict(module.mask.items())
    first = next(iter(mask))
    m = mask[first].clone()
    m[: m.shape[0] // 2] = False
    return Mask({**mask, first: m})


def _dense(module) -> Mask:
    return Mask.ones_like(module.model)


def _narrow(module) -> Mask:
    mask = dict(module.mask.items())
    first = next(iter(mask))
    return Mask({**mask, first: mask[first][:, :-1].clone()})


@pytest.mark.parametrize("make, at_end, expected", [
    (_dense, False, r"a callback's mask revives \d+ pruned weights of net.1.weight; masks may only tighten"),
    (_dense, True, r"a callback's mask revives \d+ pruned weights of net.1.weight; masks may only tighten"),
    (_halve_first, False, r"net.1.weight has \d+ nonzero weights where the mask prunes them"),
    (_narrow, True, r"a callback set a mask whose net.1.weight is torch.bool \(64, 63\); it must be torch.bool \(64, 64\)"),
    (lambda module: dict(module.mask.items()), True, "a callback set a mask of type dict"),
    (lambda module: dict(module.mask.items()), False, "a callback set a mask of type dict"),
], ids=["revives", "revives_at_end", "not_zeroed", "wrong_shape_at_end", "dict_at_end", "dict_mid_run"])
def test_a_mask_assigned_past_set_mask_is_refused_at_round_end(make, at_end, expected, pm, tiny_raw, tmp_path) -> None:
    """module.py's set_mask checks never see a mask assigned directly; the ticket is checked
    where it is built (or, when the core trips over that mask mid-run, there), naming the
    callback, and round 0's ticket stays."""
    tiny_raw["callbacks"] = ["assign_mask"]
    message = plugin_error(pm, AssignsMask(make, at_end=at_end), "assign-mask-plugin", short(tiny_raw, rounds=1), tmp_path / "run")
    prefix = "callback 'assign_mask' (plugin 'assign-mask-plugin') broke the mask of round 1 [ticket]: "
    assert message.startswith(prefix), message
    assert re.search(expected, message), message
    assert message.endswith("nothing of this run was saved as a ticket, earlier rounds are kept")
    assert is_ticket(tmp_path / "run" / "round_0") and not is_ticket(tmp_path / "run" / "round_1")


def test_the_same_tightening_through_set_mask_becomes_the_ticket(pm, tiny_raw, tmp_path) -> None:
    """The round-end check accepts what set_mask accepts: the tighter mask is the ticket's,
    and its pruned weights are exactly zero."""
    plugin = AssignsMask(_halve_first, use_set_mask=True)
    pm.register(plugin, name="assign-mask-plugin")
    try:
        tiny_raw["callbacks"] = ["assign_mask"]
        run_lottery(validate(short(tiny_raw, rounds=1)), tmp_path / "run", say=lambda _: None, pm=pm)
    finally:
        pm.unregister(plugin)
    mask = load_file(str(tmp_path / "run" / "round_1" / "mask.safetensors"))
    final = load_file(str(tmp_path / "run" / "round_1" / "final.safetensors"))
    assert not bool(mask["net.1.weight"][:32].any()) and bool(mask["net.1.weight"][32:].any())
    for n, m in mask.items():
        assert bool((final[n][~m] == 0).all()), n


# ------------------------------------------------------- errors raised inside plugins


def _raises_lth(message: str) -> Callable:
    def criterion(model, mask, context):
        raise LthError(message)
    return criterion


@pytest.mark.parametrize("raised, expected", [
    ("needs lottery.criterion_options.batches\n(see the plugin's README)",
     "criterion 'picky' (plugin 'picky-plugin'): needs lottery.criterion_options.batches (see the plugin's README)"),
    ("criterion 'picky' (plugin 'picky-plugin') needs a data-driven round",
     "criterion 'picky' (plugin 'picky-plugin') needs a data-driven round"),
], ids=["prefixed_one_line", "not_double_prefixed"])
def test_an_lth_error_from_a_plugin_names_it_once_on_one_line(raised, expected, pm, tiny_raw, tmp_path) -> None:
    tiny_raw["lottery"]["criterion"] = "picky"
    message = plugin_error(pm, Registers("register_criteria", "picky", _raises_lth(raised)), "picky-plugin", short(tiny_raw), tmp_path / "run")
    assert message == expected
    assert is_ticket(tmp_path / "run" / "round_0") and not (tmp_path / "run" / "round_1").exists()


def _factory_raises(context, level: int = 1):
    raise LthError(f"level must be 1 or 2, got {level}")


@pytest.mark.parametrize("factory, expected", [
    (_factory_raises, "callback 'cb' (plugin 'cb-plugin'): level must be 1 or 2, got 1"),
    (lambda context: 42, "callback 'cb' (plugin 'cb-plugin') returned int, expected a pytorch_lightning.Callback"),
], ids=["raises_lth_error", "not_a_callback"])
def test_a_bad_callback_factory_is_named(factory, expected, pm, tiny_raw, tmp_path) -> None:
    tiny_raw["callbacks"] = ["cb"]
    message = plugin_error(pm, Registers("register_callbacks", "cb", factory), "cb-plugin", short(tiny_raw), tmp_path / "run")
    assert message == expected
    assert not is_ticket(tmp_path / "run" / "round_0")


class BadEvents:
    """A throwaway plugin whose event hook ``hook`` breaks in round ``at``
    (``round_callbacks`` returns a bare callback instead of a list)."""

    def __init__(self, hook: str, at: int) -> None:
        self.hook, self.at = hook, at

    @hookimpl
    def on_round_start(self, context) -> None:
        if self.hook == "on_round_start" and context.round == self.at:
            {}["best_acc"]

    @hookimpl
    def on_round_end(self, context, ticket, metrics) -> None:
        if self.hook == "on_round_end" and context.round == self.at:
            raise LthError(f"cannot post round {context.round}\nserver said no")

    @hookimpl
    def round_callbacks(self, context):
        if self.hook == "round_callbacks" and context.round == self.at:
            return pl.Callback()
        return None


@pytest.mark.parametrize("hook, at, expected, kept", [
    ("on_round_start", 0, "on_round_start of plugin 'events-plugin' raised KeyError: 'best_acc'", []),
    ("on_round_end", 1, "on_round_end of plugin 'events-plugin': cannot post round 1 server said no", [0, 1]),
    ("round_callbacks", 1, "round_callbacks of plugin 'events-plugin' returned Callback, expected a list of pytorch_lightning.Callback or None", [0]),
], ids=["start_raises", "end_raises_lth_error", "bare_callback"])
def test_a_broken_event_hook_is_named(hook, at, expected, kept, pm, tiny_raw, tmp_path) -> None:
    """Event hooks run through call_plugin too; a ticket saved before the hook broke stays."""
    message = plugin_error(pm, BadEvents(hook, at), "events-plugin", short(tiny_raw, rounds=1), tmp_path / "run")
    assert message == expected
    assert [k for k in (0, 1) if is_ticket(tmp_path / "run" / f"round_{k}")] == kept


# ---------------------------------------------------------------- torchvision roots


def _garbage_idx(root: Path) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in lth_datasets.IDX_FILES:
        (raw / f).write_bytes(b"not an IDX file")
    return root


def _garbage_names(root: Path) -> Path:
    root.mkdir()
    (root / "fashion.zip").write_bytes(b"PK\x03\x04 nothing")
    return root


def _empty(root: Path) -> Path:
    root.mkdir()
    return root


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, whatever this machine has: every connection fails as it does offline."""
    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)


def fashion_error(pm, tiny_raw: dict, tmp_path: Path, root: Path, download: bool, name: str = "fashion_mnist") -> str:
    tiny_raw["data"].update(name=name, root=str(root), download=download)
    with pytest.raises(PluginError) as caught:
        run_lottery(validate(short(tiny_raw)), tmp_path / "run", say=lambda _: None, pm=pm)
    assert not (tmp_path / "run").exists()
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("make, why", [
    (lambda root: root, "no such folder and data.download is false"),
    (_empty, "the folder does not hold its files and data.download is false"),
    (_garbage_names, "the folder does not hold its files and data.download is false"),
    (_garbage_idx, "its files are unreadable (AssertionError)"),
], ids=["missing", "empty", "other_files", "garbage_idx"])
def test_a_wrong_data_root_without_download_is_one_line(make, why, pm, tiny_raw, tmp_path) -> None:
    root = make(tmp_path / "data")
    message = fashion_error(pm, tiny_raw, tmp_path, root, download=False)
    assert message.startswith(f"data set 'fashion_mnist' (plugin 'datasets'): FashionMNIST could not be loaded from {root}: {why}; ")
    assert "set data.root to a folder holding torchvision's FashionMNIST/raw/ (the four IDX files)" in message
    assert message.endswith("or run once with network access and data.download: true")
    if DEBIAN_FASHION.is_file():
        assert "leave data.root unset to use Debian's copy in /usr/share/datasets/fashion-mnist" in message


@pytest.mark.parametrize("name, cls, files", [
    ("fashion_mnist", "FashionMNIST", "FashionMNIST/raw/ (the four IDX files)"),
    ("mnist", "MNIST", "MNIST/raw/ (the four IDX files)"),
    ("cifar10", "CIFAR10", "cifar-10-batches-py/"),
])
def test_a_failed_download_is_one_line_and_does_not_suggest_download(name, cls, files, offline, pm, tiny_raw, tmp_path) -> None:
    """download: true (the default) with no network: say the download failed, not "use download=True"."""
    root = tmp_path / "data"
    message = fashion_error(pm, tiny_raw, tmp_path, root, download=True, name=name)
    assert message.startswith(f"data set '{name}' (plugin 'datasets'): {cls} could not be loaded from {root}: "
                              "its files are not there and downloading them failed ("), message
    assert "Network is unreachable" in message
    assert f"set data.root to a folder holding torchvision's {files}" in message
    assert message.endswith("or run once with network access") and "data.download: true" not in message


def test_without_debian_s_copy_the_message_names_the_package(monkeypatch, pm, tiny_raw, tmp_path) -> None:
    monkeypatch.setattr(lth_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    message = fashion_error(pm, tiny_raw, tmp_path, tmp_path / "data", download=False)
    assert ("install Debian's dataset-fashion-mnist package (apt install dataset-fashion-mnist, read from "
            f"{tmp_path / 'no-debian'} when data.root is unset)") in message


def test_the_cli_prints_a_wrong_data_root_on_one_line(tiny_raw, tmp_path) -> None:
    import yaml

    tiny_raw["data"].update(name="fashion_mnist", root=str(tmp_path / "nowhere"), download=False)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(short(tiny_raw)))
    proc = subprocess.run([*LTH, "run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("lth: error:")] == lines[-1:]
    assert lines[-1].startswith(f"lth: error: data set 'fashion_mnist' (plugin 'datasets'): FashionMNIST could not be loaded from {tmp_path / 'nowhere'}: ")


@needs_full_fashion
def test_debian_s_fashion_mnist_loads_when_no_root_is_given(monkeypatch, pm, tiny_raw, tmp_path) -> None:
    """No data.root and no download: Debian's files are unpacked under $LTH_DATA and pass every check."""
    monkeypatch.setenv("LTH_DATA", str(tmp_path / "cache"))
    tiny_raw["data"].update(name="fashion_mnist", download=False)
    data = load_data(validate(tiny_raw), get_registry(pm))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.bundle.train_x.shape[0] == 60000 and data.test_x.shape[0] == 10000
    assert set(data.test_y.unique().tolist()) == set(range(10))
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
