"""Resuming a killed run on real data (digits): the result equals the uninterrupted run's.

The first test kills real ``lth run`` subprocesses with SIGKILL (mid round 0 after a
checkpoint exists, mid a later round, right after a ticket is written) and resumes them
by rerunning the command and with ``--resume``. The in-process tests stop a run with an
exception raised by a callback at a chosen step (the folder is left as a kill leaves it:
a checkpoint, no ticket) to check each bundled callback that holds state mid-training
(gradual pruning, movement scores, late rewinding, Bernoulli supermasks that draw from the
global RNG) and what happens to damaged checkpoints. Every comparison is exact.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

from lth_core import hookimpl
from lth_core.engines import checkpoints
from lth_core.commands import cli
from lth_core.errors import LthError, PluginError
from lth_core.files import sha256_file
from lth_core.lottery.rounds import run_lottery
from lth_core.config import RecipeModel, Unhashed, validate

_SCRIPT = Path(sys.executable).with_name("lth")
LTH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "lth_core.commands.cli"]

#: Small but long enough per round that a poll sees a checkpoint well before the round ends.
KILL_RECIPE = {
    "name": "resume-kill",
    "seed": 3,
    "model": {"name": "mlp", "hidden": [64, 32]},
    "data": {"name": "digits", "batch_size": 32, "val_size": 0.1},
    "optimizer": {"name": "adam", "lr": 3.0e-3, "warmup_steps": 30},
    "trainer": {"max_steps": 120, "val_check_interval": 10, "enable_progress_bar": False},
    "lottery": {"criterion": "magnitude", "rewind": "init", "rounds": 1, "rate": 0.5},
    "controls": ["random_reinit"],
    "checkpoint_every_n_steps": 20,
    "tracking": "none",
}


def without_wall_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wall_time_s"}


def finished_runs(out: Path) -> dict[str, dict]:
    """Every ticket folder's ticket.json (metrics, checksums of its tensors) and curves."""
    return {
        str(t.parent.relative_to(out)): {"ticket": json.loads(t.read_text()), "curves": json.loads((t.parent / "curves.json").read_text())}
        for t in sorted(out.rglob("ticket.json"))
    }


def assert_same_results(out: Path, baseline: Path) -> None:
    """summary.json (all but wall time) and every ticket exactly as the uninterrupted run's."""
    got, want = json.loads((out / "summary.json").read_text()), json.loads((baseline / "summary.json").read_text())
    assert without_wall_time(got) == without_wall_time(want)
    runs, base_runs = finished_runs(out), finished_runs(baseline)
    assert runs.keys() == base_runs.keys()
    for name in base_runs:  # the sha256 of mask/init/final: the tensors are bit-identical
        assert runs[name] == base_runs[name], name
    assert not list(out.rglob("checkpoint*")), "a finished run keeps no checkpoint"


# ------------------------------------------------------------------- real SIGKILLs


def _lth_run(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    return subprocess.Popen([*LTH, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_when(proc: subprocess.Popen, path: Path, timeout: float = 90.0) -> str:
    """SIGKILL ``proc`` as soon as ``path`` exists; its stderr so far."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"lth run ended before {path} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return err


def _checkpoint_step(folder: Path) -> int:
    return json.loads((folder / "checkpoint.json").read_text())["step"]


def test_sigkill_at_several_points_then_resume_equals_the_uninterrupted_run(tmp_path: Path, pm) -> None:
    """Killed mid round 0, mid round 1 and between a ticket and its control, resumed by
    rerunning the command and by --resume: summary.json and every ticket are bit-identical."""
    recipe_path = tmp_path / "kill.yaml"
    recipe_path.write_text(yaml.safe_dump(KILL_RECIPE))
    baseline = tmp_path / "baseline"
    run_lottery(validate(copy.deepcopy(KILL_RECIPE)), baseline, say=lambda s: None, pm=pm)
    out = tmp_path / "out"

    # 1. mid round 0, once its first checkpoint exists
    _kill_when(_lth_run([str(recipe_path), "--out", str(out)]), out / "round_0" / "checkpoint.json")
    assert not (out / "round_0" / "ticket.json").exists()
    step0 = _checkpoint_step(out / "round_0")

    # 2. the same command again: resumes round 0 at that step; killed mid round 1
    err = _kill_when(_lth_run([str(recipe_path), "--out", str(out)]), out / "round_1" / "checkpoint.json")
    assert f"round 0 [ticket]: resumed at step {step0} from {out / 'round_0' / 'checkpoint.json'}" in err
    assert not (out / "round_1" / "ticket.json").exists() and (out / "round_0" / "ticket.json").exists()
    step1 = _checkpoint_step(out / "round_1")

    # 3. --resume: continues round 1 at its checkpoint; killed as soon as round 1's ticket is written
    err = _kill_when(_lth_run(["--resume", str(out)]), out / "round_1" / "ticket.json")
    assert "reusing finished ticket in " + str(out / "round_0") in err
    assert f"round 1 [ticket]: resumed at step {step1}" in err

    # 4. --resume to the end
    proc = _lth_run(["--resume", str(out)])
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert stdout.strip() == str(out / "summary.json")
    assert_same_results(out, baseline)


# ---------------------------------------------------- in-process stops at a chosen step


class Stop(Exception):
    """Stands in for the kill: raised inside training at a chosen step."""


class StopAt(pl.Callback):
    """Raises :class:`Stop` after lottery step ``step`` of one run while armed; counts batches."""

    def __init__(self, plugin: "StopPlugin", step: int):
        self.plugin, self.step, self.batches = plugin, step, 0

    def state_dict(self) -> dict:
        return {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.plugin.armed and module.step == self.step:
            raise Stop(f"stopped at step {self.step}")


class StopPlugin:
    """Adds a :class:`StopAt` to the training run ``(round, name)``, armed for the first attempt."""

    def __init__(self, round_: int, step: int, name: str = "ticket"):
        self.where, self.step, self.armed = (round_, name), step, True
        self.callbacks: list[StopAt] = []

    @hookimpl
    def round_callbacks(self, context):
        if (context.round, context.name) != self.where:
            return None
        self.callbacks.append(StopAt(self, self.step))
        return [self.callbacks[-1]]


def run(raw: dict, out: Path, pm, stop: StopPlugin | None = None) -> list[str]:
    """Run the recipe into ``out``; with ``stop`` armed, expect the stop. Returns the lines said."""
    lines: list[str] = []
    if stop is not None and not pm.is_registered(stop):
        pm.register(stop, name="stop_plugin")
    try:
        run_lottery(validate(copy.deepcopy(raw)), out, say=lines.append, pm=pm)
    except PluginError as exc:
        assert stop is not None and stop.armed and "stopped at step" in str(exc), exc
        stop.armed = False
    return lines


def stopped_and_resumed(raw: dict, tmp_path: Path, pm, round_: int, step: int, checkpointed: bool = True) -> tuple[Path, list[str], StopPlugin]:
    """An uninterrupted run, then one stopped at ``step`` of ``round_`` and resumed."""
    stop = StopPlugin(round_, step)
    run(raw, tmp_path / "baseline", pm, _disarmed(stop))
    stop.armed = True
    out = tmp_path / "out"
    run(raw, out, pm, stop)
    assert not stop.armed, "the run was not stopped"
    assert (out / f"round_{round_}" / "checkpoint.json").is_file() == checkpointed
    assert not (out / f"round_{round_}" / "ticket.json").exists()
    lines = run(raw, out, pm, stop)
    assert_same_results(out, tmp_path / "baseline")
    return out, lines, stop


def _disarmed(stop: StopPlugin) -> StopPlugin:
    """The baseline has the same callbacks (a checkpoint records which), never stopping."""
    stop.armed = False
    return stop


def tiny(**changes) -> dict:
    raw = copy.deepcopy(KILL_RECIPE)
    raw.update(name="resume-tiny", controls=[], checkpoint_every_n_steps=20)
    raw["trainer"].update(max_steps=80)
    raw["lottery"].update(rounds=1)
    for key, value in changes.items():
        raw[key] = value
    return raw


def test_gradual_pruning_and_movement_scores_resume_mid_round(tmp_path: Path, pm) -> None:
    """Round 0 prunes during training (gradual) while movement scores accumulate for round 1;
    stopped at step 55, it resumes at its checkpoint of step 40 with the history before it."""
    raw = tiny(callbacks=[{"name": "gradual_pruning", "target": 0.4, "every": "10it", "end_step": 60}])
    raw["lottery"]["criterion"] = "movement"
    out, lines, stop = stopped_and_resumed(raw, tmp_path, pm, round_=0, step=55)
    assert f"round 0 [ticket]: resumed at step 40 from {out / 'round_0' / 'checkpoint.json'}" in lines
    assert stop.callbacks[-1].batches == 80 - 40, "the resumed run trained only the steps after its checkpoint"
    gradual = json.loads((out / "round_0" / "gradual_pruning.json").read_text())
    assert gradual == json.loads((tmp_path / "baseline" / "round_0" / "gradual_pruning.json").read_text())
    assert [r["step"] for r in gradual["steps"]] == [10, 20, 30, 40, 50, 60], "the pruning steps before the checkpoint are kept"
    assert not list(out.rglob(".*.tmp*")), "a record was left half written (gradual_pruning.json is written atomically)"


def test_movement_scores_kept_with_a_reused_ticket_prune_the_next_round(tmp_path: Path, pm) -> None:
    """Stopped before round 1's first checkpoint: the rerun reuses round 0's ticket, whose
    run's movement scores (kept beside it) prune round 1 exactly as the uninterrupted run."""
    raw = tiny()
    raw["lottery"]["criterion"] = "movement"
    out, lines, _ = stopped_and_resumed(raw, tmp_path, pm, round_=1, step=5, checkpointed=False)
    assert f"round 0 [ticket]: reusing finished ticket in {out / 'round_0'}" in lines
    assert (out / "round_0" / "round_state.safetensors").is_file()
    assert not any("resumed at step" in line for line in lines)


def test_late_rewinding_resumes_a_round_that_starts_at_step_k(tmp_path: Path, pm) -> None:
    """Round 1 starts at step 30 (late rewinding); its checkpoints fall at 50 and 70. SGD with
    momentum and a step schedule (milestone 60, after the checkpoint) this time."""
    raw = tiny(optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "milestones": [60], "gamma": 0.2})
    raw["lottery"].update(rewind="late", rewind_options={"to": "30it"})
    out, lines, _ = stopped_and_resumed(raw, tmp_path, pm, round_=1, step=65)
    assert any(line.startswith("round 1 [ticket]: resumed at step 50") for line in lines), lines


def test_bernoulli_supermask_resumes_its_scores_and_random_draws(tmp_path: Path, pm) -> None:
    """Bernoulli supermasks sample a mask from the global RNG at every step."""
    raw = tiny(callbacks=[{"name": "supermask", "method": "bernoulli", "eval_samples": 2}])
    raw["lottery"]["rounds"] = 0
    out, lines, _ = stopped_and_resumed(raw, tmp_path, pm, round_=0, step=70)
    assert any(line.startswith("round 0 [ticket]: resumed at step 60") for line in lines), lines


@pytest.mark.parametrize("callback", [
    {"name": "rigl", "density": 0.2, "update_every": 10},
    {"name": "set", "density": 0.2, "update_every": 10},
    {"name": "movement_pruning", "method": "hard", "density": 0.2, "end_step": 60},
    {"name": "movement_pruning", "method": "soft", "l1": 50.0, "end_step": 60},
], ids=["rigl", "set", "movement_hard", "movement_soft"])
def test_a_callback_that_owns_the_mask_resumes_at_its_mask_scores_and_optimiser_state(callback: dict, tmp_path: Path, pm) -> None:
    """Masks that move both ways (issue 23): stopped at step 55, mid-schedule (updates every
    10 steps, movement's scores learned at every step), each resumes at its checkpoint of
    step 40 and ends bit for bit as the uninterrupted run: mask, weights, scores, records."""
    raw = tiny(callbacks=[callback])
    raw["lottery"]["rounds"] = 0
    out, lines, _ = stopped_and_resumed(raw, tmp_path, pm, round_=0, step=55)
    assert f"round 0 [ticket]: resumed at step 40 from {out / 'round_0' / 'checkpoint.json'}" in lines
    record = "movement_pruning.json" if callback["name"] == "movement_pruning" else f"{callback['name']}.json"
    assert (out / "round_0" / record).read_bytes() == (tmp_path / "baseline" / "round_0" / record).read_bytes()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[dict, Path, Path]:
    """A baseline and one run stopped at step 50 of round 1 (checkpoint at 40); tests copy it."""
    from lth_core.plugin_api.registry import make_plugin_manager

    pm, root, raw = make_plugin_manager(), tmp_path_factory.mktemp("stopped"), tiny()
    stop = StopPlugin(1, 50)
    run(raw, root / "baseline", pm, _disarmed(stop))
    stop.armed = True
    run(raw, root / "stopped", pm, stop)
    assert _checkpoint_step(root / "stopped" / "round_1") == 40
    return raw, root / "stopped", root / "baseline"


def baselines_plugin() -> StopPlugin:
    """The plugin the ``stopped`` baseline ran with (its callback in round 1), never stopping:
    a resume with the baseline's plugins makes its tickets, their plugin record included."""
    return _disarmed(StopPlugin(1, 50))


MARKER = "lth-payload-ran"


class Payload:
    """Unpickling this writes a marker file (as tests/test_hostile.py's): proof that a
    loader executed pickle code."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __reduce__(self):
        return (open, (f"{self.folder}/{MARKER}", "w"))


def _rewrite_record(record: Path, data: dict) -> None:
    """checkpoint.json with every checksum of its own recomputed: a consistent record."""
    data["state_sha256"] = checkpoints._digest(data["state"])
    data[checkpoints.SELF] = checkpoints._digest({k: v for k, v in data.items() if k != checkpoints.SELF})
    record.write_text(json.dumps(data))


def _plant_pickle(tensors: Path, record: Path, marker_dir: Path, matching: bool) -> None:
    """A pickle (torch.save's zip format, what a trojan ``.ckpt`` is) in place of the
    checkpoint's tensors; with ``matching``, checkpoint.json is rewritten to vouch for it,
    so only the safetensors parser stands between the file and ``pickle.load``."""
    import torch

    torch.save({"model": Payload(marker_dir)}, tensors)
    if matching:
        data = json.loads(record.read_text())
        data["sha256"] = sha256_file(tensors)
        _rewrite_record(record, data)


def test_the_planted_pickle_is_live(tmp_path: Path) -> None:
    """The premise of the pickle tests: the planted file does run its payload when unpickled."""
    import torch

    (tmp_path / "record.json").write_text("{}")
    _plant_pickle(tmp_path / "x.safetensors", tmp_path / "record.json", tmp_path, matching=False)
    with open(tmp_path / "x.safetensors", "rb") as f:  # a file object: torch.load unpickles whatever the suffix
        torch.load(f, weights_only=False)
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("damage,why", [
    ("truncate_tensors", "does not match its checksum"),
    ("alter_record", "does not match its own checksum"),
    ("alter_step", "does not match its own checksum"),
    ("truncate_record", "is truncated or not JSON"),
    ("drop_tensors", "is missing"),
    ("pickle", "does not match its checksum"),
    ("pickle_matching_checksums", "is not a readable safetensors file"),
])
def test_a_damaged_checkpoint_is_named_and_the_round_trains_from_its_start(stopped, tmp_path: Path, pm, damage: str, why: str) -> None:
    raw, source, baseline = stopped
    out = tmp_path / damage
    shutil.copytree(source, out)
    folder = out / "round_1"
    tensors = folder / "checkpoint_40.safetensors"
    record = folder / "checkpoint.json"
    named = record
    if damage == "truncate_tensors":
        tensors.write_bytes(tensors.read_bytes()[:-100])
        named = tensors
    elif damage == "drop_tensors":
        tensors.unlink()
        named = tensors
    elif damage.startswith("pickle"):
        _plant_pickle(tensors, record, tmp_path, matching=damage == "pickle_matching_checksums")
        named = tensors
    elif damage == "truncate_record":
        record.write_text(record.read_text()[:500])
    elif damage == "alter_step":  # outside the state: covered by the record's own checksum
        data = json.loads(record.read_text())
        data["step"] = 30
        record.write_text(json.dumps(data))
    else:  # valid JSON, one number changed: the step the history says it reached
        data = json.loads(record.read_text())
        data["state"]["history"][0]["val_loss"] += 1.0
        record.write_text(json.dumps(data))
    lines = run(raw, out, pm, baselines_plugin())
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(named) in warnings[0] and why in warnings[0], lines
    assert warnings[0].endswith("round 1 [ticket] trains from its start"), lines
    assert not any("resumed at step" in line for line in lines)
    assert not (tmp_path / MARKER).exists(), "the checkpoint loader ran pickle code"
    assert_same_results(out, baseline)


def test_a_checkpoint_of_another_start_is_not_resumed(stopped, tmp_path: Path, pm) -> None:
    """Round 0 retrained from a different seed would hand round 1 another start."""
    raw, source, _ = stopped
    out = tmp_path / "moved"
    shutil.copytree(source, out)
    record = out / "round_1" / "checkpoint.json"
    data = json.loads(record.read_text())
    data["state"]["identity"]["start_sha256"] = "0" * 64
    _rewrite_record(record, data)  # a consistent record of another start
    lines = run(raw, out, pm, baselines_plugin())
    assert any(str(record) in line and "another start" in line for line in lines), lines
    assert_same_results(out, stopped[2])


def test_a_checkpoint_of_another_number_of_processes_is_not_resumed(stopped, tmp_path: Path, pm) -> None:
    """A data parallel checkpoint keeps every process's generators (``world``, ``rng_ranks``);
    one written by two processes does not fit a run on one: one warning, trained from its start."""
    raw, source, baseline = stopped
    out = tmp_path / "two"
    shutil.copytree(source, out)
    record = out / "round_1" / "checkpoint.json"
    data = json.loads(record.read_text())
    data["state"].update(world=2, rng_ranks=[data["state"]["rng"], data["state"]["rng"]])
    _rewrite_record(record, data)
    lines = run(raw, out, pm, baselines_plugin())
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: {record} was written by 2 processes, this run has 1; round 1 [ticket] trains from its start"], lines
    assert not any("resumed at step" in line for line in lines)
    assert_same_results(out, baseline)


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run folder but run.json (each command records itself there)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "run.json"}


@pytest.mark.parametrize("damage,message", [
    ("drop_final", "ticket {r0} is missing final.safetensors (ticket.json lists it); "),
    ("unlist_final", "ticket {r0} holds no trained weights (no final.safetensors); "),
    ("drop_checksums", "{r0}/ticket.json records no sha256 of the ticket's tensor files, so they cannot be verified; "),
    ("not_an_object", "{r0}/ticket.json is corrupt: a JSON list, not the object lth writes; "),
    ("not_utf8", "{r0}/ticket.json is corrupt: not UTF-8 text (byte 0); "),
])
def test_a_damaged_finished_ticket_stops_the_resume_naming_it_and_how_to_recover(stopped, tmp_path: Path, pm, damage: str, message: str,
                                                                                 capsys) -> None:
    """`lth run --resume` reuses finished rounds: a damaged one is one line naming the file
    and the way out, with nothing retrained over it or changed; following the advice
    (delete its ticket.json) gives the uninterrupted run's results."""
    raw, source, baseline = stopped
    out = tmp_path / "out"
    shutil.copytree(source, out)
    r0 = out / "round_0"
    meta = json.loads((r0 / "ticket.json").read_text())
    if damage == "drop_final":
        (r0 / "final.safetensors").unlink()
    elif damage == "unlist_final":  # deleted, and its checksum too: the ticket loads without trained weights
        (r0 / "final.safetensors").unlink()
        del meta["sha256"]["final"]
        meta.pop("ticket_sha256")
        (r0 / "ticket.json").write_text(json.dumps(meta))
    elif damage == "drop_checksums":
        del meta["sha256"], meta["ticket_sha256"]  # as an older lth without checksums would write it
        (r0 / "ticket.json").write_text(json.dumps(meta))
    elif damage == "not_an_object":
        (r0 / "ticket.json").write_text(json.dumps([meta]))
    else:
        (r0 / "ticket.json").write_bytes(b"\xff" + json.dumps(meta).encode())
    before = _files(out)
    assert cli.main(["run", "--resume", str(out)]) == cli.EXIT_USER_ERROR
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr[-2000:]
    assert err[-1] == "lth: error: " + message.format(r0=r0) + f"delete {r0 / 'ticket.json'} and rerun the same `lth run` to train that round again"
    assert _files(out) == before, "a refused resume changed the run folder"
    (r0 / "ticket.json").unlink()
    run(raw, out, pm, baselines_plugin())
    assert_same_results(out, baseline)


@pytest.mark.parametrize("content", [b"[1, 2]", b'{"recipe_hash": ', b"\xff"])
def test_a_run_into_a_folder_whose_run_json_is_damaged_is_refused(stopped, tmp_path: Path, content: bytes, capsys) -> None:
    """run.json says which recipe a folder's rounds belong to: damaged, lth cannot tell, so
    ``lth run R --out DIR`` refuses in one line and writes nothing rather than guess."""
    raw, source, _ = stopped
    out = tmp_path / "out"
    shutil.copytree(source, out)
    (out / "run.json").write_bytes(content)
    before = _files(out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(raw))
    assert cli.main(["run", str(recipe), "--out", str(out)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"lth: error: {out / 'run.json'} is corrupt: "), err
    assert err.endswith("choose another --out, or delete it to run into this folder anyway"), err
    assert _files(out) == before and (out / "run.json").read_bytes() == content


@pytest.mark.parametrize("name,content,message", [
    ("run.json", b"[1, 2]", "{tmp}/runlike/run.json is corrupt: a JSON list, not the object lth writes"),
    ("run.json", b"\x80\x04K\x01.", "{tmp}/runlike/run.json is corrupt: not UTF-8 text (byte 0)"),
    ("run.json", b'{"recipe_hash": ', "{tmp}/runlike/run.json is corrupt: Expecting value"),
    ("recipe.yaml", b"seed: 0\n\xff\xfe", "{tmp}/runlike/recipe.yaml is corrupt: not UTF-8 text (byte 8); continue with `lth run RECIPE --out {tmp}/runlike`"),
    ("recipe.yaml", b"- a\n- b\n", "{tmp}/runlike/recipe.yaml: a recipe must be a YAML mapping of sections, got list"),
])
def test_resume_names_a_damaged_run_json_or_recipe(name: str, content: bytes, message: str, tmp_path: Path, capsys) -> None:
    runlike = tmp_path / "runlike"
    runlike.mkdir()
    (runlike / "run.json").write_text('{"recipe_hash": "x"}')
    (runlike / "recipe.yaml").write_text("seed: 0\n")
    (runlike / name).write_bytes(content)
    assert cli.main(["run", "--resume", str(runlike)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("lth: error: " + message.format(tmp=tmp_path)) and err.count("\n") == 1, err


class Blind(pl.Callback):
    """A callback with no state_dict: a checkpoint could not bring it back."""


class BlindPlugin:
    @hookimpl
    def round_callbacks(self, context):
        return [Blind()]


def test_a_callback_without_state_dict_turns_checkpoints_off_and_says_so(tmp_path: Path, pm) -> None:
    pm.register(BlindPlugin(), name="blind_plugin")
    stop = StopPlugin(0, 50)
    lines = run(tiny(), tmp_path / "out", pm, stop)
    assert not stop.armed
    said = [line for line in lines if "no checkpoints inside this run" in line]
    assert said == ["round 0 [ticket]: no checkpoints inside this run: round_callbacks of plugin 'blind_plugin' (Blind) "
                    "defines no state_dict; if interrupted it trains again from its start"]
    assert not list((tmp_path / "out").rglob("checkpoint*"))


# --------------------------------------------------------------------- recipe key, CLI


def test_checkpoint_key_defaults_validates_and_never_changes_the_hash() -> None:
    base = validate(tiny())
    key = RecipeModel.model_fields["checkpoint_every_n_steps"]
    assert key.default is None and Unhashed in key.metadata  # says how to compute: never hashed
    assert validate({k: v for k, v in tiny().items() if k != "checkpoint_every_n_steps"})["checkpoint_every_n_steps"] is None
    for value in (None, 0, 7):
        assert validate({**tiny(), "checkpoint_every_n_steps": value}).hash() == base.hash()
    for bad in (-1, "often", True, 2.5):
        with pytest.raises(LthError, match="checkpoint_every_n_steps"):
            validate({**tiny(), "checkpoint_every_n_steps": bad})
    every = checkpoints.every_n_steps(validate({**tiny(), "checkpoint_every_n_steps": None}), 10)
    assert every == (20, ""), "null: about four checkpoints in an 80-step run"
    raw = tiny()
    raw["trainer"]["accumulate_grad_batches"] = 2
    assert checkpoints.every_n_steps(validate(raw), 10) == (0, "trainer.accumulate_grad_batches is set")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--resume", "{tmp}/missing"], "--resume {tmp}/missing: no such folder"),
        (["run", "--resume", "{tmp}/file.txt"], "not a folder; give the --out folder of an earlier `lth run`"),
        (["run", "--resume", "{tmp}/empty"], "not an lth run folder (no recipe.yaml and run.json)"),
        (["run", "--resume", "{tmp}/runlike/round_0"], "this is a ticket folder; give the run folder that holds it"),
        (["run", "quickstart", "--resume", "{tmp}/runlike"], "give no RECIPE"),
        (["run", "--resume", "{tmp}/runlike", "--set", "seed=1"], "--set would make it another run"),
        (["run", "--resume", "{tmp}/runlike", "--out", "{tmp}/other"], "--out {tmp}/other names another"),
        (["run"], "lth run needs a RECIPE"),
    ],
)
def test_resume_refuses_what_is_not_a_run_folder(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "runlike" / "round_0").mkdir(parents=True)
    (tmp_path / "runlike" / "round_0" / "ticket.json").write_text("{}")
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("lth: error: ") and err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
