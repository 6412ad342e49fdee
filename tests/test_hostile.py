"""Hostile and mistaken input: refused with one line, and nothing of it ever runs."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lth_core import hookimpl
from lth_core.errors import LthError
from lth_core.lottery import run_lottery
from lth_core.masks import Mask
from lth_core.plugins import get_registry
from lth_core.recipes import check_against_plugins, validate
from lth_core.tickets import load_ticket

MARKER = "lth-payload-ran"


class Payload:
    """Unpickling this writes a marker file: proof that a loader executed pickle code."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        return (open, (f"{self.folder}/{MARKER}", "w"))


class BadMasks:
    """A throwaway plugin whose callback sets a mask chosen by the test."""

    def __init__(self, make):
        self.make = make

    @hookimpl
    def register_callbacks(self, register):
        outer = self

        class SetMask(pl.Callback):
            def __init__(self, context):
                self.context = context

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if module.step == 5:
                    module.set_mask(outer.make(module.mask))

        register("bad_mask", lambda context: SetMask(context))


def revive(mask: Mask) -> Mask:
    first = next(iter(mask))
    return Mask({**dict(mask.items()), first: torch.ones_like(mask[first])})


def wrong_shape(mask: Mask) -> Mask:
    first = next(iter(mask))
    return Mask({**dict(mask.items()), first: mask[first][:, :-1].clone()})


def wrong_layers(mask: Mask) -> Mask:
    return Mask({k: v for k, v in list(mask.items())[1:]})


@pytest.mark.parametrize("make,message", [
    (revive, "revives .* pruned weights of net.1.weight; masks may only tighten"),
    (wrong_shape, r"whose net.1.weight is torch.bool \(64, 63\); it must be torch.bool \(64, 64\)"),
    (wrong_layers, "set a mask for layers"),
    (lambda mask: {n: m for n, m in mask.items()}, "set a mask of type dict"),
])
def test_a_callback_mask_that_does_not_fit_is_refused(tiny_raw, tmp_path, pm, make, message):
    plugin = BadMasks(make)
    pm.register(plugin, name="bad-masks")
    try:
        tiny_raw["lottery"].update(rounds=1, rate=0.5)
        tiny_raw["callbacks"] = ["bad_mask"]
        tiny_raw["trainer"].update(max_steps=10, val_check_interval=5)
        # round 0 is dense (nothing to revive); round 1 trains a sparse mask, where reviving is caught
        with pytest.raises(LthError, match=message) as caught:
            run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(plugin)
    assert str(caught.value).startswith("callback 'bad_mask' (plugin 'bad-masks') failed in round ")


class Raises:
    """A throwaway plugin whose round callback has a bug (it divides by zero at step 3)."""

    @hookimpl
    def round_callbacks(self, context):
        class Buggy(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if module.step == 3:
                    1 / 0

        return [Buggy()]


def test_a_plugin_callback_that_raises_is_named(tiny_raw, tmp_path, pm):
    plugin = Raises()
    pm.register(plugin, name="buggy-plugin")
    try:
        with pytest.raises(LthError, match=r"^round_callbacks of plugin 'buggy-plugin' failed in round 0 \[ticket\]: "
                                           r"ZeroDivisionError: division by zero$"):
            run_lottery(validate(tiny_raw), tmp_path, say=lambda s: None, pm=pm)
    finally:
        pm.unregister(plugin)
    assert not (tmp_path / "round_0" / "ticket.json").exists()


def test_a_pickle_payload_in_a_ticket_never_runs(tiny_raw, tmp_path, pm):
    """A ticket whose tensor file is a pickle: refused by name, and the payload never executes."""
    tiny_raw["lottery"]["rounds"] = 0
    run_lottery(validate(tiny_raw), tmp_path / "run", say=lambda s: None, pm=pm)
    folder = tmp_path / "run" / "round_0"
    with open(folder / "init.safetensors", "wb") as f:
        pickle.dump(Payload(tmp_path), f)
    torch.save({"w": Payload(tmp_path)}, folder / "final.safetensors", _use_new_zipfile_serialization=True)
    with pytest.raises(LthError, match="round_0"):
        load_ticket(folder)
    tiny_raw["ticket"] = str(folder)
    recipe = tmp_path / "transfer.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw))
    proc = subprocess.run([sys.executable, "-m", "lth_core.cli", "run", str(recipe), "--out", str(tmp_path / "t")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("lth: error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / MARKER).exists(), "unpickling ran the payload"


@pytest.mark.parametrize("section,key,value,kind", [
    ("lottery", "criterion", "os.system", "criterion"),
    ("lottery", "rewind", "subprocess:call", "rewind policy"),
    ("model", "name", "torch.nn.Linear", "model"),
    ("data", "name", "builtins.eval", "data set"),
])
def test_recipes_name_registered_plugins_only_never_import_paths(tiny_raw, pm, section, key, value, kind):
    tiny_raw[section][key] = value
    with pytest.raises(LthError, match=rf"unknown {kind} '{value}'; installed: "):
        check_against_plugins(validate(tiny_raw), get_registry(pm))
