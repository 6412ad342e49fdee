"""Recipes: every mistake a user can make in a YAML file is one clear LthError.

A lottery runs for minutes to hours; a typo must be caught before the first step and
explained in one line that names the key and what would have been valid.
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lth_core.errors import LthError
from lth_core.plugins import get_registry
from lth_core.recipes import (
    RESERVED_TRAINER_KEYS,
    SCHEMA,
    TOP_LEVEL,
    Recipe,
    apply_overrides,
    bundled_recipes,
    check_against_plugins,
    load_recipe,
    parse_override,
    validate,
)


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
    assert recipe["optimizer"]["name"] == SCHEMA["optimizer"]["name"][1]
    assert recipe["lottery"]["scope"] == "layer" and recipe["lottery"]["mode"] == "iterative"
    assert recipe["tracking"]["backend"] == "none"


# --- keys, types and values -------------------------------------------------------------


def test_unknown_top_level_key_names_key_and_choices(tiny_raw: dict) -> None:
    """A misspelt section must not be silently ignored."""
    tiny_raw["lotery"] = {"rate": 0.5}
    msg = _error(tiny_raw)
    assert "'lotery'" in msg
    for key in TOP_LEVEL:
        assert key in msg


def test_unknown_key_in_section_names_key_and_choices(tiny_raw: dict) -> None:
    """``lottery.ratez`` would otherwise run the default rate for hours."""
    tiny_raw["lottery"]["ratez"] = 0.3
    msg = _error(tiny_raw)
    assert "lottery.ratez" in msg
    for key in SCHEMA["lottery"]:
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


def test_apply_overrides_unknown_top_level_key(tiny_raw: dict) -> None:
    """``--set lotery.rate=...`` is refused with the valid top-level keys."""
    with pytest.raises(LthError) as exc:
        apply_overrides(tiny_raw, ["lotery.rate=0.3"])
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
    known = list(SCHEMA.get(section, {})) + (_trainer_keys if section == "trainer" else [])
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
            **{s: _section(s) for s in SCHEMA},
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
        st.sampled_from(sorted(SCHEMA)),
        st.dictionaries(st.one_of(st.sampled_from(sorted({k for f in SCHEMA.values() for k in f} | set(_trainer_keys))), _keys), _values, max_size=5),
    ),
    # valid sections plus random extra keys (plugin options are open-ended)
    st.builds(
        lambda model, data, lottery: {"model": {"name": "mlp", **model}, "data": {"name": "digits", **data}, "lottery": lottery},
        st.dictionaries(_keys, _values, max_size=3),
        st.dictionaries(_keys, _values, max_size=3),
        st.dictionaries(st.sampled_from(sorted(SCHEMA["lottery"])), _values, max_size=3),
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
