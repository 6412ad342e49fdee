"""lth from Python, as a notebook user writes it: ``lth_core.run`` with a dict recipe,
overrides as Python values, and a criterion and a model defined right here, registered
for that call only (nothing installed)."""

from __future__ import annotations

import gc
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lth_core
from conftest import TINY


def test_a_notebook_defines_a_criterion_and_a_model_and_runs_them(tmp_path):
    """A criterion and a model factory defined in a cell run through ``plugins=``; the
    summary loads every round's ticket; nothing stays registered after the call."""

    def smallest_first(model, mask, context):  # keeps the weights furthest from zero, like magnitude
        return {n: model.get_parameter(n).detach().abs().cpu() for n in mask}

    def cell_mlp(input_shape, num_classes, width: int = 24):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, num_classes))

    @lth_core.hookimpl
    def register_criteria(register):
        register("cell_magnitude", smallest_first, options=[])

    @lth_core.hookimpl
    def register_models(register):
        register("cell_mlp", cell_mlp)

    cell = SimpleNamespace(__name__="notebook_cell", register_criteria=register_criteria, register_models=register_models)
    recipe = {**TINY, "model": {"name": "cell_mlp", "width": 24}}
    summary = lth_core.run(recipe, out=tmp_path / "run", plugins=[cell],
                           overrides={"lottery.criterion": "cell_magnitude", "lottery.rounds": 1, "controls": ["random_reinit"]},
                           say=lambda s: None)
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and set(summary["controls"]) == {"random_reinit"}
    assert summary["recipe"]["lottery"]["criterion"] == "cell_magnitude"
    ticket = summary.ticket(1)
    assert ticket.mask.density() == pytest.approx(summary["rounds"][1]["weights_remaining"])
    assert summary.ticket(1, "random_reinit").mask == ticket.mask
    trained = summary.ticket(0)
    first = "1.weight"
    kept = ticket.mask[first]
    assert trained.final[first].abs()[kept].min() >= trained.final[first].abs()[~kept].max()  # pruned smallest |w|
    with pytest.raises(lth_core.LthError, match="unknown model 'cell_mlp'"):
        lth_core.run(recipe, out=tmp_path / "again", say=lambda s: None)  # the cell's plugin was for that call only


def test_a_rerun_reuses_the_run_and_a_bundled_recipe_runs_by_name(tmp_path):
    """Calling again into the same folder reuses every finished ticket (as ``lth run``)."""
    said: list[str] = []
    first = lth_core.run("quickstart", out=tmp_path / "q", say=said.append,
                         overrides={"lottery.rounds": 1, "trainer.max_steps": 20, "trainer.val_check_interval": 10,
                                    "controls": [], "tracking": "none"})
    said.clear()
    again = lth_core.run("quickstart", out=tmp_path / "q", say=said.append,
                         overrides={"lottery.rounds": 1, "trainer.max_steps": 20, "trainer.val_check_interval": 10,
                                    "controls": [], "tracking": "none"})
    assert sum("reusing finished ticket" in line for line in said) == 2
    assert again["rounds"] == first["rounds"] and again.out_dir == tmp_path / "q"
    assert torch.equal(again.ticket(1).final["net.1.weight"], first.ticket(1).final["net.1.weight"])


@pytest.mark.parametrize("recipe,overrides,message", [
    ({**TINY, "lottery": {**TINY["lottery"], "rate": 1.5}}, None, "lottery.rate must be in (0, 1)"),
    (TINY, {"lottery.rat": 0.1}, "unknown key lottery.rat"),
    (TINY, {"nosuch.key": 1}, "unknown key 'nosuch'"),
    ("no_such_recipe", None, "recipe 'no_such_recipe' not found"),
    (42, None, "a recipe is a YAML path, a bundled recipe's name or a dict, got int"),
])
def test_mistakes_are_one_line_errors(tmp_path, recipe, overrides, message):
    with pytest.raises(lth_core.LthError) as err:
        lth_core.run(recipe, out=tmp_path / "x", overrides=overrides, say=lambda s: None)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_ctrl_c_leaves_the_interrupted_line_last_even_with_a_coroutine_on_the_stack(tmp_path):
    """Ctrl-C can land while W&B holds a coroutine it made and had not scheduled yet; freed
    after lth's last line, Python would print "coroutine ... was never awaited" under it
    (seen on CI). lth frees the interrupted stack itself, without that warning."""

    async def upload():
        return None

    def interrupted_while_scheduling(model, mask, context):
        pending = upload()  # made, not yet scheduled, when Ctrl-C arrives
        raise KeyboardInterrupt(pending)

    @lth_core.hookimpl
    def register_criteria(register):
        register("scheduling", interrupted_while_scheduling, options=[])

    cell = SimpleNamespace(__name__="notebook_cell", register_criteria=register_criteria)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(KeyboardInterrupt, match="interrupted: finished rounds and the last checkpoint are kept") as info:
            lth_core.run(TINY, out=tmp_path / "run", plugins=[cell], say=lambda s: None,
                         overrides={"lottery.criterion": "scheduling", "lottery.rounds": 1, "controls": []})
        assert info.value.__context__ is None  # the interrupted stack is not kept alive by the error
        del info
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]
    assert (tmp_path / "run" / "round_0" / "ticket.json").is_file()
