"""The recipe schema: pydantic v2 models of lth's own recipe sections.

Why pydantic and not jsonargparse (which LightningCLI uses): a recipe is a YAML mapping
that lth reads itself (``yaml.safe_load``, size limits, ``--set`` overrides, sweeps), and
the validated recipe must stay the plain dict its hash is computed from. pydantic
validates such a mapping against declared models and nothing more: ``extra="forbid"``
closes a section, bounds are field constraints (``Field(gt=0, lt=1)``), choices are
``Literal``, strict mode keeps a bool from passing as a number, and a plugin's own section
or options are just another model (or a factory's signature turned into one). jsonargparse
would bring a command-line and config-file framework of its own (its own YAML loading,
its own argument namespace, class instantiation) to replace machinery lth already has and
must keep for the hashes; its one strength here, checking options against signatures, is
a few lines with pydantic (:func:`lth_core.plugin_api.options.signature_model`).

What a model declares beyond pydantic's rules is in markers (:mod:`lth_core.config.markers`):
which keys the hash leaves out or takes only when changed, and how a mistake is worded.
The models validate; :func:`stored` turns a validated model into the recipe's plain dict
(:class:`lth_core.config.recipe.Recipe` holds it), with exactly the keys, values and
types recipes always had, so no recipe hash changes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from lth_core.config.explain import LTH_ERROR
from lth_core.config.markers import MAX_COUNT, AsGiven, Expect, GivenOnly, HashedUnlessDefault, Number, Unhashed, has_marker, yaml11_number
from lth_core.config.messages import admits, plain_types


#: The largest seed: NumPy's generators (and Lightning's ``seed_everything``) take 0..2**32-1,
#: and every seed lth hands on, trial ``i``'s ``seed + i`` included, must fit.
MAX_SEED = 2**32 - 1
#: A whole number of steps, examples or batches >= 1 / >= 0 (a bool is no integer: strict).
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Steps = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="seeds are 0..2**32-1")]
#: A finite real number >= 0 (``1e-3`` as YAML 1.1 reads it).
NonNegative = Annotated[Number, Field(ge=0, allow_inf_nan=False)]


class Section(BaseModel):
    """A recipe section: strict types (a bool is never a number, ``"5"`` never an integer),
    and ``null`` for a key with a non-null default means that default."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields and _null_means_default(cls.model_fields[k]))}


def _null_means_default(field: Any) -> bool:
    return not field.is_required() and field.get_default(call_default_factory=True) is not None and not admits(plain_types(field.annotation), None)


def _increasing(steps: list[int]) -> list[int]:
    if steps != sorted(steps):
        raise PydanticCustomError(LTH_ERROR, "must be increasing")
    return steps


def _distinct_classes(classes: list[int] | None) -> list[int] | None:
    if classes is not None and (len(set(classes)) != len(classes) or len(classes) < 2):
        raise PydanticCustomError(LTH_ERROR, "must name at least two distinct classes")
    return classes


def _val_size(value: int | float) -> int | float:
    """A count of examples (an integer) or a fraction of the training split (a float)."""
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise PydanticCustomError(LTH_ERROR, "as a fraction must be in (0, 1)")
    if isinstance(value, int) and not 1 <= value <= MAX_COUNT:
        raise PydanticCustomError(LTH_ERROR, "as a count must be >= 1" if value < 1 else f"as a count must be <= {MAX_COUNT}")
    return value


def _entry(value: Any) -> Any:
    """``random_reinit`` is ``{name: random_reinit}``: a registered name alone."""
    return {"name": value} if isinstance(value, str) else value


class ModelSection(Section):
    """``model:``; every key but ``name`` is an option of the model's factory (checked
    against the installed plugin by :func:`lth_core.plugin_api.options.check_against_plugins`)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="a registered model name; see `lth plugins`")


class RandomCrop(Section):
    """``{name: random_crop, padding: 4}``: pad the image by ``padding`` zeros on every side
    (black for byte images, the mean for standardised ones), then take a random crop of its
    own size (torchvision's ``RandomCrop(size, padding)``)."""

    name: Literal["random_crop"]
    padding: int = Field(4, ge=0, le=4096)


class HorizontalFlip(Section):
    """``{name: hflip, p: 0.5}``: mirror the image left to right with probability ``p``."""

    name: Literal["hflip"]
    p: Number = Field(0.5, ge=0, le=1, allow_inf_nan=False)


#: One ``data.augment`` item: a name alone (``hflip``) or ``{name, ...options}``, stored as written.
AugmentItem = Annotated[RandomCrop | HorizontalFlip, Field(discriminator="name"), AsGiven, BeforeValidator(_entry),
                        Expect("random_crop ({name: random_crop, padding: 4}) or hflip ({name: hflip, p: 0.5})")]
#: The augmentations by name, with their options' defaults (:mod:`lth_core.data.augment` reads them).
AUGMENTATIONS: dict[str, type[Section]] = {"random_crop": RandomCrop, "hflip": HorizontalFlip}


class DataSection(Section):
    """``data:``; keys beyond the core's are options of the data-set factory.

    ``augment`` transforms each training batch, drawn per step (:mod:`lth_core.data.augment`);
    ``workers`` is how many ``DataLoader`` worker processes feed a streaming data set (one
    returning torch ``Dataset``s); it says how to compute, not what, so it is not hashed.
    """

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="a registered data set name; see `lth plugins`")
    batch_size: Count = 60
    eval_batch_size: Count = 2000
    val_size: Annotated[int | float, BeforeValidator(yaml11_number), AfterValidator(_val_size)] = 0.1
    subset: Count | None = None
    order_seed: Annotated[Seed | None, HashedUnlessDefault] = None
    classes: Annotated[list[Annotated[int, Field(ge=0, le=MAX_COUNT)]] | None, HashedUnlessDefault, AfterValidator(_distinct_classes),
                       Expect("a list of at least two distinct class labels (integers >= 0), or null for all")] = None
    augment: Annotated[list[AugmentItem], HashedUnlessDefault] = Field(default_factory=list)
    workers: Annotated[int, Unhashed, GivenOnly] = Field(2, ge=0, le=256, description="DataLoader worker processes (streaming data)")


class OptimizerSection(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Number = Field(1e-3, gt=0, allow_inf_nan=False)
    momentum: Number = Field(0.0, ge=0, lt=1, description="SGD's; 1 or more never forgets a gradient")
    weight_decay: NonNegative = 0.0
    nesterov: bool = False
    warmup_steps: Steps = 0
    milestones: Annotated[list[Count], AfterValidator(_increasing),
                          Expect("increasing positive step numbers")] = Field(default_factory=list)
    gamma: Number = Field(0.1, gt=0, le=1, description="the learning rate's factor at each milestone: a decay")


class TrainerSection(Section):
    """``trainer:``: any ``pytorch_lightning.Trainer`` argument, checked against Lightning's
    own signature and rules (:mod:`lth_core.config.trainer`), not here; these are lth's
    defaults where they differ from Lightning's."""

    model_config = ConfigDict(extra="allow")
    accelerator: Any = "auto"
    devices: Any = 1
    max_epochs: Any = -1
    max_steps: Any = 1000
    val_check_interval: Any = 100
    enable_progress_bar: Annotated[Any, Unhashed, GivenOnly] = None


class PrunableSection(Section):
    """``lottery.prunable``: which weights the lottery may prune, beyond (``include``) or
    short of (``exclude``) the weight of every ``nn.Linear`` and ``nn.Conv`` layer. Globs
    over parameter or module names (``embed``, ``blocks.*.attn.*``); ``last`` is the last
    of the default layers (the output layer)."""

    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class LotterySection(Section):
    criterion: str = "magnitude"
    criterion_options: dict[Annotated[str, Expect("option names (strings)")], Any] = Field(default_factory=dict)
    rewind: str = "init"
    rewind_options: dict[Annotated[str, Expect("option names (strings)")], Any] = Field(default_factory=dict)
    rounds: int = Field(5, ge=0, le=MAX_COUNT, description="0 trains only the dense network")
    rate: Number = Field(0.2, gt=0, lt=1, description="a fraction of remaining weights")
    layer_rates: Annotated[dict[Annotated[str, Expect("layer names or patterns (strings)")], Annotated[float, Field(ge=0, lt=1)]],
                           AsGiven] = Field(default_factory=dict)
    scope: Literal["global", "layer"] = "layer"
    mode: Literal["at_init", "iterative", "one_shot"] = "iterative"
    monitor: Annotated[str, HashedUnlessDefault] = Field(
        "val_loss", min_length=1, description="the logged validation metric whose best value is the early-stopping step")
    monitor_mode: Annotated[Literal["max", "min"], HashedUnlessDefault] = "min"
    prunable: Annotated[PrunableSection | None, HashedUnlessDefault] = None
    test_metric: Annotated[str, HashedUnlessDefault] = Field(
        "test_acc", min_length=1, description="the logged test metric reported at the early-stopping step and at the end")


class TrackingSection(Section):
    backend: Literal["none", "wandb"] = "wandb"
    project: str = "lth"
    entity: str | None = None
    mode: Literal["auto", "disabled", "offline", "online"] = "auto"
    log_every_n_steps: Steps = 50


class ControlEntry(Section):
    """A control written out: its own criterion and/or rewind policy (plugin names)."""

    name: str
    criterion: Annotated[str | None, Expect("a registered criterion name or null")] = None
    rewind: Annotated[str | None, Expect("a registered rewind policy name or null")] = None


class NamedEntry(Section):
    """A callback or initialiser written out: its name and its factory's options."""

    model_config = ConfigDict(extra="allow")
    name: str


def _named(kind: str, entry: type[BaseModel], form: str) -> Any:
    """A list item naming a registered ``kind``: a name alone, or ``{name, ...}``, stored
    as written (a name alone as ``{name: ...}``)."""
    return Annotated[str | entry, AsGiven, BeforeValidator(_entry), Expect(f"a registered {kind} name or {form}")]


ControlItem = _named("control", ControlEntry, "{name, criterion, rewind}")
CallbackItem = _named("callback", NamedEntry, "{name, ...options}")


class RecipeModel(BaseModel):
    """The top level of a recipe. Keys are stored in this order (see :func:`stored`);
    a top-level key not declared here is a plugin's section, checked with the plugins."""

    model_config = ConfigDict(strict=True, extra="forbid")
    name: Annotated[str, Unhashed] = ""
    seed: Seed = 0
    trials: int = Field(1, ge=1, le=MAX_SEED + 1, description="trial i runs with seed + i")
    steps_per_call: Annotated[int, Unhashed] = Field(50, ge=1, le=MAX_COUNT, description="1: Lightning's loop, one step per call")
    ticket: str | None = None
    description: Annotated[str, Unhashed] = ""
    checkpoint_every_n_steps: Annotated[int | None, Unhashed] = Field(
        None, ge=0, le=MAX_COUNT, description="a number of steps; 0: no checkpoints; null: about 4 per round")
    vectorize_trials: Annotated[bool | Literal["batched", "parallel"], Unhashed] = False
    model: ModelSection = Field(default_factory=dict, validate_default=True)
    data: DataSection = Field(default_factory=dict, validate_default=True)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    lottery: LotterySection = Field(default_factory=LotterySection)
    tracking: Annotated[TrackingSection, Unhashed] = Field(default_factory=TrackingSection)
    controls: list[ControlItem] = Field(default_factory=list)
    callbacks: Annotated[list[CallbackItem], HashedUnlessDefault] = Field(default_factory=list)
    sweep: Annotated[dict, HashedUnlessDefault] = Field(default_factory=dict)
    init: Annotated[str | NamedEntry | None, HashedUnlessDefault, AsGiven, BeforeValidator(_entry)] = None


#: lth's own top-level keys; any other is a plugin's section.
TOP_LEVEL: tuple[str, ...] = tuple(RecipeModel.model_fields)
#: The core's sections by name (a section's keys are its model's fields).
SECTIONS: dict[str, type[Section]] = {
    name: f.annotation for name, f in RecipeModel.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, Section)
}


def shorthand(key: Any, value: Any) -> Any:
    """``model: lenet300`` is ``model: {name: lenet300}``; ``tracking: none`` (or null or
    false) is ``tracking: {backend: none}``, ``tracking: wandb`` ``{backend: wandb}``."""
    if key in ("model", "data") and isinstance(value, str):
        return {"name": value}
    if key == "tracking" and value in ("none", None, False):
        return {"backend": "none"}
    if key == "tracking" and isinstance(value, str):
        return {"backend": value}
    return value


def options_of(section: str, spec: dict) -> dict:
    """The plugin options in a ``model:``/``data:`` section or a callback/init entry: every
    key the core does not read itself (``name``, and ``data``'s core keys)."""
    core = DataSection.model_fields if section == "data" else {"name"}
    return {k: v for k, v in spec.items() if k not in core}


def stored(instance: BaseModel) -> dict:
    """A validated model as the recipe's plain dict: declared fields in order (a
    :data:`GivenOnly` field only when given), then extra keys as written."""
    out = {}
    for name, field in type(instance).model_fields.items():
        if has_marker(field, GivenOnly) and name not in instance.model_fields_set:
            continue
        value = getattr(instance, name)
        out[name] = stored(value) if isinstance(value, BaseModel) else value
    out.update(instance.model_extra or {})
    return out


def hashed(data: dict) -> dict:
    """What of a validated recipe enters its hash, by the markers on its fields: not the
    :data:`Unhashed` keys, not the :data:`HashedUnlessDefault` keys at their default, and
    a plugin's section only when it holds something (``extend: {}`` is no section)."""
    out = {}
    for key, value in data.items():
        field = RecipeModel.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            if value is not None and value != {}:
                out[key] = value
            continue
        if _left_out(field, value):
            continue
        section = SECTIONS.get(key)
        if section is not None and isinstance(value, dict):
            value = {k: v for k, v in value.items() if not (isinstance(k, str) and _left_out(section.model_fields.get(k), v))}
        out[key] = value
    return out


def _left_out(field: Any, value: Any) -> bool:
    if field is None:
        return False
    if has_marker(field, Unhashed):
        return True
    return has_marker(field, HashedUnlessDefault) and value == field.get_default(call_default_factory=True)
