"""Golden data from an earlier lth (``tests/golden/README.md``): no recipe hash changes,
and run folders it wrote still resume: finished tickets are reused, not trained again,
and a round killed after a checkpoint continues from it to the finished run's ticket."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_data
from lth_core.commands import cli
from lth_core.config import bundled_recipes, load_recipe

GOLDEN = Path(__file__).parent / "golden"
HASHES = json.loads((GOLDEN / "recipe_hashes.json").read_text())
RUNS = 7  # round 0's ticket, then rounds 1 and 2: ticket, random_reinit, random_pruning


def test_every_bundled_recipe_keeps_its_hash():
    assert set(bundled_recipes()) == set(HASHES["bundled"]), "a new bundled recipe: add its hash to tests/golden/recipe_hashes.json"
    changed = {name: load_recipe(name).hash() for name in HASHES["bundled"] if load_recipe(name).hash() != HASHES["bundled"][name]}
    assert not changed, f"recipe hashes changed (every run folder of these recipes would be orphaned): {changed}"


#: The quickstart as it was when the hashes were pinned (the bundled one has since changed
#: its budget, a new experiment with a new hash): the overrides are hashed on top of it.
QUICKSTART_V1 = GOLDEN / "quickstart_v1.yaml"


@pytest.mark.parametrize("command", sorted(HASHES["with_overrides"]))
def test_overridden_recipes_keep_their_hash(command):
    name, *rest = command.split(" --set ")
    assert name == "quickstart"
    assert load_recipe(QUICKSTART_V1, rest).hash() == HASHES["with_overrides"][command]


def _resume(folder: Path, capsys) -> list[str]:
    assert cli.main(["run", "--resume", str(folder)]) == 0
    return capsys.readouterr().err.splitlines()


def _rows(summary: dict) -> dict:
    return {"ticket": summary["rounds"], **summary["controls"]}


def test_a_finished_golden_run_resumes_without_training(tmp_path, capsys):
    folder = tmp_path / "finished"
    shutil.copytree(GOLDEN / "finished", folder)
    tickets = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.suffix == ".safetensors" or p.name == "ticket.json"}
    err = _resume(folder, capsys)
    assert sum("reusing finished ticket" in line for line in err) == RUNS, err
    assert not any("resumed at step" in line or "trains from its start" in line for line in err), err
    assert {p: p.read_bytes() for p in tickets} == tickets, "a finished ticket was written again"
    got, want = (json.loads((d / "summary.json").read_text()) for d in (folder, GOLDEN / "finished"))
    assert got["recipe_hash"] == want["recipe_hash"]
    assert _rows(got) == _rows(want)


def test_a_killed_golden_run_resumes_at_its_checkpoint(tmp_path, capsys):
    folder = tmp_path / "killed"
    shutil.copytree(GOLDEN / "killed", folder)
    err = _resume(folder, capsys)
    assert sum("reusing finished ticket" in line for line in err) == 4, err  # rounds 0 and 1
    assert any(line.startswith("round 2 [ticket]: resumed at step 20") for line in err), err
    got, want = (json.loads((d / "summary.json").read_text()) for d in (folder, GOLDEN / "finished"))
    assert got["recipe_hash"] == want["recipe_hash"]
    assert_same_data(_rows(got), _rows(want), rel_tol=1e-6, abs_tol=1e-9)  # the same arithmetic, on whatever CPU runs it
    for ticket in sorted((GOLDEN / "finished").rglob("ticket.json")):
        mine = folder / ticket.parent.relative_to(GOLDEN / "finished")
        mask, want_mask = load_file(str(mine / "mask.safetensors")), load_file(str(ticket.parent / "mask.safetensors"))
        assert all(torch.equal(mask[n], want_mask[n]) for n in want_mask), mine
        final, want_final = load_file(str(mine / "final.safetensors")), load_file(str(ticket.parent / "final.safetensors"))
        assert all(torch.allclose(final[n], want_final[n], rtol=1e-5, atol=1e-6) for n in want_final), mine
    assert not list(folder.rglob("checkpoint*")), "the finished run keeps no checkpoint"
