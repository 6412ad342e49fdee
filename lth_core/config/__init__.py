"""Recipes: reading, overriding, validating and hashing them (no torch, no plugins).

- :mod:`~lth_core.config.yaml_io`: YAML files, ``yaml.safe_load`` only, size limits;
- :mod:`~lth_core.config.overrides`: ``--set`` overrides and sweep points;
- :mod:`~lth_core.config.schema`: the pydantic models of lth's own sections;
- :mod:`~lth_core.config.markers`: what a field says beyond its type (hashing, wording);
- :mod:`~lth_core.config.explain`: pydantic's errors as one line;
- :mod:`~lth_core.config.trainer`: ``trainer:`` against Lightning's own signature;
- :mod:`~lth_core.config.recipe`: :class:`Recipe`, its hash, ``validate`` and ``load_recipe``.

Plugin names, options and sections are checked against the installed plugins by
:mod:`lth_core.plugin_api.options`, which sits above this package.
"""

from lth_core.config.explain import LTH_ERROR, option_error, parse
from lth_core.config.markers import AsGiven, Expect, GivenOnly, HashedUnlessDefault, Number, Unhashed
from lth_core.config.messages import brief, show_key
from lth_core.config.overrides import apply_overrides, parse_override, point_name, set_path
from lth_core.config.recipe import Recipe, load_recipe, raw_recipe, validate
from lth_core.config.schema import SECTIONS, TOP_LEVEL, RecipeModel, Section, options_of
from lth_core.config.trainer import RESERVED_TRAINER_KEYS, TRAINER_RULES
from lth_core.config.yaml_io import MAX_DEPTH, MAX_NODES, MAX_RECIPE_BYTES, bundled_recipes, read_yaml, resolve_recipe_path

__all__ = [
    "AsGiven", "Expect", "GivenOnly", "HashedUnlessDefault", "LTH_ERROR", "MAX_DEPTH", "MAX_NODES", "MAX_RECIPE_BYTES",
    "Number", "RESERVED_TRAINER_KEYS", "Recipe", "RecipeModel", "SECTIONS", "Section", "TOP_LEVEL", "TRAINER_RULES",
    "Unhashed", "apply_overrides", "option_error", "brief", "bundled_recipes", "load_recipe", "options_of", "parse", "parse_override",
    "point_name", "raw_recipe", "read_yaml", "resolve_recipe_path", "set_path", "show_key", "validate",
]
