"""``trainer:``: every key a ``pytorch_lightning.Trainer`` argument with a value Lightning accepts.

The valid keys and their types come from Lightning's own ``Trainer.__init__`` signature,
so every Trainer argument stays available without lth listing them; :data:`TRAINER_RULES`
adds what the annotations cannot say (``max_steps`` is whole and >= 1 or -1, ...). A
value Lightning would refuse inside the first Trainer (a traceback, after the run folder
exists) is refused at load in one line. The signature and the accelerator names are read
from Lightning's source (:mod:`lth_core.config.lightning_source`) without importing it, so
checking a recipe never loads torch; only a Lightning whose source that reader does not
understand is imported.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import math
import re
import typing
from typing import Any, Callable

import lth_core.config.lightning_source as lightning_source
from lth_core.config.messages import a_types, admits, brief, got, plain_types, show_key
from lth_core.errors import LthError, choices, did_you_mean
from lth_core.config.parallel import check_trainer
from lth_core.config.schema import MAX_COUNT

#: Trainer arguments the lottery sets itself; a recipe may not override them.
RESERVED_TRAINER_KEYS = frozenset({
    "logger", "callbacks", "enable_checkpointing", "default_root_dir", "num_sanity_val_steps",
    "check_val_every_n_epoch", "limit_test_batches", "plugins",
})


def check_trainer_section(trainer: dict, batch_size: int, source: str) -> None:
    """The whole ``trainer:`` section: no reserved key, Lightning's keys and values, an
    end to training, and what data parallel needs (:func:`lth_core.config.parallel.check_trainer`)."""
    bad = sorted(set(trainer) & RESERVED_TRAINER_KEYS)
    if bad:
        raise LthError(f"{source}: trainer.{bad[0]} is set by lth itself and cannot be given in a recipe")
    _check_trainer_keys(trainer, source)
    check_trainer(trainer, batch_size, source)  # data parallel: strategy, nodes, batch split


@functools.lru_cache(maxsize=1)
def _trainer_params() -> dict[str, inspect.Parameter]:
    """``pytorch_lightning.Trainer``'s parameters: the valid ``trainer:`` keys and their types."""
    try:
        params = lightning_source.trainer_parameters()
    except (lightning_source.Unreadable, OSError, SyntaxError):  # a Lightning this reader does not know
        import pytorch_lightning as pl

        params = inspect.signature(pl.Trainer.__init__).parameters
    return {n: p for n, p in params.items() if n != "self" and n not in RESERVED_TRAINER_KEYS}


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fraction_or_count(v: Any) -> bool:
    """Lightning's ``limit_*_batches``/``overfit_batches``: a count of batches or a fraction."""
    return (_whole(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def _devices_ok(v: Any) -> bool:
    """``devices``: a count (or -1, all), ``auto``, ``"2"``, or device indices (``[0, 1]``, ``"0,1"``)."""
    if isinstance(v, str):
        text = v.strip()
        if text in ("auto", "-1"):
            return True
        if text.isdigit():
            return int(text) >= 1
        return bool(re.fullmatch(r"\d+(\s*,\s*\d+)*\s*,?", text))  # indices: "0,1", "1,"
    if isinstance(v, list):
        return bool(v) and all(_whole(i) and i >= 0 for i in v) and len(set(v)) == len(v)
    return _whole(v) and (v >= 1 or v == -1)


def _max_time_ok(v: Any) -> bool:
    """``max_time``: ``DD:HH:MM:SS`` or ``{days: .., hours: ..}`` (what Lightning's Timer
    parses), no longer than a ``datetime.timedelta`` holds (Lightning builds one)."""
    if v is None:
        return True
    if isinstance(v, str) and re.fullmatch(r"\s*\d+:\d\d:\d\d:\d\d\s*", v):
        days, hours, minutes, seconds = map(int, v.strip().split(":"))
        return _fits_timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    units = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")
    return isinstance(v, dict) and bool(v) and all(
        k in units and isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < math.inf for k, x in v.items()
    ) and _fits_timedelta(**v)


def _fits_timedelta(**parts: float) -> bool:
    try:
        datetime.timedelta(**parts)
    except OverflowError:
        return False
    return True


def _too_big(value: Any) -> bool:
    """An integer (or one inside a list or mapping) beyond torch's int64: no Trainer setting."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) > MAX_COUNT
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_too_big(v) for v in items)


@functools.lru_cache(maxsize=1)
def _accelerators() -> frozenset[str]:
    try:
        names = lightning_source.accelerator_names()
    except (lightning_source.Unreadable, OSError, SyntaxError):  # a Lightning this reader does not know
        from pytorch_lightning.accelerators import AcceleratorRegistry

        names = frozenset(AcceleratorRegistry.available_accelerators())
    return names | {"auto", "gpu"}


def _literals(annotation: Any) -> list:
    """The ``Literal[...]`` values inside a Trainer annotation (``precision``'s accepted values)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for a in typing.get_args(annotation) for v in _literals(a)]


def _precision_ok(v: Any) -> bool:
    allowed = _literals(_trainer_params()["precision"].annotation) + [None]
    return any(v == a and type(v) is type(a) for a in allowed)  # 16.0 == 16, but Lightning refuses it


def _precision_choices() -> str:
    return choices({str(a) for a in _literals(_trainer_params()["precision"].annotation)}) + " or null"


_STEPS_OR_NONE = "a whole number of steps >= 0 or null"
#: trainer key -> (accepts(value), what is accepted). Keys not listed are type-checked from
#: Trainer's annotations; ``strategy`` and ``num_nodes`` are lth_core.config.parallel's.
TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], Callable[[], str] | str]] = {
    "max_steps": (lambda v: _whole(v) and (v >= 1 or v == -1), "a whole number of steps >= 1, or -1 (no step limit)"),
    "max_epochs": (lambda v: v is None or _whole(v) and (v >= 1 or v == -1), "a whole number of epochs >= 1, -1 (no epoch limit) or null"),
    "min_steps": (lambda v: v is None or _whole(v) and v >= 0, _STEPS_OR_NONE),
    "min_epochs": (lambda v: v is None or _whole(v) and v >= 0, "a whole number of epochs >= 0 or null"),
    "max_time": (_max_time_ok, "a duration DD:HH:MM:SS (e.g. 00:12:00:00), a mapping such as {hours: 12}, or null"),
    "val_check_interval": (lambda v: _whole(v) and v >= 1, "a whole number of steps >= 1 (lth evaluates every N optimiser steps)"),
    "limit_train_batches": (lambda v: v is None or _fraction_or_count(v), "a number of batches >= 0, a fraction in [0.0, 1.0], or null"),
    "limit_val_batches": (lambda v: v is None or _fraction_or_count(v), "a number of batches >= 0, a fraction in [0.0, 1.0], or null"),
    "limit_predict_batches": (lambda v: v is None or _fraction_or_count(v), "a number of batches >= 0, a fraction in [0.0, 1.0], or null"),
    "overfit_batches": (_fraction_or_count, "a number of batches >= 0 or a fraction in [0.0, 1.0]"),
    "accumulate_grad_batches": (lambda v: _whole(v) and v >= 1, "a whole number of batches >= 1"),
    "gradient_clip_val": (lambda v: v is None or not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < math.inf,
                          "a number >= 0, or null (no clipping)"),
    "gradient_clip_algorithm": (lambda v: v in (None, "norm", "value"), "norm, value or null"),
    "log_every_n_steps": (lambda v: v is None or _whole(v) and v >= 0, _STEPS_OR_NONE),
    "reload_dataloaders_every_n_epochs": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0"),
    "fast_dev_run": (lambda v: isinstance(v, bool) or _whole(v) and v >= 0, "true, false or a whole number of batches >= 0"),
    "deterministic": (lambda v: v is None or isinstance(v, bool) or v == "warn", "true, false, warn or null"),
    "profiler": (lambda v: v is None or isinstance(v, str) and v.lower() in ("simple", "advanced", "pytorch", "xla"),
                 "simple, advanced, pytorch, xla or null"),
    "devices": (_devices_ok, "a number of devices >= 1, -1 (all), auto, or device indices such as [0, 1]"),
    "accelerator": (lambda v: isinstance(v, str) and v in _accelerators(), lambda: choices(_accelerators())),
    "precision": (_precision_ok, _precision_choices),
}


#: What YAML can write, in the order a message lists it.
_YAML_TYPES = (bool, int, float, str, list, dict, type(None))


def _annotation_types(annotation: Any) -> tuple[type, ...]:
    """The plain types (what YAML can write) a Trainer annotation admits; Lightning's own
    classes (Accelerator, Logger, timedelta) cannot come from a recipe and are left out."""
    types = plain_types(annotation) or ()
    return tuple(t for t in _YAML_TYPES if t in types)


def _check_trainer_value(key: str, value: Any, source: str) -> None:
    if _too_big(value):
        raise LthError(f"{source}: trainer.{key} is {brief(value)}; whole numbers here are at most {MAX_COUNT} (torch's int64)")
    rule = TRAINER_RULES.get(key)
    if rule is not None:
        accepts, valid = rule
        if not accepts(value):
            raise LthError(f"{source}: trainer.{key} is {brief(value)}; valid: {valid() if callable(valid) else valid}")
        return
    if key in ("strategy", "num_nodes"):
        return  # lth_core.config.parallel.check_trainer: supported strategies, whole nodes
    kinds = _annotation_types(_trainer_params()[key].annotation)
    if kinds and not admits(kinds, value):
        raise LthError(f"{source}: trainer.{key} must be {a_types(kinds)}, got {got(value)}")


def _check_trainer_keys(t: dict, source: str) -> None:
    """Every ``trainer:`` key is a Trainer parameter with a value Lightning accepts: checked
    here, before the run folder exists, not by a traceback from inside the first Trainer."""
    params = _trainer_params()
    for key, value in t.items():
        if key not in params:
            raise LthError(f"{source}: unknown key trainer.{show_key(key)}{did_you_mean(key, params)}; valid: {choices(params)}")
        _check_trainer_value(key, value, source)
    if t.get("max_steps") == -1 and t.get("max_epochs") == -1 and t.get("max_time") is None:
        raise LthError(f"{source}: trainer.max_steps and trainer.max_epochs are both -1, so training would never end; "
                       "set trainer.max_steps (steps per round) or trainer.max_epochs")


