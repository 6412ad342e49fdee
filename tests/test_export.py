"""`lth export`: dead units removed exactly; the file runs with torch alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from lth_core.commands import cli
from lth_core.errors import LthError
from lth_core.files import json_digest, sha256_file
from lth_core.commands.exporting import SparseLinear, compact, export_ticket, sparsify
from lth_core.lottery.run import build_model, load_data
from lth_core.lottery.rounds import run_lottery
from lth_core import Mask, apply_mask
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate
from lth_core.tickets.ticket import SELF, load_ticket


@pytest.fixture(scope="module")
def sparse_run(make_tiny, tmp_path_factory):
    """A real lottery on digits pruned to 2.6%: many hidden units end up dead."""
    raw = make_tiny()
    raw["lottery"].update(rounds=4, rate=0.6)
    out = tmp_path_factory.mktemp("sparse")
    run_lottery(validate(raw), out, say=lambda s: None)
    return out, raw


def digits_and_model(raw: dict, pm=None):
    recipe = validate(raw)
    registry = get_registry(pm)
    data = load_data(recipe, registry)
    return data, build_model(recipe, registry, data, 0), torch.cat([x for x, _ in data.eval_loaders()[-1]])


@pytest.fixture(scope="module")
def exported(sparse_run, tmp_path_factory):
    out, _ = sparse_run
    folder = tmp_path_factory.mktemp("export")
    return folder, export_ticket(out / "round_4", folder / "model.pt2")


def test_export_removes_dead_units_and_matches_the_masked_model(sparse_run, exported):
    (out, _), (folder, record) = sparse_run, exported
    assert record["max_abs_logit_diff"] <= 1e-5 and record["max_abs_logit_diff_reloaded"] <= 1e-5
    assert record["prediction_agreement"] == 1.0
    units = [u["units"] for u in record["units"]]
    assert units[-1] == 10 and units[0] < 64 and units[1] < 32  # classes kept, dead hidden units gone
    assert {u["type"] for u in record["units"]} == {"SparseLinear"}  # every layer is below 30% here
    assert record["file_bytes"]["compact"] < record["file_bytes"]["dense"]  # (tiny net: the program text dominates)
    assert record["parameters"]["compact"] < record["parameters"]["dense"]
    ticket = load_ticket(out / "round_4")
    assert record["parameters"]["nonzero_in_ticket"] == ticket.mask.kept() + sum(
        int((v != 0).sum()) for k, v in ticket.final.items() if k not in ticket.mask)
    assert json.loads((folder / "model.pt2.json").read_text()) == record
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt2", "model.pt2.json"]  # no temporary files left


def test_the_exported_file_runs_without_lth(sparse_run, exported, tmp_path):
    (out, raw), (folder, _) = sparse_run, exported
    data, model, x = digits_and_model(raw)
    torch.save(x[:50], tmp_path / "x.pt")
    code = (
        "import sys, torch; m = torch.export.load(sys.argv[1]).module(); x = torch.load(sys.argv[2], weights_only=True);"
        "print(m(x).argmax(1).tolist()); assert not [k for k in sys.modules if k.startswith('lth')]"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder / "model.pt2"), str(tmp_path / "x.pt")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ticket = load_ticket(out / "round_4", model)
    model.load_state_dict(ticket.final)
    apply_mask(model, ticket.mask)
    with torch.no_grad():
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == model(x[:50]).argmax(1).tolist()


def test_units_without_inputs_fold_their_constant_into_the_next_bias(make_tiny):
    """A hidden unit with every input pruned outputs relu(bias): folded, exactly."""
    raw = make_tiny()
    data, model, x = digits_and_model(raw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-0.5, 0.5)
    fc1 = model.net[1]
    fc1.bias.data[3], fc1.bias.data[4] = 0.7, -0.7  # one constant unit that passes ReLU, one that does not
    mask = Mask.ones_like(model)
    m1, m2 = mask["net.1.weight"].clone(), mask["net.3.weight"].clone()
    m1[3] = m1[4] = False        # units 3 and 4 of fc1 have no inputs
    m2[:, 7] = False             # unit 7 of fc1 is never read
    m2[5] = False                # unit 5 of fc2 has no inputs
    mask = Mask({**dict(mask.items()), "net.1.weight": m1, "net.3.weight": m2})
    apply_mask(model, mask)
    model.eval()
    small = compact(model)
    assert small[1].out_features == 64 - 3 and small[3].out_features == 32 - 1
    stored = sparsify(small, 1.0)  # every Linear as its nonzeros only
    assert all(isinstance(m, SparseLinear) for m in stored if not isinstance(m, (nn.ReLU, nn.Flatten)))
    assert stored[3].values.numel() == int((small[3].weight != 0).sum())
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5, rtol=0)
        assert torch.allclose(stored(x), model(x), atol=1e-5, rtol=0)


def test_conv_channels_are_removed_where_that_is_exact(tmp_path, pm):
    """Conv-2 on digits: a channel nobody reads goes; a constant channel before a conv stays."""
    raw = {"model": {"name": "conv2", "width": 0.25}, "data": {"name": "digits"}, "tracking": "none"}
    data, model, x = digits_and_model(raw, pm)
    with torch.no_grad():
        model.conv1.bias.uniform_(0.1, 0.5)
        model.conv2.bias.uniform_(-0.5, 0.5)
    mask = dict(Mask.ones_like(model).items())
    c1, c2, f1 = mask["conv1.weight"].clone(), mask["conv2.weight"].clone(), mask["fc1.weight"].clone()
    c1[2] = False                 # conv1 channel 2: no inputs, relu(bias) > 0, read by a conv: must stay
    c2[:, 5] = False              # conv1 channel 5: nobody reads it -> removed
    c2[6] = False                 # conv2 channel 6: no inputs, read through Flatten by fc1 -> folded
    hw = model.fc1.in_features // model.conv2.out_channels
    f1[:, 9 * hw:10 * hw] = False  # conv2 channel 9: nobody reads it -> removed
    apply_mask(model, Mask({**mask, "conv1.weight": c1, "conv2.weight": c2, "fc1.weight": f1}))
    model.eval()
    small = compact(model)
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16 - 1, 16 - 2]
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", [{"name": "conv2", "batchnorm": "affine", "width": 0.25}, {"name": "resnet20", "width": 4}])
def test_unsupported_architectures_are_refused_by_name(spec, pm):
    data, model, _ = digits_and_model({"model": spec, "data": {"name": "digits"}, "tracking": "none"}, pm)
    with pytest.raises(LthError, match="lth export compacts plain chains of Linear, Conv2d, ReLU"):
        compact(model)


def test_cli_export_and_its_mistakes(sparse_run, tmp_path, capsys):
    out, _ = sparse_run
    assert cli.main(["export", str(out / "round_4"), "--out", str(tmp_path / "m.pt2")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "m.pt2") and "same prediction on 100.00%" in captured.err
    bad = subprocess.run([sys.executable, "-m", "lth_core.commands.cli", "export", str(out), "--out", str(tmp_path / "x.pt2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("lth: error:") and "is not a ticket folder" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.pt2").exists()


def _refused(capsys, *args: str) -> str:
    """The one error line of a refused ``lth export ARGS`` (exit 2, no traceback), run in
    this process (a real process is tested above: each costs a Lightning import)."""
    capsys.readouterr()
    assert cli.main(["export", *args]) == cli.EXIT_USER_ERROR
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("lth: error: "), stderr[-2000:]
    return lines[-1]


def test_cli_export_refuses_a_recipe_of_another_architecture(sparse_run, tmp_path, capsys):
    """A ticket of mlp 64-32 exported with --recipe of mlp 48-32, or of conv2: one line."""
    out, raw = sparse_run
    for model, named in [({"name": "mlp", "hidden": [48, 32]}, "net.1.weight is (64, 64), model has (48, 64)"),
                         ({"name": "conv2", "width": 0.25}, "missing layers ['conv1.weight'")]:
        other = dict(raw, model=model)
        recipe = tmp_path / f"{model['name']}.yaml"
        recipe.write_text(yaml.safe_dump(other))
        line = _refused(capsys, str(out / "round_4"), "--out", str(tmp_path / "m.pt2"), "--recipe", str(recipe))
        assert line.startswith(f"lth: error: ticket {out / 'round_4'} does not fit this model: ") and named in line, line
        assert line.endswith(f"(the model of {recipe}: {model})"), line
        assert not list(tmp_path.glob("m.pt2*"))


def test_cli_export_refuses_a_ticket_whose_weights_are_of_another_architecture(sparse_run, tmp_path, capsys):
    """An inconsistent ticket: its own recipe and mask are mlp 64-32, its final weights an
    mlp 48-32's, with every checksum made to match. Export rebuilds the ticket's recipe, so
    only the shape check stands between it and a load_state_dict traceback."""
    out, raw = sparse_run
    run = tmp_path / "run"
    shutil.copytree(out / "round_4", run / "round_4")
    shutil.copy(out / "recipe.yaml", run / "recipe.yaml")
    folder = run / "round_4"
    _, wide, _ = digits_and_model(dict(raw, model={"name": "mlp", "hidden": [48, 32]}))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(folder / "final.safetensors"))
    meta = json.loads((folder / "ticket.json").read_text())
    meta["sha256"]["final"] = sha256_file(folder / "final.safetensors")
    meta = {k: v for k, v in meta.items() if k != SELF}
    meta[SELF] = json_digest(meta)
    (folder / "ticket.json").write_text(json.dumps(meta))
    line = _refused(capsys, str(folder), "--out", str(tmp_path / "m.pt2"))
    assert line.startswith(f"lth: error: ticket {folder} final weights do not fit this model: net.1.bias is (48,), model has (64,)"), line
    assert not list(tmp_path.glob("m.pt2*"))


def test_cli_export_never_replaces_an_earlier_export_without_force(sparse_run, exported, tmp_path, capsys):
    """An existing FILE or FILE.json is refused, naming them and --force, and left as it was;
    with --force both are replaced by a sound export."""
    out, _ = sparse_run
    ticket = str(out / "round_4")
    target = tmp_path / "m.pt2"
    target.write_bytes(b"an earlier model")
    line = _refused(capsys, ticket, "--out", str(target))
    assert line == f"lth: error: --out {target}: {target} already exists; choose another --out, or add --force to replace them"
    record = tmp_path / "m.pt2.json"
    record.write_text("{}")
    line = _refused(capsys, ticket, "--out", str(target))
    assert line == f"lth: error: --out {target}: {target} and {record} already exist; choose another --out, or add --force to replace them"
    target.unlink()
    line = _refused(capsys, ticket, "--out", str(target))
    assert line == f"lth: error: --out {target}: {record} already exists; choose another --out, or add --force to replace them"
    assert not target.exists() and record.read_text() == "{}"
    line = _refused(capsys, ticket, "--out", str(tmp_path))
    assert line == f"lth: error: --out {tmp_path} is a folder; give a file name such as {tmp_path / 'model.pt2'}"
    assert cli.main(["export", ticket, "--out", str(target), "--force"]) == 0
    assert json.loads(record.read_text())["prediction_agreement"] == 1.0
    assert torch.export.load(str(target)).module()(torch.zeros(1, 1, 8, 8)).shape == (1, 10)  # digits: 8x8 images
