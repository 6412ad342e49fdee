"""Hostile and mistaken input: refused with one line, and nothing of it ever runs."""

from __future__ import annotations

import copy
import json
import pickle
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import yaml

from lth_core import hookimpl
from lth_core.errors import LthError
from lth_core.files import json_digest, sha256_file
from lth_core.lottery.rounds import run_lottery
from lth_core import Mask
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.plugin_api.options import check_against_plugins
from lth_core.tickets.ticket import FILES, SELF, is_ticket, load_ticket

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
    proc = subprocess.run([sys.executable, "-m", "lth_core.commands.cli", "run", str(recipe), "--out", str(tmp_path / "t")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("lth: error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / MARKER).exists(), "unpickling ran the payload"


def _rewrite_checksums(folder, which: str) -> None:
    """Make ticket.json vouch for the current ``which`` file (its sha256 and ticket.json's
    own checksum recomputed), as someone who knows the format would."""
    meta = json.loads((folder / "ticket.json").read_text())
    meta["sha256"][which] = sha256_file(folder / f"{which}.safetensors")
    meta = {k: v for k, v in meta.items() if k != SELF}
    meta[SELF] = json_digest(meta)
    (folder / "ticket.json").write_text(json.dumps(meta))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lth_core.commands.cli", *args], capture_output=True, text=True)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line of a refused command, after checking it is exit 2 without a traceback."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lth: error: "), proc.stderr[-2000:]
    return last


@pytest.mark.parametrize("which", FILES)
def test_a_pickle_vouched_for_by_ticket_json_is_still_refused(tiny_raw, tmp_path, pm, which):
    """Checksums that match the planted pickle: the safetensors parser alone refuses it,
    in load_ticket and in a rerun that would reuse the round; the payload never runs."""
    tiny_raw["lottery"]["rounds"] = 0
    run_lottery(validate(tiny_raw), tmp_path / "run", say=lambda s: None, pm=pm)
    folder = tmp_path / "run" / "round_0"
    path = folder / f"{which}.safetensors"
    torch.save({"w": Payload(tmp_path)}, path)
    _rewrite_checksums(folder, which)
    with pytest.raises(LthError, match=f"^{re.escape(str(path))} is not a readable safetensors file \\(Error while deserializing header"):
        load_ticket(folder)
    with pytest.raises(LthError, match=f"^{re.escape(str(path))} is not a readable safetensors file .*; delete {re.escape(str(folder))}/ticket.json and rerun"):
        run_lottery(validate(tiny_raw), tmp_path / "run", say=lambda s: None, pm=pm)
    assert not (tmp_path / MARKER).exists(), "unpickling ran the payload"
    assert is_ticket(folder) and not (tmp_path / "run" / "round_1").exists(), "nothing was retrained over the damaged round"


def test_ticket_transfer_of_another_architecture_is_one_line_from_the_cli(tiny_raw, tmp_path, pm):
    """``ticket:`` naming a ticket of mlp 64-32 in a recipe of mlp 48-32: exit 2, one line,
    and no run folder is made."""
    source_raw = copy.deepcopy(tiny_raw)
    source_raw["lottery"]["rounds"] = 0
    run_lottery(validate(source_raw), tmp_path / "source", say=lambda s: None, pm=pm)
    tiny_raw["ticket"] = str(tmp_path / "source" / "round_0")
    tiny_raw["model"]["hidden"] = [48, 32]
    recipe = tmp_path / "transfer.yaml"
    recipe.write_text(yaml.safe_dump(tiny_raw))
    line = _one_line_error(_cli("run", str(recipe), "--out", str(tmp_path / "t")))
    assert line == (f"lth: error: ticket {tmp_path / 'source' / 'round_0'} does not fit this model: "
                    "net.1.weight is (64, 64), model has (48, 64)")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("content,what", [(b"[]", "a JSON list, not the object lth writes"), (b"\xff{}", "not UTF-8 text (byte 0)")])
def test_a_damaged_summary_json_is_one_line_in_lth_report(tmp_path, content, what):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_bytes(content)
    line = _one_line_error(_cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "r")))
    assert line == f"lth: error: {tmp_path / 'run' / 'summary.json'} is corrupt: {what}"


@pytest.mark.parametrize("name,content,what", [
    ("curves.json", b'{"step": 20}', "a JSON dict, not the list lth writes"),
    ("ticket.json", b"[]", "a JSON list, not the object lth writes"),
])
def test_a_damaged_round_file_is_one_line_in_lth_report(tiny_raw, tmp_path, pm, name, content, what):
    """lth report reads each round's curve and sparsity: damage names the file."""
    tiny_raw["lottery"]["rounds"] = 1
    run_lottery(validate(tiny_raw), tmp_path / "run", say=lambda s: None, pm=pm)
    (tmp_path / "run" / "round_1" / name).write_bytes(content)
    line = _one_line_error(_cli("report", str(tmp_path / "run"), "--out", str(tmp_path / "r")))
    assert line == f"lth: error: {tmp_path / 'run' / 'round_1' / name} is corrupt: {what}"


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
