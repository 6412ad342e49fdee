"""Recipes: every mistake a user can make in a YAML file is one clear LthError.

A lottery runs for minutes to hours; a typo must be caught before the first step and
explained in one line that names the key and what would have been valid.
"""

from __future__ import annotations

import copy
import inspect
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, registered
from lth_core import hookimpl
from lth_core.commands import cli
from lth_core.config.yaml_io import parse_yaml
from lth_core.errors import LthError
from lth_core.plugin_api.registry import get_registry
from lth_core.config import (
    MAX_DEPTH,
    MAX_NODES,
    RESERVED_TRAINER_KEYS,
    SECTIONS,
    TOP_LEVEL,
    Recipe,
    apply_overrides,
    bundled_recipes,
    load_recipe,
    parse_override,
    validate,
)
from lth_core.plugin_api.options import check_against_plugins, plugin_options

#: Each core section's keys, from its model.
FIELDS = {name: list(model.model_fields) for name, model in SECTIONS.items()}


def _write(tmp_path: Path, raw: dict | str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def _error(raw: dict) -> str:
    with pytest.raises(LthError) as exc:
        validate(raw, source="r.yaml")
    return str(exc.value)


# --- the bundled recipe ---------------------------------------------------------------


def test_quickstart_validates_against_schema_and_installed_plugins(pm) -> None:
    """The recipe a new user runs first must be valid, by name and by path."""
    assert "quickstart" in bundled_recipes()
    recipe = load_recipe("quickstart")
    check_against_plugins(recipe, get_registry(pm))
    by_path = load_recipe(bundled_recipes()["quickstart"])
    assert by_path.data == recipe.data
    raw = yaml.safe_load(bundled_recipes()["quickstart"].read_text())
    assert recipe["lottery"]["rounds"] == raw["lottery"]["rounds"]
    assert recipe["lottery"]["rate"] == raw["lottery"]["rate"]
    assert [c["name"] for c in recipe["controls"]] == raw["controls"]


def test_tiny_recipe_fills_defaults(tiny_raw: dict) -> None:
    """Omitted keys get the schema's defaults, so a recipe file can stay short."""
    del tiny_raw["optimizer"]
    recipe = validate(tiny_raw)
    assert recipe["optimizer"]["name"] == SECTIONS["optimizer"].model_fields["name"].default
    assert recipe["lottery"]["scope"] == "layer" and recipe["lottery"]["mode"] == "iterative"
    assert recipe["tracking"]["backend"] == "none"


# --- keys, types and values -------------------------------------------------------------


def test_unknown_top_level_key_names_key_and_choices(pm, tiny_raw: dict) -> None:
    """A misspelt section must not be silently ignored. A top-level key lth does not know
    may be a plugin's section, so it is refused with the plugins, before anything runs,
    naming lth's keys and the installed sections."""
    tiny_raw["lotery"] = {"rate": 0.5}
    recipe = validate(tiny_raw, source="r.yaml")
    with pytest.raises(LthError) as exc:
        check_against_plugins(recipe, get_registry(pm))
    msg = str(exc.value)
    assert msg.startswith("r.yaml: ") and "'lotery'" in msg
    for key in [*TOP_LEVEL, "extend"]:
        assert key in msg


def test_unknown_key_in_section_names_key_and_choices(tiny_raw: dict) -> None:
    """``lottery.ratez`` would otherwise run the default rate for hours."""
    tiny_raw["lottery"]["ratez"] = 0.3
    msg = _error(tiny_raw)
    assert "lottery.ratez" in msg
    for key in FIELDS["lottery"]:
        assert key in msg


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("lottery", "rounds", "five", "integer"),
        ("data", "batch_size", 1.5, "integer"),
        ("lottery", "rounds", True, "integer"),
        ("lottery", "rate", True, "number"),
        ("optimizer", "lr", False, "number"),
        ("data", "batch_size", True, "integer"),
        ("optimizer", "nesterov", "yes", "true/false"),
        ("lottery", "layer_rates", [0.1], "mapping"),
    ],
)
def test_wrong_type_names_key_and_expected_type(tiny_raw: dict, section: str, key: str, value, expected: str) -> None:
    """Wrong types (booleans included, which Python counts as ints) are refused by name."""
    tiny_raw[section][key] = value
    msg = _error(tiny_raw)
    assert f"{section}.{key}" in msg
    assert expected in msg
    assert repr(value) in msg


@pytest.mark.parametrize("rate", [0, 0.0, 1, 1.0, 1.5, -0.1, float("nan")])
def test_rate_outside_open_unit_interval(tiny_raw: dict, rate: float) -> None:
    """Pruning 0% or 100% per round is meaningless; NaN must not slip through comparisons."""
    tiny_raw["lottery"]["rate"] = rate
    msg = _error(tiny_raw)
    assert "lottery.rate" in msg and "(0, 1)" in msg


@pytest.mark.parametrize("rate", [1e-6, 0.2, 0.999])
def test_rate_inside_unit_interval_accepted(tiny_raw: dict, rate: float) -> None:
    """The boundary check must not refuse valid rates."""
    tiny_raw["lottery"]["rate"] = rate
    assert validate(tiny_raw)["lottery"]["rate"] == rate


def test_val_size_count_or_fraction(tiny_raw: dict) -> None:
    """data.val_size is a fraction (0.1) or a count (500); a count must stay a count."""
    tiny_raw["data"]["val_size"] = 500
    value = validate(tiny_raw)["data"]["val_size"]
    assert value == 500 and isinstance(value, int)
    tiny_raw["data"]["val_size"] = 0.25
    assert validate(tiny_raw)["data"]["val_size"] == 0.25
    for bad in (0, 1.5, -3):
        tiny_raw["data"]["val_size"] = bad
        assert "data.val_size" in _error(tiny_raw)


def test_number_fields_store_floats(tiny_raw: dict) -> None:
    """``lr: 1`` and ``lr: 1.0`` are the same recipe (same type, same hash)."""
    tiny_raw["optimizer"]["lr"] = 1
    as_int = validate(tiny_raw)
    tiny_raw["optimizer"]["lr"] = 1.0
    assert isinstance(as_int["optimizer"]["lr"], float)
    assert as_int.hash() == validate(tiny_raw).hash()


def test_negative_rounds(tiny_raw: dict) -> None:
    """rounds: -1 is refused; rounds: 0 (dense only) is allowed."""
    tiny_raw["lottery"]["rounds"] = -1
    assert "lottery.rounds" in _error(tiny_raw)
    tiny_raw["lottery"]["rounds"] = 0
    assert validate(tiny_raw)["lottery"]["rounds"] == 0


@pytest.mark.parametrize(
    ("section", "key", "value", "valid"),
    [
        ("optimizer", "name", "rmsprop", ("adam", "adamw", "sgd")),
        ("lottery", "scope", "network", ("global", "layer")),
        ("lottery", "mode", "oneshot", ("iterative", "one_shot")),
        ("tracking", "backend", "tensorboard", ("none", "wandb")),
    ],
)
def test_unknown_choice_lists_valid_choices(tiny_raw: dict, section: str, key: str, value: str, valid: tuple) -> None:
    """Closed choices (optimizer, scope, mode, tracking backend) list what is accepted."""
    if section == "tracking":
        tiny_raw["tracking"] = {"backend": value}
    else:
        tiny_raw[section][key] = value
    msg = _error(tiny_raw)
    assert f"{section}.{key}" in msg and repr(value) in msg
    assert ", ".join(sorted(valid)) in msg


def test_unknown_trainer_key_checked_against_lightning_signature(tiny_raw: dict) -> None:
    """Trainer options come from Lightning's own signature, so a typo is caught and
    every real Trainer argument stays available without lth listing them."""
    tiny_raw["trainer"]["max_stepz"] = 10
    msg = _error(tiny_raw)
    assert "trainer.max_stepz" in msg
    assert "max_steps" in msg and "gradient_clip_val" in msg
    real = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"} - RESERVED_TRAINER_KEYS
    ok = copy.deepcopy(tiny_raw)
    del ok["trainer"]["max_stepz"]
    ok["trainer"].update({"gradient_clip_val": 1.0, "deterministic": True})
    assert {"gradient_clip_val", "deterministic"} <= real
    recipe = validate(ok)
    assert recipe["trainer"]["gradient_clip_val"] == 1.0


@pytest.mark.parametrize("key", sorted(RESERVED_TRAINER_KEYS))
def test_reserved_trainer_key_refused(tiny_raw: dict, key: str) -> None:
    """The lottery sets logger/callbacks/... itself; a recipe overriding them would break it."""
    tiny_raw["trainer"][key] = None
    msg = _error(tiny_raw)
    assert f"trainer.{key}" in msg


def test_trainer_val_check_interval_must_be_steps(tiny_raw: dict) -> None:
    """A fractional val_check_interval would change what "early-stop step" means."""
    tiny_raw["trainer"]["val_check_interval"] = 0.5
    assert "trainer.val_check_interval" in _error(tiny_raw)


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("max_steps", "abc", ("'abc'", "whole number of steps", "-1")),
        ("max_steps", 0, ("trainer.max_steps is 0",)),
        ("max_steps", None, ("trainer.max_steps is None",)),
        ("max_epochs", "x", ("'x'", "epochs")),
        ("max_epochs", 1.5, ("1.5",)),
        ("precision", 7, ("trainer.precision is 7", "16-mixed", "bf16", "32-true")),
        ("precision", 16.0, ("16.0",)),
        ("gradient_clip_val", "x", ("'x'", "number >= 0")),
        ("gradient_clip_val", -1.0, ("-1.0",)),
        ("gradient_clip_val", True, ("True",)),
        ("val_check_interval", -3, ("-3", "whole number of steps >= 1")),
        ("devices", "foo", ("'foo'", "auto", "[0, 1]")),
        ("devices", 0, ("trainer.devices is 0",)),
        ("devices", [0, 0], ("[0, 0]",)),
        ("accelerator", "gpuu", ("'gpuu'", "cpu", "auto")),
        ("accumulate_grad_batches", 0, ("batches >= 1",)),
        ("limit_val_batches", 1.5, ("1.5", "[0.0, 1.0]")),
        ("max_time", "12h", ("DD:HH:MM:SS",)),
        ("max_time", {"hourz": 1}, ("{hours: 12}",)),
        ("deterministic", "maybe", ("true, false, warn or null",)),
        ("gradient_clip_algorithm", "l2", ("norm, value or null",)),
        ("profiler", "fancy", ("simple",)),
        ("enable_model_summary", 3, ("true/false or null", "int 3")),
        ("detect_anomaly", "yes", ("true/false", "'yes'")),
    ],
)
def test_trainer_values_checked_at_load(tiny_raw: dict, key: str, value, needles: tuple) -> None:
    """A trainer value Lightning would refuse inside the first Trainer (a traceback, after
    the run folder exists) is refused by validate, naming the key, the value and what is valid."""
    tiny_raw["trainer"][key] = value
    msg = _error(tiny_raw)
    assert f"trainer.{key}" in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize(
    "changes",
    [
        {"precision": "16-mixed"}, {"precision": 32}, {"precision": "bf16"}, {"gradient_clip_val": 0.5},
        {"gradient_clip_val": 1}, {"gradient_clip_algorithm": "value"}, {"devices": "auto"}, {"devices": -1},
        {"devices": [0]}, {"devices": "2"}, {"devices": "0,1"}, {"accelerator": "cpu"}, {"deterministic": "warn"},
        {"max_steps": -1, "max_epochs": 3}, {"max_steps": -1, "max_time": "00:00:01:00"}, {"max_time": {"minutes": 5}},
        {"max_epochs": None}, {"limit_val_batches": 0.5}, {"limit_val_batches": 3}, {"accumulate_grad_batches": 2},
        {"log_every_n_steps": 0}, {"benchmark": None}, {"detect_anomaly": False}, {"profiler": None},
    ],
)
def test_valid_trainer_values_pass_unchanged(tiny_raw: dict, changes: dict) -> None:
    """The checks refuse only what Lightning refuses: common settings pass, stored as written."""
    tiny_raw["trainer"].update(changes)
    trainer = validate(tiny_raw)["trainer"]
    assert {k: trainer[k] for k in changes} == changes


def test_training_that_never_ends_is_refused(tiny_raw: dict) -> None:
    """max_steps: -1 with the default max_epochs: -1 would train round 0 forever."""
    tiny_raw["trainer"]["max_steps"] = -1
    msg = _error(tiny_raw)
    assert "trainer.max_steps" in msg and "trainer.max_epochs" in msg and "never end" in msg


def test_trainer_checks_leave_hashes_alone(tiny_raw: dict) -> None:
    """The checks add no defaults: the trainer section is what the recipe wrote plus the
    defaults it always had, so a run folder's hash does not change."""
    trainer = validate(tiny_raw)["trainer"]
    assert trainer == {"accelerator": "auto", "devices": 1, "max_epochs": -1, **TINY["trainer"]}


@pytest.mark.parametrize(
    ("path", "value", "kind"),
    [
        (("model", "name"), "resnet9000", "models"),
        (("data", "name"), "imagenet42", "datasets"),
        (("lottery", "criterion"), "magnitud", "criteria"),
        (("lottery", "rewind"), "rewind_to_lr", "rewind_policies"),
    ],
)
def test_unknown_plugin_names_list_installed(pm, tiny_raw: dict, path: tuple, value: str, kind: str) -> None:
    """Plugin names are checked against what is really installed, and the message lists it."""
    tiny_raw[path[0]][path[1]] = value
    recipe = validate(tiny_raw)
    registry = get_registry(pm)
    with pytest.raises(LthError) as exc:
        check_against_plugins(recipe, registry)
    msg = str(exc.value)
    assert repr(value) in msg
    installed = registry.names(kind)
    assert installed, f"no {kind} installed?"
    assert ", ".join(installed) in msg


def test_unknown_control_lists_installed_controls(pm, tiny_raw: dict) -> None:
    """A misspelt control must fail before the first round, not after hours of training."""
    tiny_raw["controls"] = ["random_reinit", "random_prunning"]
    recipe = validate(tiny_raw)
    registry = get_registry(pm)
    with pytest.raises(LthError) as exc:
        check_against_plugins(recipe, registry)
    msg = str(exc.value)
    assert "'random_prunning'" in msg
    assert "random_pruning" in msg and "random_reinit" in msg
    tiny_raw["controls"] = [{"name": "mine", "criterion": "nosuch"}]
    with pytest.raises(LthError, match="nosuch"):
        check_against_plugins(validate(tiny_raw), registry)


def test_control_with_unknown_key(tiny_raw: dict) -> None:
    """Control specs have a closed set of keys too."""
    tiny_raw["controls"] = [{"name": "mine", "critrion": "random"}]
    msg = _error(tiny_raw)
    assert "critrion" in msg and "criterion" in msg


def test_unknown_model_option_checked_against_factory_signature(pm, tiny_raw: dict) -> None:
    """``model:`` options are the factory's keyword parameters: a typo names the real ones."""
    tiny_raw["model"]["hiden"] = [8]
    registry = get_registry(pm)
    with pytest.raises(LthError) as exc:
        check_against_plugins(validate(tiny_raw), registry)
    msg = str(exc.value)
    assert "model.hiden" in msg
    params = set(inspect.signature(registry.get("models", "mlp").obj).parameters) - {"input_shape", "num_classes"}
    for p in params:
        assert p in msg


def test_model_option_type_checked_from_annotation(pm, tiny_raw: dict) -> None:
    """A float-annotated option refuses a string."""
    tiny_raw["model"]["dropout"] = "lots"
    with pytest.raises(LthError, match="model.dropout"):
        check_against_plugins(validate(tiny_raw), get_registry(pm))


def test_unknown_data_option(pm, tiny_raw: dict) -> None:
    """``data:`` options go to the data-set factory and are validated the same way."""
    tiny_raw["data"] = {"name": "fashion_mnist", "rooot": "/tmp"}
    with pytest.raises(LthError) as exc:
        check_against_plugins(validate(tiny_raw), get_registry(pm))
    msg = str(exc.value)
    assert "data.rooot" in msg and "root" in msg and "download" in msg


def test_option_to_a_factory_without_options(pm, tiny_raw: dict) -> None:
    """digits takes no options: the message must say so, not claim nothing is installed."""
    tiny_raw["data"]["flip"] = True
    with pytest.raises(LthError) as exc:
        check_against_plugins(validate(tiny_raw), get_registry(pm))
    msg = str(exc.value)
    assert "data.flip" in msg
    assert "none installed" not in msg


# --- criterion and rewind options; controls -------------------------------------------------


def _plugin_error(recipe_raw: dict, pm) -> str:
    with pytest.raises(LthError) as exc:
        check_against_plugins(validate(recipe_raw), get_registry(pm))
    return str(exc.value)


def test_options_for_a_criterion_that_reads_none_are_refused(pm, tiny_raw: dict) -> None:
    """magnitude never reads lottery.criterion_options: a key there is a typo or a
    leftover that would otherwise pass silently for hours."""
    tiny_raw["lottery"]["criterion_options"] = {"batch_size": 64}
    msg = _plugin_error(tiny_raw, pm)
    assert "lottery.criterion_options.batch_size" in msg and "'magnitude'" in msg and "no options" in msg
    tiny_raw["lottery"].update(criterion="random", criterion_options={}, rewind_options={"to": "5it"})
    msg = _plugin_error(tiny_raw, pm)
    assert "lottery.rewind_options.to" in msg and "'init'" in msg


def test_options_a_bundled_plugin_reads_are_accepted(pm, tiny_raw: dict) -> None:
    """Bundled criteria and rewind policies declare the options they read: snip's
    batch_size and seed pass, synflow's iterations does not reach snip; late rewinding's
    `to` passes when only a control rewinds late."""
    registry = get_registry(pm)
    assert plugin_options(registry.get("criteria", "snip")) == {"batch_size", "seed"}
    assert plugin_options(registry.get("criteria", "magnitude")) == frozenset()
    tiny_raw["lottery"].update(criterion="snip", criterion_options={"batch_size": 64, "seed": 1})
    check_against_plugins(validate(tiny_raw), registry)
    tiny_raw["lottery"]["criterion_options"] = {"iterations": 10}
    msg = _plugin_error(tiny_raw, pm)
    assert "lottery.criterion_options.iterations" in msg and "valid: batch_size, seed" in msg
    tiny_raw["lottery"].update(criterion="magnitude", criterion_options={}, rewind="init", rewind_options={"to": "12it"})
    tiny_raw["controls"] = [{"name": "late12", "rewind": "late"}]
    check_against_plugins(validate(tiny_raw), registry)


class OptionPlugins:
    """A criterion declaring its options, one reading undeclared ones, and broken controls."""

    @hookimpl
    def register_criteria(self, register):
        def declared(model, mask, context):
            return {n: m.float() * context.options.get("alpha", 1.0) for n, m in mask.items()}

        def undeclared(model, mask, context):
            return {n: m.float() * context.options.get("anything", 1.0) for n, m in mask.items()}

        register("declared_options", declared, options=["alpha"])
        register("undeclared_options", undeclared)

    @hookimpl
    def register_controls(self, register):
        register("control_missing_criterion", criterion="no_such_criterion", rewind=None)
        register("control_missing_rewind", criterion=None, rewind="no_such_rewind")


@pytest.fixture
def option_plugins(pm):
    with registered(pm, OptionPlugins(), "option-plugins"):
        yield pm


def test_declared_criterion_options_are_checked(option_plugins, tiny_raw: dict) -> None:
    """A criterion registered with ``options=[...]`` gets exactly those; one that reads
    options it does not declare is trusted to check them itself."""
    tiny_raw["lottery"].update(criterion="declared_options", criterion_options={"alpha": 2.0})
    check_against_plugins(validate(tiny_raw), get_registry(option_plugins))
    tiny_raw["lottery"]["criterion_options"] = {"alpah": 2.0}
    msg = _plugin_error(tiny_raw, option_plugins)
    assert "lottery.criterion_options.alpah" in msg and "valid: alpha" in msg
    tiny_raw["lottery"].update(criterion="undeclared_options", criterion_options={"whatever": 1})
    check_against_plugins(validate(tiny_raw), get_registry(option_plugins))


@pytest.mark.parametrize(
    ("control", "needles"),
    [
        ("control_missing_criterion", ("'control_missing_criterion'", "'option-plugins'", "'no_such_criterion'", "magnitude")),
        ("control_missing_rewind", ("'control_missing_rewind'", "'no_such_rewind'", "reinit")),
        ({"name": "mine", "rewind": "no_such_rewind"}, ("'mine'", "'no_such_rewind'", "init")),
    ],
)
def test_a_control_is_fully_checked_at_load(option_plugins, tiny_raw: dict, control, needles: tuple) -> None:
    """A control's criterion and rewind policy, its own or the ones its plugin registered,
    are looked up before round 0 trains, not when the first control runs after it."""
    tiny_raw["controls"] = ["random_reinit", control]
    msg = _plugin_error(tiny_raw, option_plugins)
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize(
    ("controls", "needle"),
    [
        ([{"name": "../../elsewhere", "rewind": "reinit"}], "not a folder name"),
        ([{"name": "ticket", "rewind": "reinit"}], "lottery's own run"),
        (["random_reinit", "random_reinit"], "listed twice"),
        ([{"name": "mine", "criterion": ["random"]}], "criterion must be a registered criterion name"),
        ([""], "is empty"),
    ],
)
def test_control_entries_refused_by_validate(tiny_raw: dict, controls: list, needle: str) -> None:
    """Control names become folders (``round_k/control_NAME``) and summary keys."""
    tiny_raw["controls"] = controls
    assert needle in _error(tiny_raw)


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "tab\there"])
def test_recipe_name_must_be_a_folder_name(tiny_raw: dict, name: str) -> None:
    """``name`` makes runs/NAME-HASH: a slash or .. would write results elsewhere."""
    tiny_raw["name"] = name
    msg = _error(tiny_raw)
    assert repr(name) in msg and "\n" not in msg


@pytest.mark.parametrize(("rounds", "needle"), [(-1, ">= 0"), (1.5, "integer"), ("3", "integer"), (True, "integer")])
def test_rounds_negative_or_not_whole_refused_zero_kept(tiny_raw: dict, rounds, needle: str) -> None:
    """rounds: 0 is the dense baseline (bundled recipes use it); below 0 or not an integer is a mistake."""
    tiny_raw["lottery"]["rounds"] = rounds
    assert needle in _error(tiny_raw)
    tiny_raw["lottery"]["rounds"] = 0
    assert validate(tiny_raw)["lottery"]["rounds"] == 0


# --- YAML files -------------------------------------------------------------------------


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    """A YAML syntax error points at the line, as an editor would."""
    path = _write(tmp_path, "model: mlp\ndata: digits\nlottery:\n  rate: [0.2\n  rounds: 3\n")
    with pytest.raises(LthError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert "not valid YAML" in msg and str(path) in msg
    assert "line 5" in msg or "line 4" in msg


def test_bad_indentation_reports_its_line(tmp_path: Path) -> None:
    """The reported line is the one with the mistake."""
    path = _write(tmp_path, "model: mlp\ndata: digits\nlottery:\n  rate: 0.2\n rounds: 3\n")
    with pytest.raises(LthError, match="line 5"):
        load_recipe(path)


def test_empty_file(tmp_path: Path) -> None:
    """An empty recipe says so instead of failing on ``None``."""
    for text in ("", "# only a comment\n"):
        path = _write(tmp_path, text)
        with pytest.raises(LthError, match="empty"):
            load_recipe(path)


def test_recipe_that_is_not_a_mapping(tmp_path: Path) -> None:
    """A list at the top level is refused with the type named."""
    with pytest.raises(LthError, match="mapping"):
        load_recipe(_write(tmp_path, "- model\n- data\n"))


def test_python_object_tag_is_refused_and_not_executed(tmp_path: Path) -> None:
    """Recipes are shared files: yaml.safe_load must refuse tags that run code."""
    target = tmp_path / "created_by_yaml"
    path = _write(tmp_path, f"model: mlp\ndata: digits\nname: !!python/object/apply:os.mkdir ['{target}']\n")
    with pytest.raises(LthError) as exc:
        load_recipe(path)
    assert "not valid YAML" in str(exc.value)
    assert "line 3" in str(exc.value)
    assert not target.exists()


def test_a_repeated_key_is_refused_naming_it_and_its_lines(tmp_path: Path, capsys) -> None:
    """Three ``seed:`` lines would run with the last: refused, naming the key and every
    line, at the top level, inside a section, in flow style and in a ``--set`` value."""
    path = _write(tmp_path, "seed: 1\nmodel: mlp\nseed: 2\ndata: digits\nseed: 3\n", name="seeds.yaml")
    with pytest.raises(LthError) as exc:
        load_recipe(path)
    assert str(exc.value) == (f"{path} is not valid YAML: key 'seed' is given 3 times, on lines 1, 3 and 5; "
                              "a recipe gives each key once (YAML keeps only the last)")
    nested = _write(tmp_path, "model: mlp\ndata: digits\nlottery:\n  rate: 0.5\n  rounds: 2\n  rate: 0.2\n")
    with pytest.raises(LthError, match=r"key 'rate' is given 2 times, on lines 4 and 6;"):
        load_recipe(nested)
    flow = _write(tmp_path, "model: {name: mlp, hidden: [8], hidden: [16]}\ndata: digits\n")
    with pytest.raises(LthError, match=r"key 'hidden' is given 2 times, at 1:20, 1:33 \(line:column\);"):
        load_recipe(flow)
    with pytest.raises(LthError, match=r"^--set 'model=\{name: mlp, name: conv2\}': the value is not valid YAML: key 'name' is given 2 times"):
        load_recipe(_write(tmp_path, "model: mlp\ndata: digits\n"), ["model={name: mlp, name: conv2}"])
    assert cli.main(["run", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"lth: error: {exc.value}"]


def test_merge_keys_still_override_as_yaml_says() -> None:
    """Only keys written twice in one mapping are refused: a key beside ``<<: *base``
    overrides the merged one, and the result is exactly ``yaml.safe_load``'s."""
    text = "base: &b {name: mlp, hidden: [8]}\nmodel:\n  <<: *b\n  hidden: [16]\nlist: [1, 1]\n"
    assert parse_yaml(text, "t") == yaml.safe_load(text)
    assert parse_yaml(text, "t")["model"] == {"name": "mlp", "hidden": [16]}


def test_missing_recipe_lists_bundled(tmp_path: Path) -> None:
    """A wrong path names the bundled recipes one could have meant."""
    with pytest.raises(LthError) as exc:
        load_recipe(tmp_path / "nope.yaml")
    assert "not found" in str(exc.value) and "quickstart" in str(exc.value)


def test_scientific_notation_is_a_number(tmp_path: Path, tiny_raw: dict) -> None:
    """``lr: 1e-3`` is a string to YAML 1.1 (PyYAML); every PyTorch user writes it anyway."""
    text = yaml.safe_dump(tiny_raw).replace("lr: 0.003", "lr: 3e-3")
    assert "lr: 3e-3" in text
    assert load_recipe(_write(tmp_path, text))["optimizer"]["lr"] == pytest.approx(3e-3)
    assert load_recipe(_write(tmp_path, text), ["optimizer.lr=1e-4"])["optimizer"]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("seed: 2001-13-45\n", "month must be in 1..12"),
        ("seed: !!int abc\n", "invalid literal"),
        ("seed: !!bool maybe\n", "KeyError"),
        ("seed: !!timestamp x\n", "AttributeError"),
        ("seed: " + "[" * 5000 + "]" * 5000 + "\n", "nests too deeply"),
    ],
)
def test_yaml_values_pyyaml_cannot_build_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    """PyYAML raises ValueError, KeyError, AttributeError or RecursionError for these, not
    YAMLError: each is one LthError line naming the file."""
    path = _write(tmp_path, "model: mlp\ndata: digits\n" + text)
    with pytest.raises(LthError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert str(path) in msg and "not valid YAML" in msg and needle in msg and "\n" not in msg


def test_alias_bomb_is_refused_in_one_line(tmp_path: Path) -> None:
    """The billion laughs: a few hundred bytes of anchors, each a list of ten aliases of the
    one before, expand to 10^8 values. Refused before anything copies, hashes or walks them."""
    lines = ["model: mlp", "data: digits", "a0: &a0 [lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = _write(tmp_path, "\n".join(lines) + "\ndescription: *a8\n")
    assert path.stat().st_size < 1000
    with pytest.raises(LthError) as exc:
        load_recipe(path)
    assert str(exc.value) == f"{path}: the recipe expands to more than {MAX_NODES} values (YAML aliases of aliases?); a recipe has a few hundred"


def test_alias_inside_itself_and_deep_nesting_are_refused() -> None:
    """``&a [*a]`` is a list that holds itself: refused, not walked forever."""
    loop: list = []
    loop.append(loop)
    for value in (loop, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]):
        with pytest.raises(LthError, match=f"more than {MAX_DEPTH} levels"):
            validate({"model": {"name": "mlp", "hidden": value}, "data": "digits"})
    with pytest.raises(LthError, match="levels"):
        parse_override("model.hidden=&a [*a]")


def test_recipe_file_that_is_not_utf8_or_too_big(tmp_path: Path) -> None:
    """Binary junk and huge files are not recipes: one line each, no UnicodeDecodeError."""
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"model: mlp\ndata: \xff\xfe digits\n")
    with pytest.raises(LthError, match="not UTF-8 text"):
        load_recipe(path)
    path.write_text("description: x\n" + "#" * (1 << 20))
    with pytest.raises(LthError, match="bytes; a recipe is a YAML text file"):
        load_recipe(path)


@pytest.mark.parametrize(
    "text",
    [
        '"lottery\\nrate": 0.2\n',
        'lottery: {"ra\\nte": 0.2}\n',
        'lottery: {layer_rates: {"fc\\n1": 2.0}}\n',
        'trainer: {"max\\nsteps": 3}\n',
        'model: {name: mlp, "hid\\u2028den": [8]}\n',
    ],
)
def test_key_with_a_line_break_gives_one_line(pm, tmp_path: Path, text: str) -> None:
    """A YAML key holding a newline (or U+2028) is shown with repr, so the message stays one line."""
    path = _write(tmp_path, "data: digits\n" + ("" if text.startswith("model") else "model: mlp\n") + text)
    with pytest.raises(LthError) as exc:
        check_against_plugins(load_recipe(path), get_registry(pm))
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1, msg
    assert "\\n" in msg or "\\u2028" in msg


# --- --set overrides --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("lottery.rate=0.1", ["lottery", "rate"], 0.1),
        ("lottery.rounds=3", ["lottery", "rounds"], 3),
        ("model.hidden=[16, 8]", ["model", "hidden"], [16, 8]),
        ("trainer.enable_progress_bar=true", ["trainer", "enable_progress_bar"], True),
        ("data.subset=null", ["data", "subset"], None),
        ("name=run a", ["name"], "run a"),
        ("lottery.layer_rates={last: 0.1}", ["lottery", "layer_rates"], {"last": 0.1}),
        ("description=a=b", ["description"], "a=b"),
    ],
)
def test_parse_override_reads_yaml_values(text: str, path: list, value) -> None:
    """Values after ``=`` are YAML, so numbers, lists and booleans keep their types."""
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["lottery.rate", "lottery..rate=1", ".rate=1", "lottery.rate=[1,"])
def test_parse_override_malformed(text: str) -> None:
    """A malformed --set is an LthError quoting it."""
    with pytest.raises(LthError) as exc:
        parse_override(text)
    assert repr(text) in str(exc.value)


def test_apply_overrides_nested_and_creates_sections(tiny_raw: dict) -> None:
    """Overrides reach nested keys, create missing sections and leave the input untouched."""
    before = copy.deepcopy(tiny_raw)
    del tiny_raw["optimizer"]
    out = apply_overrides(tiny_raw, ["lottery.rate=0.3", "optimizer.lr=0.01", "lottery.layer_rates.last=0.1", "seed=7"])
    assert out["lottery"]["rate"] == 0.3
    assert out["optimizer"] == {"lr": 0.01}
    assert out["lottery"]["layer_rates"] == {"last": 0.1}
    assert out["seed"] == 7
    assert "optimizer" not in tiny_raw and tiny_raw["lottery"]["rate"] == before["lottery"]["rate"]


def test_apply_overrides_unknown_top_level_key(pm, tiny_raw: dict) -> None:
    """``--set lotery.rate=...`` is refused with the valid top-level keys (with the plugins,
    which may register a section of that name: ``--set extend.rehearsal=20``)."""
    raw = apply_overrides(tiny_raw, ["lotery.rate=0.3"])
    with pytest.raises(LthError) as exc:
        check_against_plugins(validate(raw), get_registry(pm))
    msg = str(exc.value)
    assert "'lotery'" in msg and "lottery" in msg and "trainer" in msg


def test_apply_overrides_through_a_scalar(tiny_raw: dict) -> None:
    """Setting a sub-key of a scalar is an LthError, not a TypeError."""
    with pytest.raises(LthError, match="not a mapping"):
        apply_overrides(tiny_raw, ["seed.x=1"])


def test_load_recipe_with_overrides_validates_result(tmp_path: Path, tiny_raw: dict) -> None:
    """Overrides are validated like the file: a bad value or a typo in a key is caught."""
    path = _write(tmp_path, tiny_raw)
    recipe = load_recipe(path, ["lottery.rate=0.25", "model.hidden=[16]", "trainer.max_steps=5"])
    assert recipe["lottery"]["rate"] == 0.25
    assert recipe["model"]["hidden"] == [16]
    assert recipe["trainer"]["max_steps"] == 5
    assert recipe.name == "tiny"
    with pytest.raises(LthError, match="lottery.rate"):
        load_recipe(path, ["lottery.rate=2"])
    with pytest.raises(LthError, match="lottery.ratez"):
        load_recipe(path, ["lottery.ratez=0.1"])
    with pytest.raises(LthError, match="lottery.rounds"):
        load_recipe(path, ["lottery.rounds=five"])


def test_recipe_name_defaults_to_file_stem(tmp_path: Path, tiny_raw: dict) -> None:
    """Without ``name:``, the file's stem names the run."""
    del tiny_raw["name"]
    assert load_recipe(_write(tmp_path, tiny_raw, "my-exp.yaml")).name == "my-exp"


# --- the recipe hash --------------------------------------------------------------------


def test_hash_stable_and_sensitive_to_results_only(tiny_raw: dict) -> None:
    """The hash decides whether a folder's tickets can be reused: it must change with
    anything that changes results and stay put for tracking and cosmetics."""
    base = validate(tiny_raw).hash()
    assert base == validate(copy.deepcopy(tiny_raw)).hash()
    assert base == Recipe(validate(tiny_raw).to_dict()).hash()
    reordered = dict(reversed(list(copy.deepcopy(tiny_raw).items())))
    assert validate(reordered).hash() == base

    changes = [
        ("lottery", "rate", 0.3),
        ("lottery", "rounds", 3),
        ("lottery", "scope", "global"),
        ("model", "hidden", [64, 16]),
        ("data", "batch_size", 16),
        ("optimizer", "lr", 0.01),
        ("trainer", "max_steps", 61),
    ]
    for section, key, value in changes:
        raw = copy.deepcopy(tiny_raw)
        raw[section][key] = value
        assert validate(raw).hash() != base, f"{section}.{key}"
    raw = copy.deepcopy(tiny_raw)
    raw["seed"] = 1
    assert validate(raw).hash() != base

    same = [
        {"tracking": {"backend": "wandb", "project": "other", "mode": "offline"}},
        {"description": "another description"},
    ]
    for patch in same:
        raw = copy.deepcopy(tiny_raw)
        raw.update(patch)
        assert validate(raw).hash() == base, patch
    raw = copy.deepcopy(tiny_raw)
    raw["trainer"]["enable_progress_bar"] = True
    assert validate(raw).hash() == base


# --- fuzz -------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["mlp", "digits", "adam", "global", "one_shot", "none", "wandb", "random_reinit"]),
)
_keys = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.booleans(), st.none())
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=6,
)
_trainer_keys = sorted(set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"})


def _section(section: str) -> st.SearchStrategy:
    known = list(FIELDS.get(section, {})) + (_trainer_keys if section == "trainer" else [])
    keys = st.one_of(st.sampled_from(known), _keys) if known else _keys
    return st.one_of(_values, st.dictionaries(keys, _values, max_size=6))


_controls = st.lists(
    st.one_of(_values, st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={"criterion": _values, "rewind": _values, 1: _values, "x": _values})),
    max_size=3,
)
_recipes = st.one_of(
    _values,
    st.fixed_dictionaries(
        {},
        optional={
            **{s: _section(s) for s in FIELDS},
            "name": _values,
            "seed": _values,
            "description": _values,
            "controls": st.one_of(_values, _controls),
            "bogus": _values,
            1: _values,
        },
    ),
    # mostly-valid recipes with one section scrambled reach the deeper checks
    st.builds(
        lambda section, content: {"model": {"name": "mlp"}, "data": {"name": "digits"}, section: content},
        st.sampled_from(sorted(FIELDS)),
        st.dictionaries(st.one_of(st.sampled_from(sorted({k for f in FIELDS.values() for k in f} | set(_trainer_keys))), _keys), _values, max_size=5),
    ),
    # valid sections plus random extra keys (plugin options are open-ended)
    st.builds(
        lambda model, data, lottery: {"model": {"name": "mlp", **model}, "data": {"name": "digits", **data}, "lottery": lottery},
        st.dictionaries(_keys, _values, max_size=3),
        st.dictionaries(_keys, _values, max_size=3),
        st.dictionaries(st.sampled_from(sorted(FIELDS["lottery"])), _values, max_size=3),
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_recipes)
def test_validate_never_crashes(raw) -> None:
    """Whatever YAML decodes to, validate returns a usable Recipe or raises LthError,
    never a TypeError/KeyError that would reach the user as a traceback."""
    try:
        recipe = validate(raw)
    except LthError as exc:
        assert str(exc)
        return
    assert isinstance(recipe, Recipe)
    assert len(recipe.hash()) == 12
    assert yaml.safe_load(yaml.safe_dump(recipe.to_dict(), sort_keys=False)) is not None  # as recipe.yaml is written
    lot = recipe["lottery"]
    assert 0 < lot["rate"] < 1 and lot["rounds"] >= 0
    assert math.isfinite(lot["rate"])


# --- fuzz: YAML text and --set strings through the real loader ---------------------------

#: A valid recipe that reaches every check: controls (registered and inline), a sweep,
#: trainer keys with rules, criterion and rewind options.
_RICH = {
    **copy.deepcopy(TINY),
    "controls": ["random_reinit", {"name": "mine", "criterion": "random", "rewind": "init"}],
    "sweep": {"lottery.rate": [0.3, 0.5]},
    "callbacks": [],
}
_RICH["trainer"].update(precision="32-true", gradient_clip_val=1.0, devices=1, accelerator="cpu", max_epochs=-1)
_RICH["lottery"].update(criterion="snip", criterion_options={"batch_size": 16})

#: Bits of YAML syntax and values PyYAML treats specially, to splice into recipe text.
_YAML_BITS = st.sampled_from([
    "\n", "  ", "- ", "[", "]", "{", "}", ", ", ": ", "&a ", "*a", "&a [*a]", "!!int ", "!!bool ", "!!float ",
    "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ", "? ", "|\n", ">\n", "'", '"',
    "# ", "2001-13-45", "1e400", ".nan", "~", "null", "\t", "\x00", "\u2028", "\"a\\nb\": 1", "---\n", "...\n",
    "trainer:\n  max_steps: abc\n", "lottery: {rounds: -1}\n", "controls: [x, x]\n", "%YAML 1.1\n", "<<: *a",
])
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
_GARBAGE = st.recursive(
    _scalars | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys | _TEXT, inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a nested dict/list, for picking what to damage."""
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


@st.composite
def _mutated_recipe_text(draw) -> str:
    """The rich recipe with keys dropped or renamed and values replaced by garbage, dumped
    to YAML, then possibly with YAML syntax spliced into the text."""
    raw = copy.deepcopy(_RICH)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(raw)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = raw
        for part in path[:-1]:
            parent = parent[part]
        key, op = path[-1], draw(st.sampled_from(["drop", "rename", "replace", "replace", "nest"]))
        if op == "drop":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(_keys | _TEXT)] = parent.pop(key)
        elif op == "nest":
            parent[key] = {draw(_keys | _TEXT): parent[key]}
        else:
            parent[key] = draw(_GARBAGE)
    text = yaml.safe_dump(raw, default_flow_style=draw(st.booleans()), sort_keys=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_YAML_BITS | _TEXT) + text[at:]
    return text


_SEGMENTS = st.sampled_from(sorted(set(TOP_LEVEL) | {k for f in FIELDS.values() for k in f} | set(_trainer_keys)
                                   | {"0", "1", "name", "criterion", "rewind", "x"}))
_PLAUSIBLE_KEYS = st.sampled_from(
    [f"{s}.{k}" for s, fields in FIELDS.items() for k in fields] + [f"trainer.{k}" for k in _trainer_keys]
    + ["seed", "trials", "name", "controls", "callbacks", "sweep", "init", "controls.0", "controls.1.criterion",
       "controls.1.rewind", "controls.1.name", "sweep.lottery.rate", "sweep.trainer.max_steps", "model", "data",
       "lottery.criterion_options.batch_size", "lottery.rewind_options.to", "model.hidden", "lottery.layer_rates.fc*"]
)
_PLAUSIBLE_VALUES = st.sampled_from(
    ["0", "1", "-1", "2", "0.5", "1.5", "abc", "null", "true", "[1, 2]", "[0, 0]", "{a: 1}", "magnitude", "random",
     "snip", "late", "reinit", "init", "16-mixed", "auto", "cpu", "1e-3", "[]", "{}", "5it", '"x\\ny"', "[random_reinit]",
     "[{name: gradual_pruning, target: 0.5}]", "[{name: c, rewind: late}]", "{name: mlp}", "digits", "00:00:01:00"]
)
_OVERRIDES = st.one_of(
    st.builds(lambda key, value: f"{key}={value}", _PLAUSIBLE_KEYS, _PLAUSIBLE_VALUES),
    st.builds(lambda key, value: f"{key}={value}", _PLAUSIBLE_KEYS, _PLAUSIBLE_VALUES | _YAML_BITS | _TEXT),
    st.builds(lambda first, rest, value: f"{'.'.join([first, *rest])}={value}",
              st.sampled_from(sorted(TOP_LEVEL)) | _TEXT,
              st.lists(_SEGMENTS | _TEXT, max_size=3),
              _YAML_BITS | _TEXT | st.builds(lambda v: yaml.safe_dump(v, default_flow_style=True).strip(), _GARBAGE)),
    _TEXT,
)


def _loads_or_one_line_error(path: Path, overrides: list[str], registry) -> None:
    """The contract: a recipe that passes every check, or one LthError of one line."""
    try:
        recipe = load_recipe(path, overrides)
        check_against_plugins(recipe, registry)
    except LthError as exc:
        msg = str(exc)
        assert msg and len(msg.splitlines()) == 1, msg
        return
    assert len(recipe.hash()) == 12
    assert yaml.safe_load(yaml.safe_dump(recipe.to_dict(), sort_keys=False)) is not None  # as recipe.yaml is written


@pytest.fixture(scope="module")
def fuzz_registry():
    return get_registry()


def test_rich_fuzz_base_is_valid(fuzz_registry, tmp_path: Path) -> None:
    """The fuzzers damage a recipe that is valid to begin with (else they test nothing deep)."""
    check_against_plugins(load_recipe(_write(tmp_path, _RICH)), fuzz_registry)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(_mutated_recipe_text(), _TEXT, st.lists(_YAML_BITS | _TEXT, max_size=12).map("".join)))
def test_yaml_text_never_crashes(fuzz_registry, text: str) -> None:
    """Whatever a recipe file holds, ``lth run`` reports one line or gets a valid recipe."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        _loads_or_one_line_error(path, [], fuzz_registry)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(_OVERRIDES, min_size=1, max_size=4))
def test_set_overrides_never_crash(fuzz_registry, overrides: list[str]) -> None:
    """Whatever ``--set`` strings a user types, the same contract holds."""
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), _RICH)
        _loads_or_one_line_error(path, overrides, fuzz_registry)
