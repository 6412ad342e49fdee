"""The lottery end to end on real data: what it writes, what it prunes, what it rewinds to.

One tiny lottery on scikit-learn's digits (rounds 2, both controls) is run once per module
and inspected from every side; the other scopes and modes, repeatability, resuming, a real
Fashion-MNIST run and offline W&B get their own short runs.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY
from lth_core import hookimpl
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import make_plugin_manager
from lth_core.config import validate

_SCRIPT = Path(sys.executable).with_name("lth")
LTH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "lth_core.commands.cli"]
ROW_KEYS = {"round", "weights_remaining", "early_stop_step", "val_loss_min", "val_acc", "test_acc", "test_acc_final", "steps"}
SUMMARY_KEYS = {"recipe", "recipe_hash", "rounds", "controls", "wall_time_s", "lth_version"}
TICKET_FILES = {"ticket.json", "mask.safetensors", "init.safetensors", "final.safetensors", "curves.json"}
CONTROLS = ["random_reinit", "random_pruning"]


class StartRecorder:
    """A real lth plugin (``round_callbacks`` hook) that records, for every run that
    actually trains, the weights the optimiser sees at its very first step."""

    def __init__(self) -> None:
        self.starts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}

    @hookimpl
    def round_callbacks(self, context):
        key, starts = (context.round, context.name), self.starts

        class Record(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if trainer.global_step == 0 and key not in starts:
                    starts[key] = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

        return [Record()]



def recipe_dict(**lottery) -> dict:
    raw = copy.deepcopy(TINY)
    raw["lottery"].update(lottery)
    return raw


def run(raw: dict, out: Path) -> tuple[dict, StartRecorder, list[str]]:
    """Run a lottery in-process with the recorder plugin beside the installed ones."""
    pm = make_plugin_manager()
    recorder = StartRecorder()
    pm.register(recorder, name="test_start_recorder")
    said: list[str] = []
    summary = run_lottery(validate(raw, name="tiny"), out, say=said.append, pm=pm)
    return summary, recorder, said


def tensors(folder: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"{which}.safetensors"))


def expected_keep(total: int, rate: float, rounds: int) -> int:
    """Iterative per-layer pruning: each round keeps remaining - round(rate * remaining)."""
    kept = total
    for _ in range(rounds):
        kept -= int(round(rate * kept))
    return kept


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> tuple[dict, StartRecorder, Path, dict]:
    """The tiny lottery: rounds 2 at rate 0.5, with random_reinit and random_pruning."""
    raw = recipe_dict(rounds=2, rate=0.5)
    raw["controls"] = list(CONTROLS)
    out = tmp_path_factory.mktemp("main") / "run"
    summary, recorder, _ = run(raw, out)
    return summary, recorder, out, raw


# --- (1) the summary.json contract --------------------------------------------------------


def test_summary_json_contract(main_run) -> None:
    """summary.json is what users plot and other tools read: its shape is a contract."""
    summary, _, out, raw = main_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(on_disk) == SUMMARY_KEYS
    assert on_disk["recipe"] == validate(raw, name="tiny").to_dict()
    assert on_disk["recipe_hash"] == validate(raw, name="tiny").hash()
    assert [r["round"] for r in on_disk["rounds"]] == [0, 1, 2]
    assert set(on_disk["controls"]) == set(CONTROLS)
    for name in CONTROLS:
        assert [r["round"] for r in on_disk["controls"][name]] == [1, 2]
    for row in on_disk["rounds"] + [r for rows in on_disk["controls"].values() for r in rows]:
        assert set(row) == ROW_KEYS
        for key in ("round", "early_stop_step", "steps"):
            assert type(row[key]) is int, key
        for key in ("weights_remaining", "val_loss_min", "val_acc", "test_acc", "test_acc_final"):
            assert type(row[key]) is float and math.isfinite(row[key]), key
        assert 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["test_acc_final"] <= 1.0
        assert row["steps"] == raw["trainer"]["max_steps"]
        assert 0 < row["early_stop_step"] <= row["steps"]


def test_run_folder_layout(main_run) -> None:
    """Every round is a ticket folder, every control a subfolder of its round."""
    _, _, out, _ = main_run
    assert {"summary.json", "run.json", "recipe.yaml"} <= {p.name for p in out.iterdir()}
    assert yaml.safe_load((out / "recipe.yaml").read_text())["lottery"]["rounds"] == 2
    assert sorted(p.name for p in out.glob("round_*")) == ["round_0", "round_1", "round_2"]
    assert not list((out / "round_0").glob("control_*"))
    for k in (1, 2):
        folder = out / f"round_{k}"
        assert TICKET_FILES <= {p.name for p in folder.iterdir()}
        assert sorted(p.name for p in folder.glob("control_*")) == sorted(f"control_{c}" for c in CONTROLS)
        for c in CONTROLS:
            sub = folder / f"control_{c}"
            assert TICKET_FILES <= {p.name for p in sub.iterdir()}
            meta = json.loads((sub / "ticket.json").read_text())
            assert meta["run"] == c and meta["round"] == k
    assert TICKET_FILES <= {p.name for p in (out / "round_0").iterdir()}


def test_weights_remaining_and_exact_per_layer_counts(main_run) -> None:
    """Each round removes exactly round(p * remaining) weights per layer, so the paper's
    (1-p)^k density holds, counted from the saved masks themselves."""
    summary, _, out, raw = main_run
    rate = raw["lottery"]["rate"]
    theta0 = tensors(out / "round_0", "init")
    for k, row in enumerate(summary["rounds"]):
        mask = tensors(out / f"round_{k}", "mask")
        assert set(mask) == {n for n in theta0 if n.endswith("weight")}
        kept = total = 0
        for name, m in mask.items():
            assert m.dtype == torch.bool
            assert int(m.sum()) == expected_keep(m.numel(), rate, k), (k, name)
            kept, total = kept + int(m.sum()), total + m.numel()
        assert row["weights_remaining"] == kept / total
        assert abs(row["weights_remaining"] - (1 - rate) ** k) <= len(mask) / total
        meta = json.loads((out / f"round_{k}" / "ticket.json").read_text())
        for name, m in mask.items():
            assert meta["sparsity"][name]["kept"] == int(m.sum())
        if k:
            previous = tensors(out / f"round_{k - 1}", "mask")
            for name, m in mask.items():
                assert not (m & ~previous[name]).any(), "a pruned weight came back"


def test_early_stop_is_argmin_of_validation_loss(main_run) -> None:
    """early_stop_step and test_acc are read at the minimum validation loss of the curve
    actually recorded, and test_acc_final at its last point."""
    summary, _, out, _ = main_run
    runs = [(out / f"round_{r['round']}", r) for r in summary["rounds"]]
    runs += [(out / f"round_{r['round']}" / f"control_{c}", r) for c in CONTROLS for r in summary["controls"][c]]
    for folder, row in runs:
        curve = json.loads((folder / "curves.json").read_text())
        assert [p["step"] for p in curve] == sorted({p["step"] for p in curve})
        best = min(curve, key=lambda p: p["val_loss"])
        assert row["early_stop_step"] == best["step"]
        assert row["val_loss_min"] == best["val_loss"]
        assert row["test_acc"] == best["test_acc"]
        assert row["test_acc_final"] == curve[-1]["test_acc"]
        assert curve[-1]["step"] == row["steps"]


def test_accuracy_well_above_chance(main_run) -> None:
    """The networks really learn the digits (10 classes: chance is 0.1)."""
    summary, _, _, _ = main_run
    for row in summary["rounds"]:
        assert row["test_acc"] > 0.6, row
    for name in CONTROLS:
        for row in summary["controls"][name]:
            assert row["test_acc"] > 0.3, (name, row)


# --- (2) rewinding ---------------------------------------------------------------------------


def test_rewind_restores_theta0_bit_for_bit(main_run) -> None:
    """The lottery hypothesis is about θ0: round k must start from exactly θ0 under its mask.
    A rewind that never reaches the weights training starts from (cf. Lightning #13643)
    would still produce plausible accuracies, so compare the tensors the optimiser saw."""
    _, recorder, out, _ = main_run
    theta0 = tensors(out / "round_0", "init")
    for k in (1, 2):
        init = tensors(out / f"round_{k}", "init")
        assert set(init) == set(theta0)
        for n in theta0:
            assert torch.equal(init[n], theta0[n]), (k, n)
    assert set(recorder.starts) >= {(0, "ticket"), (1, "ticket"), (2, "ticket")}
    for n, t in theta0.items():
        assert torch.equal(recorder.starts[(0, "ticket")][n], t)
    for k in (1, 2):
        start = recorder.starts[(k, "ticket")]
        mask = tensors(out / f"round_{k}", "mask")
        for n, t in theta0.items():
            if n in mask:
                m = mask[n]
                assert torch.equal(start[n][m], t[m]), (k, n)
                assert (start[n][~m] == 0).all(), (k, n)
            else:
                assert torch.equal(start[n], t), (k, n)


def test_pruned_weights_stay_zero_after_training(main_run) -> None:
    """A ticket's trained weights are exactly zero wherever its mask is False."""
    _, _, out, _ = main_run
    for folder in [out / "round_1", out / "round_2", *(out / "round_2").glob("control_*")]:
        mask, final = tensors(folder, "mask"), tensors(folder, "final")
        for n, m in mask.items():
            assert (final[n][~m] == 0).all(), (folder, n)
            assert (final[n][m] != 0).float().mean() > 0.99, (folder, n)


# --- (3) the controls ------------------------------------------------------------------------


def test_random_reinit_control_same_mask_new_weights(main_run) -> None:
    """random_reinit keeps the ticket's mask and starts from fresh weights, not θ0."""
    _, recorder, out, _ = main_run
    theta0 = tensors(out / "round_0", "init")
    for k in (1, 2):
        ticket_mask = tensors(out / f"round_{k}", "mask")
        folder = out / f"round_{k}" / "control_random_reinit"
        mask, init = tensors(folder, "mask"), tensors(folder, "init")
        for n, m in ticket_mask.items():
            assert torch.equal(mask[n], m)
            assert not torch.equal(init[n][m], theta0[n][m])
            assert float(init[n].std()) == pytest.approx(float(theta0[n].std()), rel=0.2), "same initialiser"
        start = recorder.starts[(k, "random_reinit")]
        for n, m in ticket_mask.items():
            assert torch.equal(start[n][m], init[n][m]) and (start[n][~m] == 0).all()
    a = tensors(out / "round_1" / "control_random_reinit", "init")
    b = tensors(out / "round_2" / "control_random_reinit", "init")
    assert any(not torch.equal(a[n], b[n]) for n in a), "fresh weights every round"


def test_random_pruning_control_other_mask_same_counts(main_run) -> None:
    """random_pruning keeps the ticket's per-layer sparsity but not its choice of weights,
    and trains from the ticket's own θ0."""
    _, recorder, out, _ = main_run
    theta0 = tensors(out / "round_0", "init")
    for k in (1, 2):
        ticket_mask = tensors(out / f"round_{k}", "mask")
        folder = out / f"round_{k}" / "control_random_pruning"
        mask = tensors(folder, "mask")
        for n, m in ticket_mask.items():
            assert int(mask[n].sum()) == int(m.sum()), (k, n)
            assert not torch.equal(mask[n], m), (k, n)
            overlap = int((mask[n] & m).sum()) / int(m.sum())
            density = int(m.sum()) / m.numel()
            assert abs(overlap - density) < 0.15, "a random mask overlaps the ticket by chance only"
        start = recorder.starts[(k, "random_pruning")]
        for n, m in mask.items():
            assert torch.equal(start[n][m], theta0[n][m]) and (start[n][~m] == 0).all()


# --- (4) one-shot and (5) global pruning ------------------------------------------------------


def test_one_shot_prunes_round_zero_weights_directly(tmp_path: Path) -> None:
    """one_shot: round k's mask keeps the largest |w| of round 0's trained weights, with
    exactly n - round((1 - (1-p)^k) n) weights per layer (not k compounded roundings)."""
    rate = 0.2
    summary, _, _ = run(recipe_dict(rounds=2, rate=rate, mode="one_shot"), tmp_path / "run")
    final0 = tensors(tmp_path / "run" / "round_0", "final")
    differs_from_iterative = False
    for k in (1, 2):
        mask = tensors(tmp_path / "run" / f"round_{k}", "mask")
        for n, m in mask.items():
            expected = m.numel() - int(round((1 - (1 - rate) ** k) * m.numel()))
            assert int(m.sum()) == expected, (k, n)
            differs_from_iterative |= expected != expected_keep(m.numel(), rate, k)
            w = final0[n].abs()
            assert w[m].min() >= w[~m].max(), (k, n)
        assert abs(summary["rounds"][k]["weights_remaining"] - (1 - rate) ** k) < 1e-3
    assert differs_from_iterative, "pick a rate whose one-shot and iterative counts differ"
    m1 = tensors(tmp_path / "run" / "round_1", "mask")
    m2 = tensors(tmp_path / "run" / "round_2", "mask")
    for n in m1:
        assert not (m2[n] & ~m1[n]).any(), "smaller masks nest inside larger ones"


def test_global_scope_exact_total_and_uneven_layers(tmp_path: Path) -> None:
    """global: one ranking over all layers removes exactly round(p * remaining) weights in
    total, and layers end up with different densities."""
    rate = 0.5
    summary, _, _ = run(recipe_dict(rounds=2, rate=rate, scope="global"), tmp_path / "run")
    out = tmp_path / "run"
    for k in (1, 2):
        mask = tensors(out / f"round_{k}", "mask")
        previous = tensors(out / f"round_{k - 1}", "mask")
        before = sum(int(m.sum()) for m in previous.values())
        after = sum(int(m.sum()) for m in mask.values())
        assert after == before - int(round(rate * before))
        densities = [float(m.float().mean()) for m in mask.values()]
        assert max(densities) - min(densities) > 0.05, densities
        final = tensors(out / f"round_{k - 1}", "final")
        kept = torch.cat([final[n].abs()[mask[n]] for n in mask])
        dropped = torch.cat([final[n].abs()[previous[n] & ~mask[n]] for n in mask])
        assert kept.min() >= dropped.max(), "one ranking across layers"
        assert summary["rounds"][k]["weights_remaining"] == after / sum(m.numel() for m in mask.values())


# --- (6) repeatability and (7) resuming -----------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(main_run, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The main lottery again, through ``lth run`` in a fresh process, with W&B tracking
    offline (tracking does not enter the recipe hash, so results must not change)."""
    _, _, _, raw = main_run
    raw = copy.deepcopy(raw)
    raw["tracking"] = {"backend": "wandb", "project": "lth-tests"}
    tmp = tmp_path_factory.mktemp("cli")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", NETRC=str(tmp / "no-netrc"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"), OMP_NUM_THREADS="1")
    out = tmp / "out"
    proc = subprocess.run(
        [*LTH, "run", str(path), "--out", str(out)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=900,
    )
    return proc, out


def test_same_recipe_and_seed_repeat_exactly_in_another_process(main_run, cli_run) -> None:
    """The same recipe and seed give identical rows on CPU, even in another process via
    ``lth run`` and with tracking on: results are a function of the recipe alone."""
    summary, _, _, _ = main_run
    proc, out = cli_run
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "summary.json")
    again = json.loads((out / "summary.json").read_text())
    assert again["recipe_hash"] == summary["recipe_hash"]
    assert again["rounds"] == summary["rounds"]
    assert again["controls"] == summary["controls"]


def test_resume_retrains_only_unfinished_rounds(main_run, tmp_path: Path) -> None:
    """An interrupted lottery continues where it stopped: finished tickets are reused,
    the unfinished round retrains and gives the same result as the uninterrupted run."""
    summary, _, out, raw = main_run
    copy_ = tmp_path / "run"
    shutil.copytree(out, copy_)
    (copy_ / "round_2" / "ticket.json").unlink()
    (copy_ / "summary.json").unlink()
    before = {p: p.read_bytes() for p in (copy_ / "round_1").rglob("*.safetensors")}
    resumed, recorder, said = run(raw, copy_)
    assert set(recorder.starts) == {(2, "ticket")}, "only round 2's ticket trained"
    reused = [s for s in said if "reusing finished ticket" in s]
    assert len(reused) == 1 + 3 + 2, reused  # round 0, round 1 + its controls, round 2's controls
    assert resumed["rounds"] == summary["rounds"]
    assert resumed["controls"] == summary["controls"]
    for which in ("mask", "init", "final"):
        a, b = tensors(out / "round_2", which), tensors(copy_ / "round_2", which)
        assert all(torch.equal(a[n], b[n]) for n in a), which
    assert before == {p: p.read_bytes() for p in (copy_ / "round_1").rglob("*.safetensors")}
    assert json.loads((copy_ / "summary.json").read_text())["rounds"] == summary["rounds"]


# --- (8) real Fashion-MNIST ------------------------------------------------------------------

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist package is not installed")
def test_lenet300_on_fashion_mnist_beats_chance(tmp_path: Path, monkeypatch) -> None:
    """A short LeNet-300-100 lottery on the real Fashion-MNIST (3,000 training images,
    the full 10,000 test images) learns far beyond chance before and after pruning."""
    # A Fashion-MNIST bundle an earlier test left in cyclic garbage would still be held by
    # the per-process cache and reused, and nothing would unpack Debian's files below.
    gc.collect()
    monkeypatch.setenv("LTH_DATA", str(tmp_path / "data"))
    raw = {
        "name": "fashion",
        "seed": 0,
        "model": {"name": "lenet300"},
        "data": {"name": "fashion_mnist", "batch_size": 60, "val_size": 1000, "subset": 3000},
        "optimizer": {"name": "adam", "lr": 1.2e-3},
        "trainer": {"max_steps": 100, "val_check_interval": 50, "enable_progress_bar": False},
        "lottery": {"rounds": 1, "rate": 0.2, "layer_rates": {"last": 0.1}},
        "tracking": "none",
    }
    summary, _, _ = run(raw, tmp_path / "run")
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    for row in summary["rounds"]:
        assert row["test_acc"] > 0.6, row
    mask = tensors(tmp_path / "run" / "round_1", "mask")
    assert [tuple(m.shape) for m in mask.values()] == [(300, 784), (100, 300), (10, 100)]
    assert [int(m.sum()) for m in mask.values()] == [235200 - 47040, 30000 - 6000, 1000 - 100]


# --- (9) Weights & Biases offline ------------------------------------------------------------


def read_wandb_records(path: Path) -> list:
    """Decode a ``.wandb`` transaction log into protobuf ``Record``s.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then
    32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data``; types 1-4
    are full/first/middle/last pieces of one serialized ``wandb_internal_pb2.Record``.
    (wandb >= 0.19 dropped the Python reader that used to ship as
    ``wandb.sdk.internal.datastore``; the format and protobuf stayed.)
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding up to the block's end
            pos += block - pos % block if pos % block else 0
            continue
        if kind == 1:
            pending = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            pending += chunk
        record = pb.Record()
        record.ParseFromString(pending)
        records.append(record)
    return records


def test_wandb_offline_run_holds_lottery_metrics(cli_run) -> None:
    """With W&B offline the run never asks for a login (stdin closed, no credentials), and
    the offline run folder under --out records every round's lottery metrics, ready for
    ``wandb sync``."""
    proc, out = cli_run
    assert proc.returncode == 0, proc.stderr
    assert "login" not in (proc.stdout + proc.stderr).lower()
    assert "wandb sync" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())

    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1, list((out / "wandb").iterdir())
    logs = list(run_dirs[0].glob("*.wandb"))
    assert len(logs) == 1
    records = read_wandb_records(logs[0])
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "history", "exit"} <= kinds, kinds

    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_record.project == "lth-tests"
    assert run_record.display_name == f"tiny-{summary['recipe_hash']}"

    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    expected = [("lottery", summary["rounds"])] + [(f"control/{c}", summary["controls"][c]) for c in CONTROLS]
    for prefix, rows in expected:
        logged = [h for h in history if f"{prefix}/test_acc" in h]
        assert [h[f"{prefix}/round"] for h in logged] == [r["round"] for r in rows], prefix
        for h, row in zip(logged, rows):
            for key in ("weights_remaining", "early_stop_step", "test_acc", "test_acc_final", "val_loss_min"):
                assert h[f"{prefix}/{key}"] == pytest.approx(row[key], rel=1e-12, abs=1e-12), (prefix, key)
    # per-step training curves arrive too, under the round's prefix
    assert any(any(k.startswith("round_2/ticket/") for k in h) for h in history)
    # the report's figures are logged as images, and the rounds as a table
    # (nested values arrive flattened: "report/curves/_type" -> "image-file")
    flat = {k: v for h in history for k, v in h.items()}
    for name in ("accuracy_vs_weights", "early_stop_vs_weights", "curves"):
        assert flat.get(f"report/{name}/_type") == "image-file", name
    assert flat.get("lottery/summary/_type") == "table-file"
    # every finished ticket (each round and each control) is an artifact of type "ticket"
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    tickets = [a for a in artifacts if a.type == "ticket"]
    n_runs = len(summary["rounds"]) + sum(len(v) for v in summary["controls"].values())
    assert len(tickets) == n_runs
    files = {f.path for a in tickets for f in a.manifest.contents}
    assert {"mask.safetensors", "init.safetensors", "final.safetensors", "ticket.json"} <= files
    exit_record = next(r.exit for r in records if r.WhichOneof("record_type") == "exit")
    assert exit_record.exit_code == 0
