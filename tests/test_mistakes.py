"""Mistakes a user makes: the nearest valid name is suggested ("did you mean"), a bad
``--set`` value is blamed on the ``--set`` and not on the recipe file, and ``lth recipes``
lists names and descriptions in aligned columns. Through ``lth``'s own entry point, on the
bundled quickstart recipe and the installed plugins."""

from __future__ import annotations

import subprocess

import pytest

from lth_core.commands import cli
from lth_core.config import bundled_recipes
from test_cli import assert_user_error


def _error(capsys, *argv: str) -> str:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return assert_user_error(subprocess.CompletedProcess(list(argv), status, captured.out, captured.err))


@pytest.mark.parametrize(("override", "blamed", "suggested"), [
    ("lottery.rat=0.1", "unknown key lottery.rat", "rate"),
    ("trainer.max_step=30", "unknown key trainer.max_step", "max_steps"),
    ("lottery.criterion=magnitud", "unknown criterion 'magnitud'", "magnitude"),
    ("model.name=lenet30", "unknown model 'lenet30'", "lenet300"),
    ("modle.name=lenet300", "unknown key 'modle'", "model"),
    ("controls=[random_reinitt]", "unknown control 'random_reinitt'", "random_reinit"),
    ("data.name=digit", "unknown data set 'digit'", "digits"),
])
def test_an_unknown_name_suggests_the_nearest_and_names_the_set(capsys, override: str, blamed: str, suggested: str) -> None:
    line = _error(capsys, "run", "quickstart", "--set", override)
    assert line.startswith(f"lth: error: --set {override}: {blamed} (did you mean {suggested!r}?)"), line
    assert "quickstart.yaml" not in line  # the file is fine; the command line is what to fix


def test_a_bad_set_value_is_blamed_on_the_set(capsys) -> None:
    line = _error(capsys, "run", "quickstart", "--set", "lottery.rate=abc")
    assert line == "lth: error: --set lottery.rate=abc: lottery.rate must be a number, got str 'abc'"


def test_a_mistake_in_the_file_still_names_the_file(tmp_path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    text = bundled_recipes()["quickstart"].read_text()
    assert "\n  rate: " in text
    recipe.write_text(text.replace("\n  rate: ", "\n  rat: "))
    line = _error(capsys, "run", str(recipe), "--set", "lottery.rounds=2", "--out", str(tmp_path / "never"))
    assert line.startswith(f"lth: error: {recipe}: unknown key lottery.rat (did you mean 'rate'?); valid: ")


def test_nothing_close_suggests_nothing(capsys) -> None:
    line = _error(capsys, "run", "quickstart", "--set", "lottery.criterion=zzzz")
    assert "did you mean" not in line and "installed: " in line


def test_a_misspelt_recipe_name_suggests_the_bundled_one(capsys) -> None:
    line = _error(capsys, "run", "quickstrat")
    assert line.startswith("lth: error: recipe 'quickstrat' not found (did you mean 'quickstart'?)")


def test_recipes_are_listed_in_aligned_columns(capsys) -> None:
    assert cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(bundled_recipes())
    starts = {len(line) - len(line.split(maxsplit=1)[1]) for line in lines if len(line.split(maxsplit=1)) == 2}
    assert len(starts) == 1  # every description starts in the same column
    assert starts.pop() > max(len(name) for name in bundled_recipes())
