"""Plugins' recipe sections, typed plugin options, and the hash markers on the schema.

A third party's plugin (registered here through ``pm.register``, as an installed one is
through its entry point) declares a recipe section with a pydantic model and typed
options; a recipe using them is checked against the installed plugins in one line per
mistake, and keeps what it wrote (its hash too).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.config import SECTIONS, GivenOnly, HashedUnlessDefault, RecipeModel, Unhashed, load_recipe, validate
from lth_core.errors import LthError, PluginError
from lth_core.plugin_api.options import check_against_plugins, plugin_options, section
from lth_core.plugin_api.registry import get_registry


class Notes(BaseModel):
    """A third party's section: who owns a run, and how urgent it is."""

    model_config = ConfigDict(strict=True, extra="forbid")
    owner: str
    priority: int = Field(1, ge=1, le=5)
    tags: list[str] = []


class Scaled(BaseModel):
    alpha: float = Field(1.0, gt=0)


def boxy(input_shape, num_classes, widths: list[int] = (8,), act: Literal["relu", "tanh"] = "relu", scale: float | None = None):
    """A model factory with typed options (what a third-party model declares)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


class BoxyOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    depth: int = Field(2, ge=1)


class ThirdParty:
    """Registers a recipe section, a command's section, typed options and option models."""

    @hookimpl
    def register_recipe_sections(self, register):
        register("notes", Notes)
        register("review", Notes, command="review", usage="lth review RUN --recipe RECIPE")

    @hookimpl
    def register_models(self, register):
        register("boxy", boxy)
        register("boxy_declared", lambda input_shape, num_classes, **options: boxy(input_shape, num_classes), options=BoxyOptions)

    @hookimpl
    def register_criteria(self, register):
        register("scaled", lambda model, mask, context: {n: m.float() * context.options.get("alpha", 1.0) for n, m in mask.items()},
                 options=Scaled)


@pytest.fixture
def third_party(pm):
    plugin = ThirdParty()
    pm.register(plugin, name="third-party")
    try:
        yield get_registry(pm)
    finally:
        pm.unregister(plugin)


def _refused(raw: dict, registry) -> str:
    with pytest.raises(LthError) as exc:
        check_against_plugins(validate(raw, source="r.yaml"), registry)
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- sections ----------------------------------------------------------------------------


def test_a_plugin_section_is_kept_as_written_and_read_through_its_model(third_party, tiny_raw):
    base = validate(tiny_raw).hash()
    tiny_raw["notes"] = {"owner": "ana"}
    recipe = validate(tiny_raw)
    check_against_plugins(recipe, third_party)
    assert recipe["notes"] == {"owner": "ana"}, "no defaults filled into the recipe"
    assert section(recipe, "notes", third_party) == Notes(owner="ana", priority=1, tags=[])
    assert recipe.hash() != base
    tiny_raw["notes"] = {}
    assert validate(tiny_raw).hash() == base and section(validate(tiny_raw), "notes", third_party) is None
    del tiny_raw["notes"]
    assert section(validate(tiny_raw), "notes", third_party) is None


@pytest.mark.parametrize(("notes", "message"), [
    ({"owner": "ana", "priority": 9}, "r.yaml: notes.priority must be in [1, 5], got 9"),
    ({"owner": "ana", "priority": True}, "r.yaml: notes.priority must be an integer, got True"),
    ({"ownr": "ana"}, "r.yaml: unknown key notes.ownr (did you mean 'owner'?); valid: owner, priority, tags"),
    ({"priority": 2}, "r.yaml: notes.owner is required"),
    ({"owner": "ana", "tags": ["a", 3]}, "r.yaml: notes.tags.1 must be a string, got int 3"),
    (5, "r.yaml: notes must be a mapping, got int 5"),
])
def test_a_mistake_in_a_plugin_section_is_one_line(third_party, tiny_raw, notes, message):
    tiny_raw["notes"] = notes
    assert _refused(tiny_raw, third_party) == message


def test_a_section_without_its_plugin_is_an_unknown_key(pm, tiny_raw):
    tiny_raw["notes"] = {"owner": "ana"}
    message = _refused(tiny_raw, get_registry(pm))
    assert message.startswith("r.yaml: unknown key 'notes'; valid: callbacks, ") and "extend" in message and "lottery" in message


def test_set_and_sweep_reach_a_plugin_section(third_party, tmp_path, tiny_raw):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    recipe = load_recipe(path, ["notes.owner=bo", "notes.priority=2"])
    check_against_plugins(recipe, third_party)
    assert recipe["notes"] == {"owner": "bo", "priority": 2}
    swept = load_recipe(path, ["notes.owner=bo", "sweep={notes.priority: [2, 7]}"])
    with pytest.raises(LthError, match=r"\(sweep point notes.priority=7\): notes.priority must be in \[1, 5\], got 7$"):
        check_against_plugins(swept, third_party)


def test_lth_run_refuses_a_section_of_another_command(third_party, tmp_path, tiny_raw, capsys):
    tiny_raw["review"] = {"owner": "ana"}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"lth: error: {path} has a review: section, read by `lth review` (plugin 'third-party'), "
                   "not by `lth run`: use `lth review RUN --recipe RECIPE`\n")
    assert not (tmp_path / "out").exists()
    check_against_plugins(load_recipe(path), third_party, command="review")  # its own command reads it


class BadSections:
    def __init__(self, name, model):
        self.name, self.model = name, model

    @hookimpl
    def register_recipe_sections(self, register):
        register(self.name, self.model)


@pytest.mark.parametrize(("name", "model", "message"), [
    ("lottery", Notes, "plugin 'bad-sections' registered the recipe section 'lottery', a key of lth's own recipe; choose another name"),
    ("notes", {"owner": str}, "plugin 'bad-sections' registered the recipe section 'notes' with {'owner': <class 'str'>}; it must be a pydantic model class"),
])
def test_a_plugin_section_that_cannot_work_names_the_plugin(pm, tiny_raw, name, model, message):
    plugin = BadSections(name, model)
    pm.register(plugin, name="bad-sections")
    try:
        with pytest.raises(PluginError) as exc:
            check_against_plugins(validate(tiny_raw), get_registry(pm))
    finally:
        pm.unregister(plugin)
    assert str(exc.value) == message


class Buggy(BaseModel):
    owner: str

    @field_validator("owner")
    @classmethod
    def _owner(cls, value):
        return value / 2  # a bug: a TypeError, not a user's mistake


def test_a_bug_in_a_section_model_is_one_line_naming_the_plugin(pm, tiny_raw):
    plugin = BadSections("buggy", Buggy)
    pm.register(plugin, name="bad-sections")
    try:
        with pytest.raises(PluginError) as exc:
            check_against_plugins(validate({**tiny_raw, "buggy": {"owner": "ana"}}), get_registry(pm))
    finally:
        pm.unregister(plugin)
    assert str(exc.value) == "the model of 'buggy' (plugin 'bad-sections') raised TypeError: unsupported operand type(s) for /: 'str' and 'int'"


def test_a_misspelt_section_is_named_when_it_leaves_a_mistake(tiny_raw):
    """Which top-level keys are sections is known only with the plugins, but a key one
    letter from lth's own is named when the section it should have been is missing."""
    tiny_raw["modle"] = tiny_raw.pop("model")
    with pytest.raises(LthError) as exc:
        validate(tiny_raw, source="r.yaml")
    assert str(exc.value) == ("r.yaml: model.name is required (a registered model name; see `lth plugins`) "
                              "(unknown key 'modle': model?)")


def test_extend_is_frankenmodels_section():
    entry = get_registry().get("recipe_sections", "extend")
    assert entry.plugin == "frankenmodel" and entry.extra["command"] == "extend"
    recipe = load_recipe("frankenmodel_fashion_mnist")
    assert section(recipe, "extend").rehearsal == 20


# --- typed plugin options ---------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"widths": ["a"]}, "model.widths.0 must be an integer, got str 'a'"),
    ({"widths": 4}, "model.widths must be a list, got int 4"),
    ({"act": "gelu"}, "model.act is 'gelu'; valid: relu, tanh"),
    ({"scale": "x"}, "model.scale must be a number or null, got str 'x'"),
    ({"scale": True}, "model.scale must be a number or null, got True"),
    ({"widht": [4]}, "unknown option model.widht; valid: act, scale, widths"),
])
def test_every_annotated_option_type_is_checked(third_party, tiny_raw, options, message):
    tiny_raw["model"] = {"name": "boxy", **options}
    assert _refused(tiny_raw, third_party) == message


def test_options_are_validated_not_rewritten(third_party, tiny_raw):
    tiny_raw["model"] = {"name": "boxy", "widths": [4, 4], "scale": 1, "act": "tanh"}
    recipe = validate(tiny_raw)
    before = recipe.hash()
    check_against_plugins(recipe, third_party)
    assert recipe["model"]["scale"] == 1 and type(recipe["model"]["scale"]) is int
    assert recipe.hash() == before


def test_a_bundled_factory_refuses_a_wrong_type(pm, tiny_raw):
    tiny_raw["model"]["hidden"] = "64, 32"
    assert _refused(tiny_raw, get_registry(pm)) == "model.hidden must be a list, got str '64, 32'"
    tiny_raw["model"]["hidden"] = [64, 32]
    tiny_raw["callbacks"] = [{"name": "gradual_pruning", "target": 0.5, "end_step": "late"}]
    assert _refused(tiny_raw, get_registry(pm)) == "callbacks.gradual_pruning.end_step must be an integer or null, got str 'late'"


def test_an_options_model_replaces_the_signature(third_party, tiny_raw):
    tiny_raw["model"] = {"name": "boxy_declared", "depth": 3}
    check_against_plugins(validate(tiny_raw), third_party)
    tiny_raw["model"]["depth"] = 0
    assert _refused(tiny_raw, third_party) == "model.depth must be >= 1, got 0"
    tiny_raw["model"] = {"name": "boxy_declared", "width": 3}
    assert _refused(tiny_raw, third_party) == "unknown option model.width; valid: depth"


def test_a_criterion_options_model_checks_values(third_party, tiny_raw):
    assert plugin_options(third_party.get("criteria", "scaled")) == {"alpha"}
    tiny_raw["lottery"].update(criterion="scaled", criterion_options={"alpha": 2})
    check_against_plugins(validate(tiny_raw), third_party)
    tiny_raw["lottery"]["criterion_options"] = {"alpha": -1.0}
    assert _refused(tiny_raw, third_party) == "lottery.criterion_options.alpha must be > 0, got -1.0"
    tiny_raw["lottery"]["criterion_options"] = {"alpah": 1.0}
    assert _refused(tiny_raw, third_party) == "unknown option lottery.criterion_options.alpah for criterion 'scaled' (did you mean 'alpha'?); valid: alpha"


# --- hash markers and layering ------------------------------------------------------------------


def _marked(model, marker) -> set[str]:
    return {name for name, field in model.model_fields.items() if marker in field.metadata}


def test_the_hash_reads_its_rules_from_markers_on_the_fields(tiny_raw):
    """Which keys are hashed is declared where the key is; these are the keys run folders
    were made with, so the sets must not change (tests/test_golden.py pins the hashes)."""
    assert _marked(RecipeModel, Unhashed) == {"name", "description", "tracking", "checkpoint_every_n_steps", "steps_per_call", "vectorize_trials"}
    assert _marked(RecipeModel, HashedUnlessDefault) == {"callbacks", "init", "sweep"}
    assert _marked(SECTIONS["data"], HashedUnlessDefault) == {"order_seed", "classes", "augment"}
    assert _marked(SECTIONS["data"], Unhashed) == {"workers"}
    assert _marked(SECTIONS["trainer"], Unhashed) == _marked(SECTIONS["trainer"], GivenOnly) == {"enable_progress_bar"}
    base = validate(tiny_raw)
    for key, value in {"description": "x", "steps_per_call": 7, "checkpoint_every_n_steps": 3, "tracking": "wandb"}.items():
        assert validate({**tiny_raw, key: value}).hash() == base.hash(), key
    older = {k: v for k, v in base.to_dict().items() if k not in ("callbacks", "init", "sweep")}
    older["data"] = {k: v for k, v in older["data"].items() if k not in ("order_seed", "classes")}
    assert type(base)(older).hash() == base.hash()
    assert "enable_progress_bar" not in validate({**tiny_raw, "trainer": {"max_steps": 60}})["trainer"]


def test_the_config_package_loads_no_torch_and_no_plugin_layer():
    """Config sits low: a recipe mistake is reported before torch loads, and the layers
    above it (plugins, lottery, engines, commands) are not needed to read a recipe."""
    code = ("import sys, lth_core; before = set(sys.modules); import lth_core.config; "
            "bad = [m for m in set(sys.modules) - before if m.split('.')[0] in ('torch', 'pytorch_lightning', 'lightning') "
            "or m.startswith(('lth_core.plugin_api', 'lth_core.lottery', 'lth_core.engines', 'lth_core.commands'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent, check=True)
    assert out.stdout.strip() == "[]"
