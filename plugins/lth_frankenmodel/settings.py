"""The ``extend:`` recipe section of ``lth extend``: its model, and the checks that need the data.

The plugin registers :class:`ExtendSettings` as its recipe section
(``register_recipe_sections``), so lth checks a recipe's ``extend:`` mapping (types,
bounds, unknown keys) when the recipe is loaded, in one line naming the key. What only the
ticket and its data set can tell (the classes exist and are new) is checked here, by
:func:`settings`. No torch: ``lth run`` refuses an extension recipe without loading it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lth_core import Expect, LthError, Recipe, option_error, section


def _distinct(classes: list[int]) -> list[int]:
    if not classes or len(set(classes)) != len(classes):
        raise option_error("must name distinct classes")
    return classes


class ExtendSettings(BaseModel):
    """``extend:``: which classes the ticket learns, and how."""

    model_config = ConfigDict(strict=True, extra="forbid")
    classes: Annotated[list[Annotated[int, Field(ge=0)]], AfterValidator(_distinct),
                       Expect("a non-empty list of distinct class labels (integers >= 0)")] = Field(
        description="the new classes (data-set labels)")
    rehearsal: int = Field(0, ge=0, description="training examples kept per old class and mixed in (0 = none)")
    prune: float = Field(0.0, ge=0, lt=1, description="fraction of the newly trained weights freed again afterwards")
    baselines: bool = Field(True, description="also train the finetune and dense_joint baselines")


def read_settings(recipe: Recipe, registry=None) -> ExtendSettings:
    """The recipe's ``extend:`` section, validated, with defaults; one line if it has none."""
    cfg = section(recipe, "extend", registry)
    if cfg is None:
        raise LthError(f"{recipe.source} has no extend: section (extend: {{classes: [...]}}); see `lth recipes` for frankenmodel_* recipes")
    return cfg


def settings(recipe: Recipe, old_classes: list[int], num_classes: int, registry=None) -> dict:
    """The recipe's ``extend:`` mapping with defaults, its classes checked against the data
    set and the ticket; every mistake is one line."""
    cfg = read_settings(recipe, registry)
    classes = cfg.classes
    missing = [c for c in classes if c >= num_classes]
    if missing:
        raise LthError(f"{recipe.source}: extend.classes names {missing}; data set {recipe['data']['name']!r} has classes 0..{num_classes - 1}")
    overlap = sorted(set(classes) & set(old_classes))
    if overlap:
        raise LthError(f"{recipe.source}: extend.classes {overlap} are already taught (the network has classes {old_classes}); name new ones")
    return cfg.model_dump()
