"""Every bundled recipe loads, names installed plugins, and runs a shortened version.

CIFAR-10 and MNIST cannot be downloaded here, so those recipes run their full path with
the data set swapped for the real Fashion-MNIST (same code path through torchvision), and
the CIFAR-shaped models are checked on CIFAR-shaped tensors in test_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lth_core.plugin_api.registry import get_registry
from lth_core.config import bundled_recipes, load_recipe
from lth_core.plugin_api.options import check_against_plugins
from lth_core.lottery.trials import run_experiment

RECIPES = sorted(bundled_recipes())
#: Recipes for `lth extend` (an extend: section) extend a ticket; tests/test_extend.py runs them shortened.
EXTENSION_RECIPES = {r for r in RECIPES if load_recipe(r).get("extend")}
SHORT = [
    "trials=1", "lottery.rounds=1", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", "tracking=none",
    "data.batch_size=16", "data.eval_batch_size=50", "data.subset=400", "data.val_size=200",
]


def test_the_paper_recipes_are_bundled():
    expected = {
        "quickstart", "lenet300_mnist", "lenet300_fashion_mnist", "lenet300_fashion_mnist_oneshot",
        "conv2_cifar10", "conv4_cifar10", "conv6_cifar10", "vgg19_cifar10", "resnet20_cifar10",
    }
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_against_installed_plugins(name):
    recipe = load_recipe(name)
    check_against_plugins(recipe, get_registry())
    text = bundled_recipes()[name].read_text()
    assert text.lstrip().startswith("#"), "a bundled recipe says which settings it follows in a comment"


def test_paper_settings_are_what_the_comments_say():
    lenet = load_recipe("lenet300_mnist")
    assert lenet["optimizer"]["lr"] == 1.2e-3 and lenet["data"]["batch_size"] == 60
    assert lenet["trainer"]["max_steps"] == 50000 and lenet["lottery"]["layer_rates"] == {"last": 0.1}
    assert 0.8 ** lenet["lottery"]["rounds"] == pytest.approx(0.035, abs=0.002)
    conv6 = load_recipe("conv6_cifar10")
    assert conv6["lottery"]["layer_rates"]["conv*"] == 0.15 and conv6["optimizer"]["lr"] == 3e-4
    vgg = load_recipe("vgg19_cifar10")
    assert vgg["lottery"]["scope"] == "global" and vgg["optimizer"]["warmup_steps"] == 10000
    assert load_recipe("lenet300_fashion_mnist_oneshot")["lottery"]["mode"] == "one_shot"


@pytest.mark.parametrize("name", [r for r in RECIPES if r != "quickstart" and r not in EXTENSION_RECIPES])
def test_recipe_runs_shortened_on_fashion_mnist(name, tmp_path):
    overrides = list(SHORT)
    recipe = load_recipe(name)
    if recipe["data"]["name"] != "fashion_mnist":
        overrides.append("data.name=fashion_mnist")
    recipe = load_recipe(name, overrides)
    result = run_experiment(recipe, tmp_path, say=lambda s: None)
    if recipe["sweep"]:  # one complete run folder per point
        points = recipe.sweep_points()
        assert [p["point"] for p in result["points"]] == [point for point, _ in points]
        for p, (_, sub) in zip(result["points"], points):
            check_run(tmp_path / p["folder"], sub)
    else:
        check_run(tmp_path, recipe)


def check_run(folder: Path, recipe) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["weights_remaining"] < 1.0
    sparse = [r["round"] for r in summary["rounds"] if r["weights_remaining"] < 1.0]  # round 0 too if a callback pruned it
    for control in recipe["controls"]:
        assert [r["round"] for r in summary["controls"][control["name"]]] == sparse
    assert summary["recipe_hash"] == recipe.hash()
