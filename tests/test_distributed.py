"""Data parallel lotteries: ``trainer: {strategy: ddp, accelerator: cpu, devices: 2}`` (gloo).

The main test runs a real ``lth run`` whose second process Lightning starts by re-running
the command, and compares it with the same recipe in one process: the same masks bit for
bit, the same weights and numbers within float rounding, each process trained on half of
every batch, and every process's own digests (``ranks.json``) agree. It then resumes the
run with its last round removed: rank 0 reads the finished tickets and sends them, and the
retrained round comes out bit-identical. A third real run is killed with SIGKILL (both
processes) mid round 1 and mid round 2, once each round's checkpoint exists, and resumed by
rerunning the command and by ``--resume``: every process resumes at the checkpoint and the
tickets, curves and summary equal the uninterrupted two-process run's bit for bit. Two
cheap tests check the batch split and the recipe errors.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY
from lth_core.engines import checkpoints
from lth_core.commands import cli
from lth_core.engines import collectives, data_parallel
from lth_core.data.loaders import TensorLoader
from lth_core.engines.collectives import _ENV_RANKS
from lth_core.engines.data_parallel import RANKS_FILE, digest
from lth_core.errors import LthError
from lth_core.lottery.rounds import run_lottery
from lth_core.plugin_api.registry import get_registry
from lth_core.config import validate

_SCRIPT = Path(sys.executable).with_name("lth")
LTH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "lth_core.commands.cli"]
DDP = {"strategy": "ddp", "accelerator": "cpu", "devices": 2}
ROUNDS = ("round_0", "round_1", "round_2")


def _recipe(ddp: bool) -> dict:
    raw = copy.deepcopy(TINY)
    raw["trainer"].update({"max_steps": 40, "val_check_interval": 20})
    if ddp:
        raw["trainer"].update(DDP)
    return raw


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*_ENV_RANKS, "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline")
    return env


def _lth_run(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([*LTH, "run", str(recipe), "--out", str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The lottery with two processes (a real ``lth run``) and in one process."""
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = tmp / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(ddp=True)))
    done = _lth_run(recipe, tmp / "ddp")
    run_lottery(validate(_recipe(ddp=False), name="tiny"), tmp / "single", say=lambda _s: None, report=True)  # as lth run: with its report
    return {"recipe": recipe, "ddp": tmp / "ddp", "single": tmp / "single", "done": done}


def _ranks(out: Path) -> dict[str, list[dict]]:
    record = json.loads((out / RANKS_FILE).read_text())
    assert record["world_size"] == 2
    return {r["folder"]: r["ranks"] for r in record["runs"]}


def test_every_process_holds_the_ticket_one_process_finds(runs):
    ranks = _ranks(runs["ddp"])
    assert sorted(ranks) == list(ROUNDS)
    for folder in ROUNDS:
        r0, r1 = ranks[folder]
        assert (r0["rank"], r1["rank"]) == (0, 1)
        # Each process's own digests, taken inside its fit: the same mask before and after
        # training and bit-identical trained weights on both processes.
        for key in ("mask_start", "mask", "final"):
            assert r0[key] == r1[key], (folder, key)
        assert r0["eval"] == r1["eval"]
        ddp, single = runs["ddp"] / folder, runs["single"] / folder
        mask = load_file(str(ddp / "mask.safetensors"))
        assert digest(mask) == r0["mask"]  # the file rank 0 wrote is the mask every process held
        assert digest(mask) == digest(load_file(str(single / "mask.safetensors")))  # = one process's ticket
        final, final_1 = load_file(str(ddp / "final.safetensors")), load_file(str(single / "final.safetensors"))
        assert digest(final) == r0["final"]
        for name in final:
            torch.testing.assert_close(final[name], final_1[name], rtol=0, atol=1e-5)
        # Data parallel, not data duplicated: each process trained on half of every batch.
        steps = json.loads((single / "ticket.json").read_text())["metrics"]["steps"]
        assert r0["examples"] == r1["examples"] == steps * TINY["data"]["batch_size"] // 2
    densities = [json.loads((runs["ddp"] / f / "ticket.json").read_text())["weights_remaining"] for f in ROUNDS]
    assert densities == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)


def test_history_and_summary_match_one_process(runs):
    ddp = json.loads((runs["ddp"] / "summary.json").read_text())["rounds"]
    single = json.loads((runs["single"] / "summary.json").read_text())["rounds"]
    assert len(ddp) == len(single) == 3
    for a, b in zip(ddp, single):
        assert a["early_stop_step"] == b["early_stop_step"] and a["steps"] == b["steps"]
        for key in ("val_loss_min", "val_acc", "test_acc", "test_acc_final"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for folder in ROUNDS:
        curve = json.loads((runs["ddp"] / folder / "curves.json").read_text())
        curve_1 = json.loads((runs["single"] / folder / "curves.json").read_text())
        assert [h["step"] for h in curve] == [h["step"] for h in curve_1] == [20, 40]
        for h, h1 in zip(curve, curve_1):  # evaluation shared out over processes, summed by torchmetrics
            assert h == pytest.approx(h1, abs=1e-5)


def test_rank_zero_alone_writes_and_speaks(runs):
    done = runs["done"]
    assert done.stdout.strip().splitlines() == [str(runs["ddp"] / "summary.json")]
    assert done.stderr.count("round 1/2 [ticket]") == 1
    files = {p.relative_to(runs["ddp"]).as_posix() for p in runs["ddp"].rglob("*")}
    single = {p.relative_to(runs["single"]).as_posix() for p in runs["single"].rglob("*")}
    assert files == single | {RANKS_FILE}  # no second copy, no temporary file left behind


def test_resume_sends_rank_zeros_tickets_and_retrains_the_same(runs):
    """Round 2 unfinished: both processes take rounds 0-1 from rank 0 and retrain round 2."""
    before = _ranks(runs["ddp"])["round_2"]
    (runs["ddp"] / "round_2" / "ticket.json").unlink()
    done = _lth_run(runs["recipe"], runs["ddp"])
    assert done.stderr.count("reusing finished ticket") == 2  # rounds 0 and 1, said once
    after = _ranks(runs["ddp"])["round_2"]
    for key in ("mask_start", "mask", "final", "examples"):
        assert after[0][key] == after[1][key] == before[0][key], key


def _launch(args: list[str]) -> subprocess.Popen:
    """``lth run ARGS`` in a process group of its own: Lightning's second rank joins it."""
    return subprocess.Popen([*LTH, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)


def _kill_group_when(proc: subprocess.Popen, path: Path, timeout: float = 150.0) -> str:
    """SIGKILL every process of ``proc``'s group (rank 0 and the rank it launched) as soon
    as ``path`` exists; rank 0's stderr so far."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"lth run ended before {path} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    while True:  # rank 1 (not our child) is gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return err
        assert time.monotonic() < deadline + 30, "a process of the killed run survived"
        time.sleep(0.01)


def _checkpoint(folder: Path) -> dict:
    return json.loads((folder / "checkpoint.json").read_text())


def test_sigkill_mid_round_resumes_every_process_at_its_checkpoint(runs, tmp_path):
    """Both processes killed mid round 1 (checkpoint at step 20 of 40), rerun: round 1 goes
    on from step 20 on both; killed mid round 2, ``--resume``: the same. Tickets, curves and
    summary equal the uninterrupted two-process run's (the module's) bit for bit."""
    raw = _recipe(ddp=True)
    raw["checkpoint_every_n_steps"] = 20
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"

    # 1. killed in round 1 once its checkpoint exists
    _kill_group_when(_launch([str(recipe), "--out", str(out)]), out / "round_1" / "checkpoint.json")
    assert (out / "round_0" / "ticket.json").exists() and not (out / "round_1" / "ticket.json").exists()
    record = _checkpoint(out / "round_1")
    assert record["step"] == 20
    assert record["state"]["world"] == 2 and len(record["state"]["rng_ranks"]) == 2  # every process's generators

    # 2. the same command: reuses round 0, resumes round 1 at step 20 on both; killed in round 2
    err = _kill_group_when(_launch([str(recipe), "--out", str(out)]), out / "round_2" / "checkpoint.json")
    assert err.count("resumed at step") == 1, err[-3000:]  # said once, by rank 0
    assert f"round 1 [ticket]: resumed at step 20 from {out / 'round_1' / 'checkpoint.json'}" in err
    assert "reusing finished ticket in " + str(out / "round_0") in err
    assert "no checkpoints inside this run" not in err
    resumed = _ranks(out)["round_1"]
    assert [r["examples"] for r in resumed] == [20 * TINY["data"]["batch_size"] // 2] * 2  # only the steps after 20
    assert _checkpoint(out / "round_2")["step"] == 20

    # 3. --resume to the end: round 2 from its checkpoint
    done = subprocess.run([*LTH, "run", "--resume", str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"round 2 [ticket]: resumed at step 20 from {out / 'round_2' / 'checkpoint.json'}" in done.stderr
    assert not list(out.rglob("checkpoint*")), "a finished run keeps no checkpoint"

    # Equal to the uninterrupted two-process run (the module's run, same recipe but for the
    # checkpoint key, which is not hashed: its default gives the same checkpoint steps).
    base = runs["ddp"]
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, base))
    assert got["recipe_hash"] == want["recipe_hash"] and got["rounds"] == want["rounds"] and got["controls"] == want["controls"]
    assert {k: v for k, v in got["recipe"].items() if k != "checkpoint_every_n_steps"} == {
        k: v for k, v in want["recipe"].items() if k != "checkpoint_every_n_steps"}
    base_ranks = _ranks(base)
    for folder in ROUNDS:
        for name in ("ticket.json", "curves.json"):  # ticket.json holds the SHA-256 of mask, init, final
            assert json.loads((out / folder / name).read_text()) == json.loads((base / folder / name).read_text()), (folder, name)
        for name in ("mask.safetensors", "init.safetensors", "final.safetensors"):
            assert digest(load_file(str(out / folder / name))) == digest(load_file(str(base / folder / name))), (folder, name)
        for r, r_base in zip(_ranks(out)[folder], base_ranks[folder]):
            assert (r["mask"], r["final"], r["eval"]) == (r_base["mask"], r_base["final"], r_base["eval"]), folder


def test_other_commands_refuse_to_train_on_several_processes(runs, tmp_path, capsys):
    """``lth merge`` retrains with the run's recipe; only ``lth run`` starts processes."""
    tickets = [str(runs["ddp"] / "round_1"), str(runs["ddp"] / "round_2")]
    assert cli.main(["merge", *tickets, "--strategy", "union", "--out", str(tmp_path / "m")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after merge's progress lines
    assert last.startswith("lth: error: merge strategy 'union' (plugin 'merge'): the recipe's trainer asks for 2 processes, "
                           "which only `lth run` starts; add --set trainer.devices=1")
    assert not (tmp_path / "m" / "ticket").exists()


def _on_two_processes(target, tmp_path: Path) -> list:
    """Run ``target(rank, rendezvous, folder, results)`` on two forked gloo processes; what
    each put in ``results``, once both exited cleanly."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "rendezvous"), str(tmp_path), results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    return got


def _two_processes(rank: int, rendezvous: str, out: str, results) -> None:
    """One of two gloo processes: rank 0's values reach rank 1; masks that differ stop both."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        head = collectives.broadcast_json({"from": rank, "step": 7} if rank == 0 else None)
        mine = {"m": torch.tensor([True, False, rank == 1]), "w": torch.full((2, 3), float(rank))}
        sent = collectives.broadcast_tensors(mine if rank == 0 else None)
        engine = data_parallel.DataParallel()
        (witness,) = engine.callbacks(None, {})
        witness.examples = 16
        witness.record = {"mask_start": "same", "mask": f"mask of rank {rank}", "final": "same", "steps": 3}
        fit = SimpleNamespace(context=SimpleNamespace(round=1, name="ticket", out_dir=Path(out) / "round_1"),
                              run=SimpleNamespace(out_dir=Path(out)), module=SimpleNamespace(history=[{"step": 3, "val_acc": 0.5}]))
        try:
            engine.verify(fit)
            error = None
        except LthError as exc:
            error = str(exc)
        results.put((rank, head, sent["m"].tolist(), sent["m"].dtype == torch.bool, sent["w"].sum().item(), error))
    finally:
        dist.destroy_process_group()


def test_rank_zeros_values_reach_every_process_and_a_split_ticket_stops_the_run(tmp_path):
    got = sorted(_on_two_processes(_two_processes, tmp_path))
    for rank, head, mask, is_bool, weight_sum, error in got:
        assert head == {"from": 0, "step": 7} and mask == [True, False, False] and is_bool and weight_sum == 0.0
        assert error == (f"round 1 [ticket]: process 1 ended with another mask than rank 0 (see {tmp_path / RANKS_FILE}); "
                         "a callback that prunes must decide the same on every process")
    record = json.loads((tmp_path / RANKS_FILE).read_text())  # written by rank 0 before stopping
    assert record["world_size"] == 2
    assert [r["mask"] for r in record["runs"][0]["ranks"]] == ["mask of rank 0", "mask of rank 1"]
    assert [r["examples"] for r in record["runs"][0]["ranks"]] == [16, 16]


class _Counter(pl.Callback):
    """A callback whose state is ``n``: the same on every process, or not."""

    def __init__(self, n: int):
        self.n = n

    def state_dict(self) -> dict:
        return {"n": self.n}


def _checkpoint_processes(rank: int, rendezvous: str, folder: str, results) -> None:
    """One of two gloo processes: a checkpoint of state shown equal (generators apart) is
    written by rank 0 and read back by both, rank 1 from a folder it cannot see; a callback
    state that differs turns checkpoints off on both, writing nothing."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        said: list[str] = []
        expected = {"recipe_hash": "h", "round": 1, "run": "ticket", "start_sha256": "s"}
        out = []
        for case, n in (("same", 0), ("differs", rank)):
            here = Path(folder) / case
            here.mkdir(parents=True, exist_ok=True)
            keeper = checkpoints.RoundCheckpoint(SimpleNamespace(metrics={"extra": 1.5}, out_dir=here), expected, 0, (20, ""),
                                                 None, {}, (), collectives.speaker(said.append))
            keeper.tracked, keeper.interval = [_Counter(n)], 20
            torch.manual_seed(100 + rank)  # each process's own generator state
            mine = checkpoints.rng_state()
            state = {"identity": expected, "step": 20, "history": [{"step": 20, "val_loss": 0.25}], "metrics": {"extra": 1.5},
                     "model": {"w": torch.arange(6.0).reshape(2, 3)}, "mask": {"w": torch.ones(2, 3, dtype=torch.bool)},
                     "optimizers": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
                     "callbacks": [["_Counter", {"n": n}]], "rng": mine}
            agreed = keeper._agreed(state, 20)
            if agreed and collectives.is_writer():
                checkpoints.write(here, 20, state)
            # rank 1 looks in a folder that does not exist: it gets rank 0's checkpoint
            saved = checkpoints.load_from_rank_zero(here if rank == 0 else here / "elsewhere", expected, lambda _s: None)
            got = None
            if saved is not None:
                got = {"step": saved.step, "world": saved.state["world"], "model": saved.state["model"]["w"].tolist(),
                       "optimizer_keys": list(saved.state["optimizers"][0]["state"]),
                       "own_rng": torch.equal(saved.state["rng_ranks"][rank]["torch"], mine["torch"])
                       and saved.state["rng_ranks"][rank]["python"] == mine["python"],
                       "rank0_rng": torch.equal(saved.state["rng"]["torch"], saved.state["rng_ranks"][0]["torch"]),
                       "fingerprint": checkpoints.fingerprint({k: v for k, v in saved.state.items() if k != "rng"})}
            out.append((case, agreed, keeper.interval, got))
        results.put((rank, out, said))
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_keeps_every_processs_generators_and_refuses_state_that_differs(tmp_path):
    got = {rank: (out, said) for rank, out, said in _on_two_processes(_checkpoint_processes, tmp_path)}
    (same0, differs0), said0 = got[0]
    (same1, differs1), said1 = got[1]
    for same in (same0, same1):
        case, agreed, interval, loaded = same
        assert (case, agreed, interval) == ("same", True, 20)
        assert loaded["step"] == 20 and loaded["world"] == 2 and loaded["model"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert loaded["optimizer_keys"] == [0]  # an int key, as the optimiser's
        assert loaded["own_rng"] and loaded["rank0_rng"]  # each process gets its own generators back
    assert same0[3]["fingerprint"] == same1[3]["fingerprint"]  # rank 1 holds what rank 0 read
    for differs in (differs0, differs1):
        assert differs == ("differs", False, 0, None)  # off on both; nothing written, nothing resumed
    assert not list((tmp_path / "differs").glob("checkpoint*"))
    assert said0 == ["round 1 [ticket]: no checkpoints inside this run: at step 20 process 1 holds another state of "
                     "a callback (_Counter) than rank 0, and a checkpoint keeps one copy; if interrupted it trains again from its start"]
    assert said1 == []


def test_each_process_takes_its_share_of_every_batch():
    bundle = get_registry().get("datasets", "digits").obj()
    x, y = bundle.train_x[:100], bundle.train_y[:100]
    whole = list(TensorLoader(x, y, 30, shuffle=True, seed=3, drop_last=True))
    shares = []
    for rank in range(3):
        loader = TensorLoader(x, y, 30, shuffle=True, seed=3, drop_last=True)
        loader.rank, loader.world = rank, 3
        shares.append(list(loader))
    assert [len(s) for s in shares] == [len(whole)] * 3
    for b, (bx, by) in enumerate(whole):
        assert all(s[b][0].shape[0] == 10 for s in shares)
        assert torch.equal(torch.cat([s[b][0] for s in shares]), bx) and torch.equal(torch.cat([s[b][1] for s in shares]), by)
    # Evaluation: a last batch smaller than the world leaves a process without it, never empty.
    tail = [TensorLoader(x[:5], y[:5], 4) for _ in range(2)]
    for rank, loader in enumerate(tail):
        loader.rank, loader.world = rank, 2
    assert [[b[1].shape[0] for b in loader] for loader in tail] == [[2, 1], [2]]


@pytest.mark.parametrize("setting, message", [
    ("trainer.strategy=ddp_spawn", "trainer.strategy 'ddp_spawn' is not supported (it trains in processes that end with each fit"),
    ("trainer.strategy=fsdp", "trainer.strategy 'fsdp' is not supported; valid: auto, ddp"),
    ("data.batch_size=33", "data.batch_size=33 is the global batch and must split evenly over 2 processes"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be a whole number >= 1"),
    ("trainer.sync_batchnorm=true", "trainer.sync_batchnorm needs GPUs"),
])
def test_recipe_mistakes_are_one_line_errors(tmp_path, capsys, setting, message):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(ddp=True)))
    assert cli.main(["run", str(recipe), "--out", str(tmp_path / "out"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("lth: error:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("callback", [
    {"name": "rigl", "density": 0.3, "update_every": 5, "drop_fraction": 0.3},
    {"name": "movement_pruning", "method": "hard", "density": 0.3, "score_lr": 0.05},
], ids=["rigl", "movement_pruning"])
def test_a_moving_mask_under_data_parallel_is_one_mask_on_every_process(tmp_path, callback):
    """RigL ranks the dense gradient of the whole batch (averaged over the processes, as
    DDP averages the weights' gradients); movement pruning's scores step on the whole
    batch's gradient too. Both processes make the same choices at every update, so they
    hold one mask; RigL's is the one a single process finds. (Movement pruning's scores
    start tied at zero and Adam's first steps keep many tied, so float rounding decides
    among equals differently in one process and in two.)"""
    raw = _recipe(ddp=True)
    raw["lottery"]["rounds"] = 0
    raw["callbacks"] = [callback]
    recipe = tmp_path / "moving.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    _lth_run(recipe, tmp_path / "ddp")
    single = copy.deepcopy(raw)
    single["trainer"] = {k: v for k, v in raw["trainer"].items() if k not in DDP}
    run_lottery(validate(single, name="tiny"), tmp_path / "single", say=lambda _s: None)
    (r0, r1), = _ranks(tmp_path / "ddp").values()
    assert r0["mask"] == r1["mask"] and r0["final"] == r1["final"]
    if callback["name"] == "rigl":
        updates = [json.loads((tmp_path / run / "round_0" / "rigl.json").read_text())["updates"] for run in ("ddp", "single")]
        assert [u["step"] for u in updates[0]] == [u["step"] for u in updates[1]] == [5, 10, 15, 20, 25]  # none at end_step (75%: 30), where cosine reaches 0
        assert all(u["moved"] > 0 for u in updates[0])
    masks = [load_file(str(tmp_path / run / "round_0" / "mask.safetensors")) for run in ("ddp", "single")]
    kept = {n: int(m.sum()) for n, m in masks[1].items()}
    assert {n: int(m.sum()) for n, m in masks[0].items()} == kept
    assert sum(kept.values()) == pytest.approx(0.3 * sum(m.numel() for m in masks[1].values()), abs=len(kept))
    if callback["name"] == "rigl":
        same = sum(int((masks[0][n].bool() & masks[1][n].bool()).sum()) for n in kept)
        assert same >= 0.99 * sum(kept.values())  # float rounding of the averaged gradient may swap a near tie
