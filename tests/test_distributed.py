"""Data parallel lotteries: ``trainer: {strategy: ddp, accelerator: cpu, devices: 2}`` (gloo).

The main test runs a real ``lth run`` whose second process Lightning starts by re-running
the command, and compares it with the same recipe in one process: the same masks bit for
bit, the same weights and numbers within float rounding, each process trained on half of
every batch, and every process's own digests (``ranks.json``) agree. It then resumes the
run with its last round removed: rank 0 reads the finished tickets and sends them, and the
retrained round comes out bit-identical. Two cheap tests check the batch split and the
recipe errors.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY
from lth_core import cli, distributed
from lth_core.data import TensorLoader
from lth_core.distributed import RANKS_FILE, _ENV_RANKS, digest
from lth_core.errors import LthError
from lth_core.lottery import run_lottery
from lth_core.plugins import get_registry
from lth_core.recipes import validate

_SCRIPT = Path(sys.executable).with_name("lth")
LTH = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "lth_core.cli"]
DDP = {"strategy": "ddp", "accelerator": "cpu", "devices": 2}
ROUNDS = ("round_0", "round_1", "round_2")


def _recipe(ddp: bool) -> dict:
    raw = copy.deepcopy(TINY)
    raw["trainer"].update({"max_steps": 40, "val_check_interval": 20})
    if ddp:
        raw["trainer"].update(DDP)
    return raw


def _lth_run(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (*_ENV_RANKS, "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline")
    done = subprocess.run([*LTH, "run", str(recipe), "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The lottery with two processes (a real ``lth run``) and in one process."""
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = tmp / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(ddp=True)))
    done = _lth_run(recipe, tmp / "ddp")
    run_lottery(validate(_recipe(ddp=False), name="tiny"), tmp / "single", say=lambda _s: None)
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


def test_other_commands_refuse_to_train_on_several_processes(runs, tmp_path, capsys):
    """``lth merge`` retrains with the run's recipe; only ``lth run`` starts processes."""
    tickets = [str(runs["ddp"] / "round_1"), str(runs["ddp"] / "round_2")]
    assert cli.main(["merge", *tickets, "--strategy", "union", "--out", str(tmp_path / "m")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after merge's progress lines
    assert last.startswith("lth: error: the recipe's trainer asks for 2 processes, which only `lth run` starts; add --set trainer.devices=1")
    assert not (tmp_path / "m" / "ticket").exists()


def _two_processes(rank: int, rendezvous: str, out: str, results) -> None:
    """One of two gloo processes: rank 0's values reach rank 1; masks that differ stop both."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        head = distributed.broadcast_json({"from": rank, "step": 7} if rank == 0 else None)
        mine = {"m": torch.tensor([True, False, rank == 1]), "w": torch.full((2, 3), float(rank))}
        sent = distributed.broadcast_tensors(mine if rank == 0 else None)
        witness = distributed.Witness()
        witness.examples = 16
        witness.record = {"mask_start": "same", "mask": f"mask of rank {rank}", "final": "same", "steps": 3}
        try:
            distributed.verify([witness], [{"step": 3, "val_acc": 0.5}], Path(out), Path(out) / "round_1", 1, "ticket")
            error = None
        except LthError as exc:
            error = str(exc)
        results.put((rank, head, sent["m"].tolist(), sent["m"].dtype == torch.bool, sent["w"].sum().item(), error))
    finally:
        dist.destroy_process_group()


def test_rank_zeros_values_reach_every_process_and_a_split_ticket_stops_the_run(tmp_path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_two_processes, args=(r, str(tmp_path / "rendezvous"), str(tmp_path), results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank, head, mask, is_bool, weight_sum, error in got:
        assert head == {"from": 0, "step": 7} and mask == [True, False, False] and is_bool and weight_sum == 0.0
        assert error == (f"round 1 [ticket]: process 1 ended with another mask than rank 0 (see {tmp_path / RANKS_FILE}); "
                         "a callback that prunes must decide the same on every process")
    record = json.loads((tmp_path / RANKS_FILE).read_text())  # written by rank 0 before stopping
    assert record["world_size"] == 2
    assert [r["mask"] for r in record["runs"][0]["ranks"]] == ["mask of rank 0", "mask of rank 1"]
    assert [r["examples"] for r in record["runs"][0]["ranks"]] == [16, 16]


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
